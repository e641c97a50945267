"""Runs one request through the stages, each under its own time budget, without Ray.

The Serve ingress hands in the stages as async callables (deployment handles); tests hand in
plain functions. Every outcome of a stage call names the stage:
- it overruns its budget: StageError(stage, "timeout") -> HTTP 504;
- it cannot take the request now (StageUnavailable: full queue, dead replica):
  StageError(stage, "unavailable") -> HTTP 503 with Retry-After, which a client should retry;
- it fails: StageError(stage, "model_error" | "internal") -> HTTP 502.

While a stage runs, `stage_deadline` holds the wall-clock time (time.time()) its budget ends, so
the serving layer can hand it to the replica, which drops a request that has already expired
instead of computing an answer nobody waits for.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from support_assistant.api import ParsedRequest
from support_assistant.config import STAGES
from support_assistant.errors import BudgetExpired, InvalidInput, StageError, StageUnavailable
from support_assistant.schema import (
    Answer,
    GenerationRequest,
    NormalizedQuestion,
    Passage,
    RankedPassage,
    Reranked,
    RerankRequest,
)

__all__ = ["NO_MATCH_ANSWER", "STAGES", "Stages", "answer", "stage_deadline"]

# Seconds since the epoch at which the running stage call's budget ends (see the module doc).
stage_deadline: ContextVar[float] = ContextVar("stage_deadline")

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


async def _call(stage: str, timeout_s: float, call: Callable[[Any], Awaitable[Any]], arg: Any) -> Any:
    # The deadline is set before the call creates its coroutine, so a handle call sees it; each
    # call runs in its own task context, so concurrent requests never see each other's.
    token = stage_deadline.set(time.time() + timeout_s)
    try:
        return await asyncio.wait_for(call(arg), timeout=timeout_s)
    except TimeoutError:
        raise StageError(stage, "timeout", f"did not answer within {timeout_s:g}s", status=504) from None
    except (InvalidInput, StageError):
        raise
    except Exception as exc:
        # Ray wraps a stage's exception; its `cause` is what the stage raised.
        cause = getattr(exc, "cause", None) or exc
        if isinstance(cause, InvalidInput):
            raise cause from None
        if isinstance(cause, StageUnavailable):
            raise StageError(stage, "unavailable", f"cannot take the request now ({cause.message}); retry",
                             status=503, retry_after_s=cause.retry_after_s) from None
        if isinstance(cause, BudgetExpired):
            raise StageError(stage, "timeout", f"did not answer within {timeout_s:g}s", status=504) from None
        raise StageError(stage, "model_error" if stage in ("reranker", "generator") else "internal",
                         f"{type(cause).__name__}: {str(cause)[:300]}") from None
    finally:
        stage_deadline.reset(token)


async def answer(request: ParsedRequest, stages: Stages, timeouts_s: dict[str, float],
                 waiting_on: Counter[str] | None = None) -> dict[str, Any]:
    """The response body (api.AnswerResponse without the app/bundle/models fields the ingress adds).

    `waiting_on`, when given, counts the requests currently inside each stage (the ingress's
    admission control names the busiest stage when it refuses one)."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    waiting = Counter() if waiting_on is None else waiting_on

    async def timed(stage: str, call: Callable[[Any], Awaitable[Any]], arg: Any) -> Any:
        t0 = time.perf_counter()
        waiting[stage] += 1
        try:
            return await _call(stage, timeouts_s[stage], call, arg)
        finally:
            waiting[stage] -= 1
            timings[stage] = round((time.perf_counter() - t0) * 1000, 2)

    normalized: NormalizedQuestion = await timed("normalizer", stages.normalize, request.question)
    candidates: list[Passage] = await timed("retriever", stages.retrieve, normalized.search_text)
    result: dict[str, Any] = {"question": request.question, "normalized_question": normalized.text}
    if not candidates:
        result.update(answer=NO_MATCH_ANSWER, generator_mode="none", sources=[], retrieval="empty")
    else:
        reranked: Reranked = await timed(
            "reranker", stages.rerank, RerankRequest(normalized.text, candidates, request.top_k))
        generated: Answer = await timed(
            "generator", stages.generate,
            GenerationRequest(normalized.text, reranked.passages, reranked.question_vector))
        result.update(
            answer=generated.text,
            generator_mode=generated.mode,
            sources=[_source(rank, p) for rank, p in enumerate(reranked.passages, start=1)],
            retrieval="ok",
            generation=generation_info(generated),
            providers={"reranker": reranked.provider, "generator": generated.provider},
        )
    timings["total"] = round((time.perf_counter() - started) * 1000, 2)
    result["timings_ms"] = timings
    return result


def generation_info(generated: Answer) -> dict[str, Any]:
    """The response's `generation` object (api.Generation): what the generator did. The model's
    draft stays out of it: the guard dropped what no passage supports, and a client must not show it."""
    return {"tokens": generated.tokens, "finish_reason": generated.finish_reason, "cited": generated.cited,
            "model": generated.model, "prompt_tokens": generated.prompt_tokens, "truncated": generated.truncated,
            "unsupported_sentences": generated.unsupported_sentences,
            "invalid_citations": generated.invalid_citations, "fallback_reason": generated.fallback_reason}


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
