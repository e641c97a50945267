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
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
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

__all__ = ["NO_MATCH_ANSWER", "STAGES", "Prepared", "Stages", "answer", "prepare", "stage_deadline", "stream_answer"]

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
    # The streaming call: (request, deadline) -> the draft's text pieces, then the Answer (last).
    generate_stream: Callable[[GenerationRequest, float], AsyncIterator[str | Answer]] | None = None


async def _call(stage: str, timeout_s: float, call: Callable[[Any], Awaitable[Any]], arg: Any) -> Any:
    # The deadline is set before the call creates its coroutine, so a handle call sees it; each
    # call runs in its own task context, so concurrent requests never see each other's.
    token = stage_deadline.set(time.time() + timeout_s)
    try:
        return await asyncio.wait_for(call(arg), timeout=timeout_s)
    except Exception as exc:
        raise _stage_error(stage, timeout_s, exc) from None
    finally:
        stage_deadline.reset(token)


def _stage_error(stage: str, timeout_s: float, exc: Exception) -> Exception:
    """What a stage call's exception means for the client (InvalidInput stays a 4xx)."""
    if isinstance(exc, TimeoutError):
        return StageError(stage, "timeout", f"did not answer within {timeout_s:g}s", status=504)
    if isinstance(exc, InvalidInput | StageError):
        return exc
    # Ray wraps a stage's exception; its `cause` is what the stage raised.
    cause = getattr(exc, "cause", None) or exc
    if isinstance(cause, InvalidInput):
        return cause
    if isinstance(cause, StageUnavailable):
        return StageError(stage, "unavailable", f"cannot take the request now ({cause.message}); retry",
                          status=503, retry_after_s=cause.retry_after_s)
    if isinstance(cause, BudgetExpired):
        return StageError(stage, "timeout", f"did not answer within {timeout_s:g}s", status=504)
    return StageError(stage, "model_error" if stage in ("reranker", "generator") else "internal",
                      f"{type(cause).__name__}: {str(cause)[:300]}")


@dataclass
class Prepared:
    """A request after the stages before the generator: what a streaming answer starts from."""

    result: dict[str, Any]  # the response body so far
    started: float
    timings: dict[str, float] = field(default_factory=dict)
    reranked: Reranked | None = None  # None: BM25 found nothing, the answer is NO_MATCH_ANSWER
    waiting: Counter[str] = field(default_factory=Counter)

    @property
    def generation_request(self) -> GenerationRequest:
        assert self.reranked is not None
        return GenerationRequest(self.result["normalized_question"], self.reranked.passages,
                                 self.reranked.question_vector)

    def timed(self, stage: str, timeouts_s: dict[str, float], call: Callable[[Any], Awaitable[Any]],
              arg: Any) -> Awaitable[Any]:
        async def run() -> Any:
            t0 = time.perf_counter()
            self.waiting[stage] += 1
            try:
                return await _call(stage, timeouts_s[stage], call, arg)
            finally:
                self.waiting[stage] -= 1
                self.timings[stage] = round((time.perf_counter() - t0) * 1000, 2)

        return run()

    def finish(self, generated: Answer | None) -> dict[str, Any]:
        """The complete response body, with the generator's answer (None: no passage matched)."""
        result = self.result
        if generated is None:
            result.update(answer=NO_MATCH_ANSWER, generator_mode="none", sources=[], retrieval="empty")
        else:
            assert self.reranked is not None
            result.update(
                answer=generated.text,
                generator_mode=generated.mode,
                sources=[_source(rank, p) for rank, p in enumerate(self.reranked.passages, start=1)],
                retrieval="ok",
                generation=generation_info(generated),
                providers={"reranker": self.reranked.provider, "generator": generated.provider},
            )
        self.timings["total"] = round((time.perf_counter() - self.started) * 1000, 2)
        result["timings_ms"] = self.timings
        return result


async def prepare(request: ParsedRequest, stages: Stages, timeouts_s: dict[str, float],
                  waiting_on: Counter[str] | None = None) -> Prepared:
    """Normalizer, retriever and reranker: everything before the generator."""
    prepared = Prepared(result={"question": request.question}, started=time.perf_counter(),
                        waiting=Counter() if waiting_on is None else waiting_on)
    normalized: NormalizedQuestion = await prepared.timed("normalizer", timeouts_s, stages.normalize,
                                                          request.question)
    candidates: list[Passage] = await prepared.timed("retriever", timeouts_s, stages.retrieve,
                                                     normalized.search_text)
    prepared.result["normalized_question"] = normalized.text
    if candidates:
        prepared.reranked = await prepared.timed("reranker", timeouts_s, stages.rerank,
                                                 RerankRequest(normalized.text, candidates, request.top_k))
    return prepared


async def answer(request: ParsedRequest, stages: Stages, timeouts_s: dict[str, float],
                 waiting_on: Counter[str] | None = None) -> dict[str, Any]:
    """The response body (api.AnswerResponse without the app/bundle/models fields the ingress adds).

    `waiting_on`, when given, counts the requests currently inside each stage (the ingress's
    admission control names the busiest stage when it refuses one)."""
    prepared = await prepare(request, stages, timeouts_s, waiting_on)
    generated = None
    if prepared.reranked is not None:
        generated = await prepared.timed("generator", timeouts_s, stages.generate, prepared.generation_request)
    return prepared.finish(generated)


async def stream_answer(prepared: Prepared, stages: Stages, timeouts_s: dict[str, float]
                        ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """The generator stage, streamed: ("token", {"text"}) events as the draft is decoded, then one
    ("answer", body) with the guarded answer (the body `answer` returns). The stage's budget holds
    as in `answer`: the replica ends the draft before it (truncated), and a stage that overruns
    raises StageError(generator, timeout) like a non-streaming call. Closing the iterator (the
    client went away) closes the stage's stream, which stops the decode."""
    if prepared.reranked is None:
        yield "answer", prepared.finish(None)
        return
    if stages.generate_stream is None:
        generated = await prepared.timed("generator", timeouts_s, stages.generate, prepared.generation_request)
        yield "answer", prepared.finish(generated)
        return
    timeout_s = timeouts_s["generator"]
    deadline = time.time() + timeout_s
    t0 = time.perf_counter()
    prepared.waiting["generator"] += 1
    generated: Answer | None = None
    items = stages.generate_stream(prepared.generation_request, deadline)
    try:
        while generated is None:
            try:
                # The budget bounds the stage, not the client reading the stream (outside the wait).
                item = await asyncio.wait_for(anext(items), timeout=max(0.0, deadline - time.time()))
            except StopAsyncIteration:
                break
            except Exception as exc:
                raise _stage_error("generator", timeout_s, exc) from None
            if isinstance(item, Answer):
                generated = item
            elif item:
                yield "token", {"text": item}
    finally:
        prepared.waiting["generator"] -= 1
        prepared.timings["generator"] = round((time.perf_counter() - t0) * 1000, 2)
        await items.aclose()  # a client that went away stops the decode (no-op once it ended)
    if generated is None:
        raise StageError("generator", "internal", "the stream ended without an answer")
    yield "answer", prepared.finish(generated)


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
