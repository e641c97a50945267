"""The HTTP ingress: a FastAPI app behind Serve (`@serve.ingress`), so routing, methods and the
OpenAPI schema (/openapi.json, /docs) are FastAPI's, and this module only reads the body under its
size cap, runs the pipeline, and turns every outcome into JSON.

Errors keep one shape, {"error": {"code", "message", "field"|"stage"}}, for 4xx from validation,
404/405 from routing, 5xx from a stage, and 500 (with a request id) for anything unexpected.
A stage that cannot take a request (its max_queued_requests is full, its replica died, none is
running) answers 503 `stage_unavailable` with Retry-After, naming the stage: a client retries it.

No `from __future__ import annotations` here: FastAPI reads the route parameters' annotations at
run time, and Serve's ingress wrapper resolves them outside this module's namespace.
"""


import asyncio
import functools
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import ExitStack, aclosing
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.exceptions import RayActorError, WorkerCrashedError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from starlette.exceptions import HTTPException as StarletteHTTPException

from support_assistant import __version__
from support_assistant.api import (
    AnswerRequest,
    AnswerResponse,
    ErrorResponse,
    check_content_type,
    error_body,
    parse_answer_request,
    printable,
    wants_event_stream,
)
from support_assistant.config import APP_NAME, IngressConfig, parse
from support_assistant.errors import InvalidInput, StageError, StageUnavailable
from support_assistant.pipeline import Prepared, Stages, answer, prepare, stage_deadline, stream_answer
from support_assistant.runtime.bundle import load_bundle
from support_assistant.schema import NormalizedQuestion
from support_assistant.serving.admission import Admission
from support_assistant.serving.availability import StageAvailability
from support_assistant.serving.telemetry import ANSWER_MODES, IngressMetrics
from support_assistant.stages.normalizer import Normalizer

logger = logging.getLogger("ray.serve")

api = FastAPI(
    title="Support assistant",
    version=__version__,
    description="Answers operator questions from the runbooks: normalizer (in the ingress) -> BM25 retriever "
                "-> ONNX reranker -> ONNX generator, each a Ray Serve deployment.",
)


@functools.cache
def _metrics() -> IngressMetrics:
    # Ray metrics must be created in the replica process, so on first use rather than at import.
    return IngressMetrics()


def _json_error(status: int, code: str, message: str, **where: str) -> JSONResponse:
    status_class = f"{status // 100}xx"
    _metrics().requests.inc(tags={"status_class": status_class})
    return JSONResponse({"error": {"code": code, **where, "message": printable(message)}}, status_code=status)


def _retry_after(seconds: float) -> dict[str, str]:
    # RFC 9110 delay-seconds: a whole number, rounded up so a client never retries too early.
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


# What Ray raises when a stage cannot take a request, as opposed to a stage that ran and failed:
# its handle queue is full (max_queued_requests), its replica died or is unreachable (SIGKILL,
# OOM, node loss, ray.kill), or no replica is running.
_UNAVAILABLE = (BackPressureError, DeploymentUnavailableError, RayActorError, WorkerCrashedError)


def _stage_call(stage: str, handle: Any, deaths: StageAvailability) -> Callable[[Any], Awaitable[Any]]:
    """A deployment handle as a pipeline stage: passes the stage's deadline to the replica, and
    turns Ray's "cannot take it" errors into StageUnavailable (the pipeline names the stage),
    including a wait for a replacement replica that outlasts the budget (serving/availability.py)."""

    async def call(arg: Any) -> Any:
        deadline = stage_deadline.get(None)
        # Just before the pipeline's own timeout, so this wrapper can still say why it expired.
        wait_s = None if deadline is None else max(0.0, deadline - time.time() - 0.05)
        try:
            result = await asyncio.wait_for(handle.remote(arg, deadline), timeout=wait_s)
        except TimeoutError:
            if deaths.coming_back(stage):
                raise StageUnavailable("its replica is gone and no replacement has answered yet") from None
            raise
        except Exception as exc:
            if (unavailable := _stage_unavailable(stage, exc, deaths)) is None:
                raise
            raise unavailable from None
        deaths.answered(stage)
        return result

    return call


