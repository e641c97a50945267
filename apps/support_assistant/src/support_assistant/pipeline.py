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

from support_assistant.api import AnswerRequest
from support_assistant.errors import InvalidInput, StageError

STAGES = ("normalizer", "retriever", "reranker", "generator")

NO_MATCH_ANSWER = (
    "No runbook passage matches this question. Try the symptom as the alert or kubectl shows it "
    "(for example: RayService not ready, pod Pending, OOMKilled)."
)


@dataclass
class Stages:
    normalize: Callable[[str], Awaitable[dict]]  # -> {"text", "search_text", "truncated"}
    retrieve: Callable[[str], Awaitable[list[dict]]]  # search text -> candidate passages
    rerank: Callable[[str, list[dict], int], Awaitable[dict]]  # -> {"passages", "provider"}
    generate: Callable[[str, list[dict]], Awaitable[dict]]  # -> {"text", "mode", "tokens", "provider", ...}


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


async def answer(request: AnswerRequest, stages: Stages, timeouts_s: dict[str, float]) -> dict:
    timings: dict[str, float] = {}
    started = time.perf_counter()

    async def timed(stage: str, awaitable: Awaitable[Any]) -> Any:
        t0 = time.perf_counter()
        try:
            return await _call(stage, timeouts_s[stage], awaitable)
        finally:
            timings[stage] = round((time.perf_counter() - t0) * 1000, 2)

    normalized = await timed("normalizer", stages.normalize(request.question))
    candidates = await timed("retriever", stages.retrieve(normalized["search_text"]))
    result: dict[str, Any] = {"question": request.question, "normalized_question": normalized["text"]}
    if not candidates:
        result.update(answer=NO_MATCH_ANSWER, generator_mode="none", sources=[], retrieval="empty")
    else:
        reranked = await timed("reranker", stages.rerank(normalized["text"], candidates, request.top_k))
        generated = await timed("generator", stages.generate(normalized["text"], reranked["passages"]))
        result.update(
            answer=generated["text"],
            generator_mode=generated["mode"],
            sources=[_source(rank, p) for rank, p in enumerate(reranked["passages"], start=1)],
            retrieval="ok",
            generation={k: generated[k] for k in ("tokens", "finish_reason", "cited") if k in generated},
            providers={"reranker": reranked["provider"], "generator": generated.get("provider")},
        )
    timings["total"] = round((time.perf_counter() - started) * 1000, 2)
    result["timings_ms"] = timings
    return result


def _source(rank: int, passage: dict) -> dict:
    return {
        "rank": rank,
        "source": passage["source"],
        "title": passage["title"],
        "section": passage["section"],
        "retrieval_score": round(passage["score"], 4),
        "rerank_score": round(passage["rerank_score"], 4),
        "text": passage["text"],
    }
