"""The HTTP ingress: a FastAPI app behind Serve (`@serve.ingress`), so routing, methods and the
OpenAPI schema (/openapi.json, /docs) are FastAPI's, and this module only reads the body under its
size cap, runs the pipeline, and turns every outcome into JSON.

Errors keep one shape, {"error": {"code", "message", "field"|"stage"}}, for 4xx from validation,
404/405 from routing, 5xx from a stage, and 500 (with a request id) for anything unexpected.

No `from __future__ import annotations` here: FastAPI reads the route parameters' annotations at
run time, and Serve's ingress wrapper resolves them outside this module's namespace.
"""


import functools
import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from support_assistant import __version__
from support_assistant.api import AnswerRequest, AnswerResponse, ErrorResponse, error_body, parse_answer_request
from support_assistant.config import IngressConfig, parse
from support_assistant.errors import InvalidInput, StageError
from support_assistant.pipeline import Stages, answer
from support_assistant.runtime.bundle import load_bundle
from support_assistant.serving.telemetry import IngressMetrics

APP_NAME = "support-assistant"
logger = logging.getLogger("ray.serve")

api = FastAPI(
    title="Support assistant",
    version=__version__,
    description="Answers operator questions from the runbooks: normalizer -> BM25 retriever -> ONNX "
                "reranker -> ONNX generator, each a Ray Serve deployment.",
)


@functools.cache
def _metrics() -> IngressMetrics:
    # Ray metrics must be created in the replica process, so on first use rather than at import.
    return IngressMetrics()


def _json_error(status: int, code: str, message: str, **where: str) -> JSONResponse:
    status_class = f"{status // 100}xx"
    _metrics().requests.inc(tags={"status_class": status_class})
    return JSONResponse({"error": {"code": code, **where, "message": message}}, status_code=status)


@api.exception_handler(StarletteHTTPException)
async def _routing_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    path = request.url.path
    if exc.status_code == 404:
        return _json_error(404, "not_found", f"{path}: no such endpoint (POST /v1/answer, GET /healthz)",
                           field="path")
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


_ERRORS = {status: {"model": ErrorResponse} for status in (400, 404, 405, 413, 500, 502, 503, 504)}


@serve.deployment(name="Ingress")
@serve.ingress(api)
class Ingress:
    def __init__(self, normalizer: Any, retriever: Any, reranker: Any, generator: Any, bundle_dir: str) -> None:
        # Only the manifest's metadata is needed here; the replicas that load the models hash-verify
        # the bundle, so the ingress does not read every model byte again at start.
        bundle = load_bundle(bundle_dir, verify=False)
        self.info = {
            "app": {"name": APP_NAME, "version": __version__},
            "bundle_version": bundle.bundle_version,
            "models": bundle.models_info(),
        }
        self.stages = Stages(
            normalize=normalizer.remote,
            retrieve=retriever.remote,
            rerank=reranker.remote,
            generate=generator.remote,
        )
        self.config: IngressConfig | None = None

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.config = parse(IngressConfig, user_config, "Ingress.user_config")

    @api.get("/healthz", summary="Liveness and what is deployed")
    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok", **self.info}

    @api.post(
        "/v1/answer",
        summary="Answer a question from the runbooks",
        response_model=AnswerResponse,
        responses=_ERRORS,
        # The body is read by hand (to refuse an oversized upload while it streams), so its schema
        # is declared here for the OpenAPI document.
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": AnswerRequest.model_json_schema()}}}},
    )
    async def answer(self, request: Request) -> JSONResponse:
        if self.config is None:
            raise RuntimeError("Ingress: no user_config in serveConfigV2")
        metrics = _metrics()
        try:
            body = await self._read_body(request, self.config.max_body_bytes)
            parsed = parse_answer_request(body, self.config)
            result = await answer(parsed, self.stages, self.config.stage_timeouts_s.as_dict())
        except InvalidInput as exc:
            metrics.requests.inc(tags={"status_class": "4xx"})
            return JSONResponse(error_body(exc), status_code=exc.status)
        except StageError as exc:
            metrics.requests.inc(tags={"status_class": "5xx"})
            metrics.stage_errors.inc(tags={"stage": exc.stage, "reason": exc.reason})
            return JSONResponse(error_body(exc), status_code=exc.status)
        metrics.requests.inc(tags={"status_class": "2xx"})
        if result["retrieval"] == "empty":
            metrics.empty_retrievals.inc()
        tokens = (result.get("generation") or {}).get("tokens", 0)
        if tokens:
            metrics.generated_tokens.inc(tokens)
        return JSONResponse({**result, **self.info})

    @staticmethod
    async def _read_body(request: Request, limit: int) -> bytes:
        """The body, refused as soon as it passes the limit (never buffering an unbounded upload)."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise InvalidInput("body", f"is {declared} bytes; the limit is {limit}", status=413, code="body_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise InvalidInput("body", f"is over the limit of {limit} bytes", status=413, code="body_too_large")
            chunks.append(chunk)
        return b"".join(chunks)