def _stream_call(stage: str, handle: Any, deaths: StageAvailability
                 ) -> Callable[[Any, float], AsyncIterator[Any]]:
    """A deployment's `stream` method as the pipeline's streaming stage (Serve streaming response):
    what the replica yields, item by item. Closing it before the end (the client went away, the
    budget ended) cancels the call, and Serve cancels the replica's generator, which stops the decode."""

    async def stream(arg: Any, deadline: float) -> AsyncIterator[Any]:
        response = handle.options(stream=True).stream.remote(arg, deadline)
        finished = False
        try:
            async for item in response:
                yield item
            finished = True
        except Exception as exc:
            if (unavailable := _stage_unavailable(stage, exc, deaths)) is None:
                raise
            raise unavailable from None
        finally:
            if not finished:
                response.cancel()
        deaths.answered(stage)

    return stream


def sse(event: str, data: Any) -> bytes:
    """One Server-Sent Event (JSON has no raw newline, so one data line holds it)."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _stage_unavailable(stage: str, exc: Exception, deaths: StageAvailability) -> StageUnavailable | None:
    """Ray's "cannot take it" error, raised by the handle itself or by the replica and wrapped by Ray
    (its `cause`), as the StageUnavailable the pipeline answers with (a death noted); None for any
    other error, which the caller re-raises."""
    unavailable = exc if isinstance(exc, _UNAVAILABLE) else getattr(exc, "cause", None)
    if not isinstance(unavailable, _UNAVAILABLE):
        return None
    _note_death(stage, unavailable, deaths)
    return StageUnavailable(_describe(unavailable), getattr(unavailable, "retry_after_s", None))


def _note_death(stage: str, exc: BaseException, deaths: StageAvailability) -> None:
    if isinstance(exc, RayActorError | WorkerCrashedError):
        deaths.died(stage)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BackPressureError):
        return "its queue is full"
    if isinstance(exc, DeploymentUnavailableError):
        return "no replica is running"
    return f"its replica is gone ({type(exc).__name__})"


@api.exception_handler(StarletteHTTPException)
async def _routing_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    path = request.url.path
    if exc.status_code == 404:
        return _json_error(404, "not_found",
                           f"{path[:200]}: no such endpoint (POST /v1/answer, GET /healthz, GET /readyz)", field="path")
    if exc.status_code == 405:
        return _json_error(405, "method_not_allowed", f"{request.method} {path}: not allowed here", field="method")
    return _json_error(exc.status_code, "http_error", str(exc.detail), field="request")


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {"loc": ("body",), "msg": "invalid request"}
    field = ".".join(str(p) for p in first["loc"][1:]) or str(first["loc"][0])
    return _json_error(400, "invalid_input", f"{field} {first['msg']}", field=field)


@api.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    request_id = uuid.uuid4().hex[:16]
    logger.exception("request %s: unexpected %s", request_id, type(exc).__name__)
    return _json_error(500, "internal", f"unexpected error; quote request id {request_id} when reporting it",
                       request_id=request_id)


_ERRORS = {status: {"model": ErrorResponse} for status in (400, 404, 405, 408, 413, 415, 500, 502, 503, 504)}
_ANSWER_RESPONSES: dict[int | str, dict[str, Any]] = {**_ERRORS, 200: {
    "description": "The answer as JSON, or with `\"stream\": true` / `Accept: text/event-stream` as Server-Sent "
                   "Events: `event: token` (data {\"text\": ...}, the draft as it is decoded, before the grounding "
                   "guard: show it as provisional), then one `event: answer` whose data is the JSON answer below "
                   "(the guarded text, sources, timings, models), or one `event: error` (data: the error body) if "
                   "a stage fails after the stream began. Errors before it begins are JSON with their status.",
    "content": {"text/event-stream": {"schema": {"type": "string"}, "example": (
        'event: token\ndata: {"text":"Check the"}\n\nevent: token\ndata: {"text":" operator logs"}\n\n'
        'event: answer\ndata: {"answer":"Check the KubeRay operator logs. [1]",'
        '"generator_mode":"abstractive",...}\n\n')}},
}}


@serve.deployment(name="Ingress")
@serve.ingress(api)
class Ingress:
    def __init__(self, retriever: Any, reranker: Any, generator: Any, bundle_dir: str) -> None:
        # Only the manifest's metadata is needed here; the replicas that load the models hash-verify
        # the bundle, so the ingress does not read every model byte again at start.
        bundle = load_bundle(bundle_dir, verify=False)
        self.info = {
            "app": {"name": APP_NAME, "version": __version__},
            "bundle_version": bundle.bundle_version,
            "models": bundle.models_info(),
        }
        # Replica names watched every second: fresh enough to tell a timed-out request whether
        # its stage is gone (a replica restarts in seconds), and one cheap call to the GCS.
        self.availability = StageAvailability(serve.get_replica_context().app_name, refresh_s=1.0)
        self.stages = Stages(
            # In this process: the normalizer's work is far cheaper than a call to another replica.
            normalize=self._normalize,
            retrieve=_stage_call("retriever", retriever, self.availability),
            rerank=_stage_call("reranker", reranker, self.availability),
            generate=_stage_call("generator", generator, self.availability),
            generate_stream=_stream_call("generator", generator, self.availability),
        )
        self.config: IngressConfig | None = None
        self.normalizer: Normalizer | None = None
        self.admission = Admission()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.config = parse(IngressConfig, user_config, "Ingress.user_config")
        self.normalizer = Normalizer(max_chars=self.config.normalizer.max_chars)

    async def _normalize(self, question: str) -> NormalizedQuestion:
        assert self.normalizer is not None  # answer() refuses to run before reconfigure
        return self.normalizer.normalize(question)

    @api.get("/healthz", summary="Liveness and what is deployed")
    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok", **self.info}

    @api.get("/readyz", summary="Whether every stage has a running, healthy replica",
             responses={503: {"description": "a stage has no running replica or is unhealthy"}})
    async def readyz(self) -> JSONResponse:
        # Serve's own view: a replica whose check_health fails (each model deployment runs a tiny
        # inference) is not RUNNING, and a deployment whose replicas cannot start is UNHEALTHY
        # or DEPLOY_FAILED. Asked afresh here, not from the background snapshot.
        self.availability.start()
        stages = await self.availability.refresh()
        ready = self.availability.ready()
        body = {"status": "ready" if ready else "not_ready", "stages": stages, **self.info}
        if ready:
            return JSONResponse(body)
        assert self.config is not None
        return JSONResponse(body, status_code=503, headers=_retry_after(self.config.retry_after_s))

    @api.post(
        "/v1/answer",
        summary="Answer a question from the runbooks",
        response_model=AnswerResponse,
        responses=_ANSWER_RESPONSES,
        # The body is read by hand (to refuse an oversized upload while it streams), so its schema
        # is declared here for the OpenAPI document.
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": AnswerRequest.model_json_schema()}}}},
    )
    async def answer(self, request: Request) -> Response:
        if self.config is None:
            raise RuntimeError("Ingress: no user_config in serveConfigV2")
        metrics = _metrics()
        config = self.config
        self.availability.start()
        try:
            check_content_type(request.headers.get("content-type"))
            with self.admission.reading(config.max_in_flight, config.retry_after_s):
                body = await self._read_body(request, config.max_body_bytes, config.body_read_timeout_s)
            parsed = parse_answer_request(body, config)
            if parsed.stream or wants_event_stream(request.headers.get("accept")):
                return await self._stream(parsed, config)
            with self.admission.admit(config.max_in_flight, config.retry_after_s) as waiting_on:
                result = await answer(parsed, self.stages, config.stage_timeouts_s.as_dict(), waiting_on)
        except InvalidInput as exc:
            metrics.requests.inc(tags={"status_class": "4xx"})
            return JSONResponse(error_body(exc), status_code=exc.status)
        except StageError as exc:
            self._count_stage_error(exc)
            headers = None
            if exc.status == 503:
                headers = _retry_after(exc.retry_after_s or config.retry_after_s)
            return JSONResponse(error_body(exc), status_code=exc.status, headers=headers)
        self._count_answer(result)
        return JSONResponse({**result, **self.info})

    @staticmethod
    def _count_answer(result: dict[str, Any]) -> None:
        metrics = _metrics()
        metrics.requests.inc(tags={"status_class": "2xx"})
        if result["retrieval"] == "empty":
            metrics.empty_retrievals.inc()
        if result["generator_mode"] in ANSWER_MODES:
            metrics.answers.inc(tags={"mode": result["generator_mode"]})
        tokens = (result.get("generation") or {}).get("tokens", 0)
        if tokens:
            metrics.generated_tokens.inc(tokens)

    @staticmethod
    def _count_stage_error(exc: StageError) -> None:
        metrics = _metrics()
        metrics.requests.inc(tags={"status_class": "5xx"})
        metrics.stage_errors.inc(tags={"stage": exc.stage, "reason": exc.reason})

    async def _stream(self, parsed: Any, config: IngressConfig) -> StreamingResponse:
        """The stages before the generator run first, so their errors (and a full pipeline) still
        answer with a JSON status; then the answer streams, holding its admission place until the
        stream ends or the client goes away."""
        place = ExitStack()
        waiting_on = place.enter_context(self.admission.admit(config.max_in_flight, config.retry_after_s))
        try:
            prepared = await prepare(parsed, self.stages, config.stage_timeouts_s.as_dict(), waiting_on)
        except BaseException:
            place.close()
            raise
        return StreamingResponse(self.events(prepared, config, place), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def events(self, prepared: Prepared, config: IngressConfig, place: ExitStack) -> AsyncIterator[bytes]:
        """The SSE body. Its `finally` is what a disconnect runs: the stream is cancelled mid-await,
        closing the generator stage's stream (which stops the decode) and freeing the place."""
        try:
            events = stream_answer(prepared, self.stages, config.stage_timeouts_s.as_dict())
            # aclosing: an `async for` left by an exception (the disconnect) does not close the
            # generator it reads; this does, at once, so the decode stops now, not at garbage collection.
            async with aclosing(events):
                async for event, data in events:
                    if event == "answer":
                        self._count_answer(data)
                        data = {**data, **self.info}
                    yield sse(event, data)
        except StageError as exc:
            self._count_stage_error(exc)
            yield sse("error", error_body(exc))
        finally:
            place.close()

    @staticmethod
    async def _read_body(request: Request, limit: int, timeout_s: float) -> bytes:
        """The body, refused as soon as it passes the limit (never buffering an unbounded upload)
        or when it has not all arrived within timeout_s (a stalled or trickling client would
        otherwise hold one of the replica's max_ongoing_requests slots)."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise InvalidInput("body", f"is {declared} bytes; the limit is {limit}", status=413, code="body_too_large")
        chunks, size = [], 0
        try:
            async with asyncio.timeout(timeout_s):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise InvalidInput("body", f"is over the limit of {limit} bytes", status=413,
                                           code="body_too_large")
                    chunks.append(chunk)
        except TimeoutError:
            raise InvalidInput("body", f"did not arrive within {timeout_s:g}s ({size} bytes received)",
                               status=408, code="body_timeout") from None
        return b"".join(chunks)
