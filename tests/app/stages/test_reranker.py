from dataclasses import replace

import numpy as np
import pytest
from support_assistant.runtime.encoder import load_reranker
from support_assistant.schema import Passage, RerankRequest
from support_assistant.stages.reranker import RerankStage
from support_assistant.stages.retriever import Retriever


class WordOverlapScorer:
    """Deterministic stand-in scorer: counts query words in the passage."""

    def score(self, query, passages):
        words = set(query.lower().split())
        return np.array([len(words & set(p.lower().split())) for p in passages], dtype=np.float32)


def _passage(i, text):
    return Passage(id=i, source=f"{i}.md", title="t", section="s", text=text, score=1.0)


def test_orders_by_score_and_keeps_top_k():
    passages = [_passage(0, "nothing here"), _passage(1, "gpu pod pending"), _passage(2, "gpu")]
    ranked = RerankStage(WordOverlapScorer()).rerank(RerankRequest("gpu pod pending", passages, top_k=2)).passages
    assert [p.id for p in ranked] == [1, 2]
    assert ranked[0].rerank_score > ranked[1].rerank_score
    assert ranked[0].text == "gpu pod pending" and ranked[0].score == 1.0


@pytest.fixture(scope="module")
def encoder(local_bundle):
    return load_reranker(local_bundle.reranker_dir, local_bundle.models["reranker"]["kind"])


@pytest.fixture(scope="module")
def requests(local_bundle):
    retriever = Retriever(local_bundle.index_dir)
    questions = [
        "pod stuck pending waiting for a gpu node",
        "container terminated with reason oomkilled exit code 137",
        "serve p99 latency",
    ]
    return [RerankRequest(q, retriever.search(q, 8), top_k=3) for q in questions]


def test_real_encoder_batched_equals_single(encoder, requests):
    stage = RerankStage(encoder)
    batched = stage.rerank_many(requests)
    for request, result in zip(requests, batched, strict=True):
        single = stage.rerank(request).passages
        assert [p.id for p in result.passages] == [p.id for p in single]
        np.testing.assert_allclose([p.rerank_score for p in result.passages], [p.rerank_score for p in single],
                                   rtol=1e-4, atol=1e-5)


def test_real_encoder_puts_the_matching_runbook_first(encoder, requests):
    reranked = RerankStage(encoder).rerank(requests[1])
    assert reranked.passages[0].source == "RayPodOOMKilled.md"
    assert reranked.provider == "CPUExecutionProvider"


class CountingEncoder:
    """The real encoder, recording how many texts each call embeds."""

    def __init__(self, encoder):
        self.encoder, self.calls = encoder, []

    def embed(self, texts):
        self.calls.append(len(texts))
        return self.encoder.embed(texts)


@pytest.fixture(scope="module")
def vectors(local_bundle):
    from support_assistant.assemble import load_vectors

    return load_vectors(local_bundle)


def test_cached_vectors_give_the_uncached_ranking_and_scores(encoder, requests, vectors):
    everything = [replace(r, top_k=len(r.passages)) for r in requests]
    counting = CountingEncoder(encoder)
    cached = RerankStage(counting, vectors).rerank_many(everything)
    assert counting.calls == [len(requests)], "only the questions are embedded"
    for plain, fast in zip(RerankStage(encoder).rerank_many(everything), cached, strict=True):
        assert [p.id for p in fast.passages] == [p.id for p in plain.passages]
        np.testing.assert_allclose([p.rerank_score for p in fast.passages], [p.rerank_score for p in plain.passages],
                                   atol=1e-5)


def test_passage_the_cache_does_not_hold_is_embedded(encoder, requests, vectors):
    edited = [replace(p, text=p.text + " Edited after the bundle was built.") if i == 0 else p
              for i, p in enumerate(requests[0].passages)]
    request = RerankRequest(requests[0].query, edited, top_k=len(edited))
    counting = CountingEncoder(encoder)
    fast = RerankStage(counting, vectors).rerank(request)
    assert counting.calls == [1 + len(edited)], "the request falls back to embedding its passages"
    plain = RerankStage(encoder).rerank(request)
    assert [p.id for p in fast.passages] == [p.id for p in plain.passages]


def test_question_vector_goes_on_only_with_a_cache_of_the_same_graph(encoder, requests, vectors):
    fast = RerankStage(encoder, vectors).rerank_many(requests)
    embedded = encoder.embed([r.query for r in requests])
    for result, expected in zip(fast, embedded, strict=True):
        assert result.question_vector is not None and result.question_vector.encoder == vectors.model_sha256
        np.testing.assert_allclose(result.question_vector.values, expected, atol=1e-5)
    # Without a cache no generator could use it, and a score-only scorer has no vector at all.
    assert RerankStage(encoder).rerank(requests[0]).question_vector is None
    assert RerankStage(WordOverlapScorer(), vectors).rerank(requests[0]).question_vector is None
