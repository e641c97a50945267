import asyncio

import pytest
from support_assistant.api import ParsedRequest
from support_assistant.errors import InvalidInput, StageError
from support_assistant.pipeline import Stages, answer
from support_assistant.schema import Answer, NormalizedQuestion, Passage, RankedPassage, Reranked

TIMEOUTS = {"normalizer": 0.5, "retriever": 0.5, "reranker": 0.5, "generator": 0.5}
PASSAGE = Passage(id=0, source="a.md", title="T", section="S", text="body", score=2.0)


def stages(**overrides):
    async def normalize(q):
        return NormalizedQuestion(text=q.strip(), search_text=q.strip().lower(), truncated=False)

    async def retrieve(text):
        return [PASSAGE]

    async def rerank(request):
        return Reranked([RankedPassage.of(p, 0.9) for p in request.passages[: request.top_k]], "CPUExecutionProvider")

    async def generate(request):
        return Answer(text="answer [1]", mode="extractive", cited=[1], provider="CPUExecutionProvider")

    funcs = {"normalize": normalize, "retrieve": retrieve, "rerank": rerank, "generate": generate}
    funcs.update(overrides)
    return Stages(**funcs)


def run(s, question="Pod Pending", top_k=3):
    return asyncio.run(answer(ParsedRequest(question=question, top_k=top_k), s, TIMEOUTS))


def test_happy_path_carries_sources_answer_and_timings():
    result = run(stages())
    assert result["answer"] == "answer [1]" and result["generator_mode"] == "extractive"
    assert result["sources"][0]["source"] == "a.md" and result["sources"][0]["rank"] == 1
    assert result["sources"][0]["rerank_score"] == 0.9 and result["sources"][0]["retrieval_score"] == 2.0
    assert result["providers"] == {"reranker": "CPUExecutionProvider", "generator": "CPUExecutionProvider"}
    assert set(result["timings_ms"]) == {"normalizer", "retriever", "reranker", "generator", "total"}


def test_empty_retrieval_skips_the_model_stages():
    async def nothing(text):
        return []

    async def must_not_run(*args):
        raise AssertionError("model stage called on an empty retrieval")

    result = run(stages(retrieve=nothing, rerank=must_not_run, generate=must_not_run))
    assert result["sources"] == [] and result["retrieval"] == "empty"


@pytest.mark.parametrize("stage", ["normalize", "retrieve", "rerank", "generate"])
def test_a_slow_stage_times_out_naming_itself(stage):
    async def slow(*args):
        await asyncio.sleep(5)

    with pytest.raises(StageError) as info:
        run(stages(**{stage: slow}))
    names = {"normalize": "normalizer", "retrieve": "retriever", "rerank": "reranker", "generate": "generator"}
    assert (info.value.stage, info.value.reason, info.value.status) == (names[stage], "timeout", 504)


def test_a_failing_stage_is_named_with_its_cause():
    class RayLikeError(Exception):
        def __init__(self, cause):
            self.cause = cause

    async def broken(*args):
        raise RayLikeError(RuntimeError("CUDA out of memory"))

    with pytest.raises(StageError) as info:
        run(stages(generate=broken))
    assert info.value.stage == "generator" and info.value.reason == "model_error"
    assert "CUDA out of memory" in info.value.message and info.value.status == 502


def test_invalid_input_raised_inside_a_stage_stays_a_4xx():
    async def reject(q):
        raise InvalidInput("question", "is empty after normalization")

    with pytest.raises(InvalidInput):
        run(stages(normalize=reject))


def test_the_real_stages_in_one_process(local_bundle, base_config):
    """assemble.build_stages + in_process: the wiring the bench baseline and the Serve layer share."""
    from support_assistant.api import AnswerResponse
    from support_assistant.assemble import build_stages, in_process

    loaded = build_stages(local_bundle.root, base_config)
    result = asyncio.run(answer(ParsedRequest(question="worker pod Pending, no free nvidia.com/gpu", top_k=2),
                                in_process(loaded), base_config.ingress.stage_timeouts_s.as_dict()))
    assert result["sources"][0]["source"] == "RayGPUPodUnschedulable.md" and len(result["sources"]) == 2
    assert result["generator_mode"] == "extractive" and "[1]" in result["answer"]
    info = {"app": {"name": "support-assistant", "version": "0"}, "bundle_version": local_bundle.bundle_version,
            "models": local_bundle.models_info()}
    AnswerResponse.model_validate({**result, **info})  # the documented response schema holds
