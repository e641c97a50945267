import asyncio
import time
from dataclasses import replace

import pytest
from support_assistant.runtime.decode_loop import DecodeLoop
from support_assistant.runtime.decoder import Decoder
from support_assistant.runtime.encoder import load_reranker
from support_assistant.schema import GenerationRequest, RankedPassage
from support_assistant.stages.generator import (
    NOT_STARTED,
    PROMPT_STOP,
    PROMPT_SYSTEM,
    AbstractiveGenerator,
    ExtractiveGenerator,
    split_sentences,
)
from support_assistant.stages.grounding import GroundingGuard

PASSAGES = [
    RankedPassage(id=0, source="a.md", title="GPU pods Pending", section="Symptom",
                  text="The GPU worker pod stays Pending.\n"
                       "No node has a free nvidia.com/gpu, so the scheduler\nwaits."),
    RankedPassage(id=1, source="b.md", title="OOM", section="Fixes",
                  text="- Raise the memory limit of the worker group.\n- Lower max_ongoing_requests.\n"
                       "```\nkubectl get pods\n```"),
]


def test_split_joins_wrapped_lines_and_drops_code():
    assert split_sentences(PASSAGES[0].text) == [
        "The GPU worker pod stays Pending.",
        "No node has a free nvidia.com/gpu, so the scheduler waits.",
    ]
    assert split_sentences(PASSAGES[1].text) == [
        "Raise the memory limit of the worker group.",
        "Lower max_ongoing_requests.",
    ]


@pytest.fixture(scope="module")
def extractive(local_bundle):
    return ExtractiveGenerator(load_reranker(local_bundle.reranker_dir, "bi-encoder"), sentences=2)


def test_extractive_cites_the_relevant_sentences(extractive):
    answer = extractive.answer(GenerationRequest("why is my gpu pod pending", PASSAGES))
    assert answer.mode == "extractive"
    assert "nvidia.com/gpu" in answer.text and "[1]" in answer.text
    assert 1 in answer.cited


def test_extractive_batched_equals_single(extractive):
    requests = [GenerationRequest("why is my gpu pod pending", PASSAGES),
                GenerationRequest("worker ran out of memory", PASSAGES)]
    assert extractive.answer_many(requests) == [extractive.answer(r) for r in requests]


def test_extractive_without_passages_says_so(extractive):
    assert "No runbook passage" in extractive.answer(GenerationRequest("anything", [])).text


@pytest.fixture(scope="module")
def decoder(test_bundle):
    return Decoder(test_bundle.generator_dir)


@pytest.fixture(scope="module")
def encoder(local_bundle):
    return load_reranker(local_bundle.reranker_dir, "bi-encoder")


def _abstractive(decoder, encoder, **settings) -> AbstractiveGenerator:
    return AbstractiveGenerator(decoder, GroundingGuard(encoder, threshold=0.7),
                                ExtractiveGenerator(encoder, sentences=2), **settings)


def test_abstractive_prompt_cuts_passages_to_the_budget(decoder, encoder):
    long_passages = [replace(PASSAGES[0], text="pending " * 400) for _ in range(5)]
    generator = _abstractive(decoder, encoder, max_prompt_tokens=600, max_new_tokens=8)
    prompt = generator.build_prompt("why pending?", long_passages)
    assert prompt.tokens == decoder.prompt_tokens(prompt.text) <= 600
    assert "[1]" in prompt.text and "why pending?" in prompt.text and prompt.passages == 1
    assert prompt.text.startswith(decoder.format_chat("", system=PROMPT_SYSTEM).split("\n")[0])


def test_abstractive_prompt_never_cuts_the_question(decoder, encoder):
    question = "why is the worker pod pending " * 20 + "and what do I check first?"
    generator = _abstractive(decoder, encoder, max_prompt_tokens=600, max_new_tokens=8)
    prompt = generator.build_prompt(question, PASSAGES)
    # The question alone is over the budget: no excerpt fits, the question is whole.
    assert question in prompt.text and prompt.passages == 0 and prompt.tokens > 600


def test_abstractive_batched_equals_single(decoder, encoder):
    generator = _abstractive(decoder, encoder, max_prompt_tokens=900, max_new_tokens=12)
    requests = [GenerationRequest("gpu pending?", PASSAGES), GenerationRequest("oom?", PASSAGES[1:])]
    batched = generator.answer_many(requests)
    assert batched == [generator.answer_many([r])[0] for r in requests]
    assert all(0 < a.tokens <= 12 for a in batched)


def test_abstractive_reports_what_the_decoder_did(decoder, encoder):
    """The answer carries the decoder's own token count, finish reason and prompt size, not constants."""
    generator = _abstractive(decoder, encoder, max_prompt_tokens=900, max_new_tokens=5)
    request = GenerationRequest("gpu pending?", PASSAGES)
    answer = generator.answer_many([request])[0]
    prompt = generator.build_prompt(request.question, request.passages)
    expected = decoder.generate([prompt.text], max_new_tokens=5, stop=PROMPT_STOP, temperature=0.0)[0]
    assert (answer.tokens, answer.finish_reason) == (expected.tokens, expected.finish_reason)
    assert answer.prompt_tokens == prompt.tokens > 0
    assert 0 < answer.tokens <= 5
    assert answer.provider == "CPUExecutionProvider"


