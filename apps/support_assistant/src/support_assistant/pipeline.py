"""Runs one request through the stages, each under its own time budget, without Ray.

The Serve ingress hands in the stages as async callables (deployment handles); tests hand in
plain functions. A stage that overruns raises StageError(stage, "timeout") -> HTTP 504 naming it;
a stage that fails raises StageError(stage, ...) -> HTTP 502 naming it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from support_assistant.api import ParsedRequest
from support_assistant.config import STAGES
from support_assistant.errors import InvalidInput, StageError
from support_assistant.schema import (
    Answer,
    GenerationRequest,
    NormalizedQuestion,
    Passage,
    RankedPassage,
    Reranked,
    RerankRequest,
)

__all__ = ["NO_MATCH_ANSWER", "STAGES", "Stages", "answer"]

NO_MATCH_ANSWER = (
    "No runbook passage matches this question. Try the symptom as the alert or kubectl shows it "
    "(for example: RayService not ready, pod Pending, OOMKilled)."
)


@dataclass
class Stages:
    normalize: Callable[[str], Awaitable[NormalizedQuestion]]
    retrieve: Callable[[str], Awaitable[list[Passage]]]  # search text -> candidate passages
    rerank: Callable[[RerankRequest], Awaitable[Reranked]]
    generate: Callable[[GenerationRequest], Awaitable[Answer]]


async def _call(stage: str, timeout_s: float, awaitable: Awaitable[Any]) -> Any:
    try:
        return await asyncio.wait_for(awaitable, timeout=timeout_s)
    except TimeoutError:
        raise StageError(stage, "timeout", f"did not answer within {timeout_s:g}s", status=504) from None
    except (InvalidInput, StageError):
        raise
    except Exception as exc:
        # Ray wraps a stage's exception; its `cause` is what the stage raised.
        cause = getattr(exc, "cause", None) or exc
        if isinstance(cause, InvalidInput):
            raise cause from None
        raise StageError(stage, "model_error" if stage in ("reranker", "generator") else "internal",
                         f"{type(cause).__name__}: {str(cause)[:300]}") from None


async def answer(request: ParsedRequest, stages: Stages, timeouts_s: dict[str, float]) -> dict[str, Any]:
    """The response body (api.AnswerResponse without the app/bundle/models fields the ingress adds)."""
    timings: dict[str, float] = {}
    started = time.perf_counter()

    async def timed(stage: str, awaitable: Awaitable[Any]) -> Any:
        t0 = time.perf_counter()
        try:
            return await _call(stage, timeouts_s[stage], awaitable)
        finally:
            timings[stage] = round((time.perf_counter() - t0) * 1000, 2)

    normalized: NormalizedQuestion = await timed("normalizer", stages.normalize(request.question))
    candidates: list[Passage] = await timed("retriever", stages.retrieve(normalized.search_text))
    result: dict[str, Any] = {"question": request.question, "normalized_question": normalized.text}
    if not candidates:
        result.update(answer=NO_MATCH_ANSWER, generator_mode="none", sources=[], retrieval="empty")
    else:
        reranked: Reranked = await timed(
            "reranker", stages.rerank(RerankRequest(normalized.text, candidates, request.top_k)))
        generated: Answer = await timed(
            "generator", stages.generate(GenerationRequest(normalized.text, reranked.passages)))
        result.update(
            answer=generated.text,
            generator_mode=generated.mode,
            sources=[_source(rank, p) for rank, p in enumerate(reranked.passages, start=1)],
            retrieval="ok",
            generation={"tokens": generated.tokens, "finish_reason": generated.finish_reason,
                        "cited": generated.cited},
            providers={"reranker": reranked.provider, "generator": generated.provider},
        )
    timings["total"] = round((time.perf_counter() - started) * 1000, 2)
    result["timings_ms"] = timings
    return result


def _source(rank: int, passage: RankedPassage) -> dict[str, Any]:
    return {
        "rank": rank,
        "source": passage.source,
        "title": passage.title,
        "section": passage.section,
        "retrieval_score": round(passage.score, 4),
        "rerank_score": round(passage.rerank_score, 4),
        "text": passage.text,
    }
