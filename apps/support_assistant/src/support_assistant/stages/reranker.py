"""Reranker stage: rescores BM25 candidates with a transformer (ONNX) and keeps the top k.

Works with any scorer exposing `score(query, passages) -> scores` (bi-encoder cosine or
cross-encoder logit, see support_assistant.runtime.encoder). Several requests are scored in one
call so the Serve layer can batch them (@serve.batch) into fewer, larger model runs.

With a bi-encoder and the bundle's cached passage vectors (support_assistant.runtime.embeddings),
only the questions are embedded per request; a passage the cache does not hold is embedded as before.
The question's vector goes on with the result (schema.QuestionVector), for the extractive generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from support_assistant.runtime.embeddings import CachedVectors
from support_assistant.schema import Passage, QuestionVector, RankedPassage, Reranked, RerankRequest


class Scorer(Protocol):
    def score(self, query: str, passages: Sequence[str]) -> np.ndarray: ...


class PairScorer(Protocol):
    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray: ...


class Embedder(Protocol):
    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def passage_text(passage: Passage) -> str:
    # The section heading says what the passage is about ("Symptom", "First checks"), which the
    # body alone often does not.
    return f"{passage.title}. {passage.section}. {passage.text}"


class RerankStage:
    def __init__(self, scorer: Scorer, vectors: CachedVectors | None = None) -> None:
        self.scorer = scorer
        # Only a bi-encoder can use passage vectors computed ahead of time.
        self.vectors = vectors if hasattr(scorer, "embed") else None

    @property
    def provider(self) -> str:
        return getattr(self.scorer, "provider", "none")

    def rerank(self, request: RerankRequest) -> Reranked:
        return self.rerank_many([request])[0]

    def rerank_many(self, requests: Sequence[RerankRequest]) -> list[Reranked]:
        """Rerank several requests with as few model runs as the scorer allows."""
        all_scores, questions = self._score_all(requests)
        results = []
        for i, (request, scores) in enumerate(zip(requests, all_scores, strict=True)):
            order = np.argsort(-scores, kind="stable")[: request.top_k]
            ranked = [RankedPassage.of(request.passages[j], float(scores[j])) for j in order]
            vector = None
            if questions is not None and self.vectors is not None:
                vector = QuestionVector(self.vectors.model_sha256, tuple(float(x) for x in questions[i]))
            results.append(Reranked(passages=ranked, provider=self.provider, question_vector=vector))
        return results

    def _score_all(self, requests: Sequence[RerankRequest]) -> tuple[list[np.ndarray], np.ndarray | None]:
        """Every request's passage scores, and the question vectors when a bi-encoder computed them."""
        scorer = self.scorer
        if hasattr(scorer, "embed"):
            return self._score_bi_encoder(requests)
        if hasattr(scorer, "score_pairs"):
            # Cross-encoder: every (query, passage) pair of the batch in one call.
            pairs = [(r.query, passage_text(p)) for r in requests for p in r.passages]
            flat = np.asarray(scorer.score_pairs(pairs), dtype=np.float32).reshape(-1) if pairs else np.zeros(0)
            out, start = [], 0
            for request in requests:
                out.append(flat[start: start + len(request.passages)])
                start += len(request.passages)
            return out, None
        return [np.asarray(scorer.score(r.query, [passage_text(p) for p in r.passages])) for r in requests], None

    def _score_bi_encoder(self, requests: Sequence[RerankRequest]) -> tuple[list[np.ndarray], np.ndarray]:
        """One forward pass over every query of the batch and every passage the cache lacks."""
        cached = [None if self.vectors is None
                  else self.vectors.passage_vectors([p.id for p in r.passages], [passage_text(p) for p in r.passages])
                  for r in requests]
        texts = [r.query for r in requests] + [passage_text(p) for r, c in zip(requests, cached, strict=True)
                                               if c is None for p in r.passages]
        embedded = self.scorer.embed(texts)  # type: ignore[attr-defined]
        queries, fresh = embedded[: len(requests)], embedded[len(requests):]
        out, start = [], 0
        for i, (request, block) in enumerate(zip(requests, cached, strict=True)):
            if block is None:
                block = fresh[start: start + len(request.passages)]
                start += len(request.passages)
            out.append(block @ queries[i] if len(block) else np.zeros(0, dtype=np.float32))
        return out, queries