def test_gibberish_from_the_model_falls_back_to_the_extractive_answer(decoder, encoder):
    """The test decoder writes random characters: nothing is supported, so the answer is the
    extractive one, marked as a fallback with the reason, and still cited."""
    generator = _abstractive(decoder, encoder, max_prompt_tokens=900, max_new_tokens=24)
    request = GenerationRequest("why is my gpu pod pending", PASSAGES)
    answer = generator.answer_many([request])[0]
    assert answer.mode == "extractive_fallback"
    assert answer.fallback_reason and ("supported" in answer.fallback_reason or "nothing" in answer.fallback_reason)
    assert answer.text == generator.fallback.answer(request).text and answer.cited
    assert answer.tokens > 0 and answer.draft is not None


def test_extractive_with_cached_vectors_answers_as_without(local_bundle):
    from support_assistant.assemble import load_vectors
    from support_assistant.schema import RerankRequest
    from support_assistant.stages.reranker import RerankStage
    from support_assistant.stages.retriever import Retriever

    encoder = load_reranker(local_bundle.reranker_dir, "bi-encoder")
    vectors = load_vectors(local_bundle)
    retriever = Retriever(local_bundle.index_dir)
    requests = []
    for question in ("pod stuck pending waiting for a gpu node", "replica keeps restarting with OOMKilled",
                     "my rayservice is stuck initializing after a deploy"):
        ranked = RerankStage(encoder, vectors).rerank(RerankRequest(question, retriever.search(question, 10), 3))
        requests.append(GenerationRequest(question, ranked.passages))
    requests.append(GenerationRequest("why is my gpu pod pending", PASSAGES))  # not from the corpus: embedded
    cached = ExtractiveGenerator(encoder, vectors=vectors)
    plain = ExtractiveGenerator(encoder)
    assert cached.answer_many(requests) == plain.answer_many(requests)
    assert [cached.answer(r) for r in requests] == [plain.answer(r) for r in requests]


class CountingEncoder:
    """The real encoder, counting the texts it is asked to embed."""

    def __init__(self, encoder) -> None:
        self.encoder, self.embedded = encoder, 0
        self.provider = encoder.provider

    def embed(self, texts):
        self.embedded += len(texts)
        return self.encoder.embed(texts)

    def score(self, query, passages):
        return self.encoder.score(query, passages)


def test_extractive_takes_the_rerankers_question_vector_from_the_same_graph_only(local_bundle):
    from dataclasses import replace as with_

    from support_assistant.assemble import load_vectors
    from support_assistant.schema import QuestionVector, RerankRequest
    from support_assistant.stages.reranker import RerankStage
    from support_assistant.stages.retriever import Retriever

    encoder = load_reranker(local_bundle.reranker_dir, "bi-encoder")
    vectors = load_vectors(local_bundle)
    question = "replica keeps restarting with OOMKilled"
    reranked = RerankStage(encoder, vectors).rerank(
        RerankRequest(question, Retriever(local_bundle.index_dir).search(question, 10), 3))
    handed_on = reranked.question_vector
    assert handed_on is not None and handed_on.encoder == vectors.model_sha256 and len(handed_on.values) == vectors.dim

    counting = CountingEncoder(encoder)
    generator = ExtractiveGenerator(counting, vectors=vectors)
    without = generator.answer(GenerationRequest(question, reranked.passages))
    assert counting.embedded == 1  # no vector: the question is embedded here
    with_vector = generator.answer(GenerationRequest(question, reranked.passages, handed_on))
    assert counting.embedded == 1  # the reranker's vector was used: nothing embedded
    assert with_vector == without

    other_graph = QuestionVector("0" * 64, handed_on.values)
    assert generator.answer(GenerationRequest(question, reranked.passages, other_graph)) == without
    assert counting.embedded == 2  # a vector from another graph is ignored and the question embedded
    wrong_size = with_(handed_on, values=handed_on.values[:10])
    generator.answer(GenerationRequest(question, reranked.passages, wrong_size))
    assert counting.embedded == 3


def test_a_request_the_busy_decoder_let_go_gets_the_extractive_answer_saying_why(decoder, encoder):
    """A request the decode loop lets go before it joins (too little time left for a sequence, the batch
    full) gets the extractive answer, cited, with the reason, and no draft: not a 504 at its deadline."""
    generator = _abstractive(decoder, encoder, max_prompt_tokens=900, max_new_tokens=decoder.max_context // 2)
    loop = DecodeLoop(decoder, max_batch=1, deadline_reserve_s=0.0)
    request = GenerationRequest("why is my gpu pod pending", PASSAGES)

    async def main():
        busy = loop.submit(decoder.new_sequence("keep the batch busy", decoder.max_context - 40))
        while loop.steps < 3:
            await asyncio.sleep(0.001)
        _, seq = generator.start(request)
        answer = await generator.answer_in(loop, request, deadline_s=time.time() + loop.reserve_s()
                                           + loop.sequence_s(seq) / 2)
        busy.cancel()
        await busy.result()
        return answer

    try:
        answer = asyncio.run(asyncio.wait_for(main(), timeout=60))
    finally:
        loop.close()
    assert answer.mode == "extractive_fallback" and answer.fallback_reason == NOT_STARTED
    assert answer.text == generator.fallback.answer(request).text and answer.cited
    assert answer.tokens == 0 and answer.truncated and answer.draft == ""
