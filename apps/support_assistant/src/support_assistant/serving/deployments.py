"""The Ray Serve layer: one thin deployment per stage, composed with .bind(), and the HTTP ingress.

serveConfigV2 (base/support-assistant/serve-config.yaml) imports `build_app` with
args {bundle_dir} and owns every deployment option (replicas, autoscaling, resources, queues,
health checks) and each stage's user_config; nothing here duplicates those values.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

from ray import serve
from ray.serve import Application
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from support_assistant import __version__
from support_assistant.api import Limits, error_body, parse_answer_request
from support_assistant.bundle.manifest import load_bundle
from support_assistant.errors import InvalidInput, StageError
from support_assistant.models.decoder import Decoder
from support_assistant.models.encoder import load_reranker
from support_assistant.pipeline import Stages, answer
from support_assistant.stages.generator import (
    AbstractiveGenerator,
    Answer,
    ExtractiveGenerator,
    GenerationRequest,
)
from support_assistant.stages.normalizer import Normalizer
from support_assistant.stages.reranker import RerankRequest, RerankStage
from support_assistant.stages.retriever import Retriever, passage_dict
from support_assistant.telemetry import IngressMetrics, StageMetrics

APP_NAME = "support-assistant"


@contextmanager
def counting_load_failures(metrics: StageMetrics, model: str) -> Iterator[None]:
    """Counts a failed bundle or model load (SupportAssistantModelLoadFailure) and re-raises it."""
    try:
        yield
    except Exception:
        metrics.model_load_failures.inc(tags={"model": model})
        raise


@serve.deployment(name="Normalizer")
class NormalizerDeployment:
    def __init__(self) -> None:
        self.metrics = StageMetrics("normalizer")
        self.stage = Normalizer()

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.stage = Normalizer(max_chars=config.get("max_chars", self.stage.max_chars))

    async def __call__(self, question: str) -> dict:
        with self.metrics.timed():
            return asdict(self.stage.normalize(question))


@serve.deployment(name="Retriever")
class RetrieverDeployment:
    def __init__(self, bundle_dir: str) -> None:
        self.metrics = StageMetrics("retriever")
        with counting_load_failures(self.metrics, "index"):
            bundle = load_bundle(bundle_dir)
            if bundle.index_dir is None:
                raise RuntimeError(f"{bundle_dir}: the bundle has no retrieval index (build it with --corpus)")
            self.retriever = Retriever(bundle.index_dir)
        self.candidates = 20

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.candidates = int(config.get("candidates", self.candidates))

    async def __call__(self, search_text: str) -> list[dict]:
        with self.metrics.timed():
            return [passage_dict(p) for p in self.retriever.search(search_text, self.candidates)]


@serve.deployment(name="Reranker")
class RerankerDeployment:
    def __init__(self, bundle_dir: str) -> None:
        self.metrics = StageMetrics("reranker")
        with counting_load_failures(self.metrics, "reranker"):
            bundle = load_bundle(bundle_dir)
            self.scorer = load_reranker(bundle.reranker_dir, bundle.models["reranker"]["kind"])
        self.stage = RerankStage(self.scorer)

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.rerank_batch.set_max_batch_size(int(config.get("max_batch_size", 8)))
        self.rerank_batch.set_batch_wait_timeout_s(float(config.get("batch_wait_timeout_s", 0.01)))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def rerank_batch(self, requests: list[RerankRequest]) -> list[list[dict]]:
        self.metrics.batch_size.observe(len(requests))
        with self.metrics.timed():
            # ONNX Runtime releases the GIL; a thread keeps the replica's event loop free to
            # collect the next batch meanwhile.
            return await asyncio.to_thread(self.stage.rerank_many, requests)

    async def __call__(self, query: str, passages: list[dict], top_k: int) -> dict:
        try:
            ranked = await self.rerank_batch(RerankRequest(query=query, passages=passages, top_k=top_k))
        except Exception:
            self.metrics.error("model_error")
            raise
        return {"passages": ranked, "provider": self.scorer.provider}


@serve.deployment(name="Generator")
class GeneratorDeployment:
    def __init__(self, bundle_dir: str) -> None:
        self.metrics = StageMetrics("generator")
        with counting_load_failures(self.metrics, "generator"):
            bundle = load_bundle(bundle_dir)
            if bundle.has_generator:
                self.model: Any = Decoder(bundle.generator_dir)
                self.generator: Any = AbstractiveGenerator(self.model)
            else:
                self.model = load_reranker(bundle.reranker_dir, bundle.models["reranker"]["kind"])
                self.generator = ExtractiveGenerator(self.model)

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.generate_batch.set_max_batch_size(int(config.get("max_batch_size", 4)))
        self.generate_batch.set_batch_wait_timeout_s(float(config.get("batch_wait_timeout_s", 0.02)))
        if isinstance(self.generator, AbstractiveGenerator):
            self.generator.max_new_tokens = int(config.get("max_new_tokens", self.generator.max_new_tokens))
            self.generator.max_prompt_tokens = int(config.get("max_prompt_tokens", self.generator.max_prompt_tokens))
            self.generator.temperature = float(config.get("temperature", self.generator.temperature))
        else:
            self.generator.sentences = int(config.get("answer_sentences", self.generator.sentences))

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.02)
    async def generate_batch(self, requests: list[GenerationRequest]) -> list[Answer]:
        self.metrics.batch_size.observe(len(requests))
        with self.metrics.timed():
            return await asyncio.to_thread(self.generator.answer_many, requests)

    async def __call__(self, question: str, passages: list[dict]) -> dict:
        try:
            result = await self.generate_batch(GenerationRequest(question=question, passages=passages))
        except Exception:
            self.metrics.error("model_error")
            raise
        return {**asdict(result), "provider": self.model.provider}


@serve.deployment(name="Ingress")
class Ingress:
    def __init__(self, normalizer, retriever, reranker, generator, bundle_dir: str) -> None:
        self.metrics = IngressMetrics()
        # Only the manifest's metadata is needed here; the replicas that load the models hash-verify
        # the bundle, so the ingress does not read every model byte again at start.
        bundle = load_bundle(bundle_dir, verify=False)
        self.info = {
            "app": {"name": APP_NAME, "version": __version__},
            "bundle_version": bundle.bundle_version,
            "models": bundle.models_info(),
        }
        self.stages = Stages(
            normalize=lambda q: normalizer.remote(q),
            retrieve=lambda text: retriever.remote(text),
            rerank=lambda q, passages, k: reranker.remote(q, passages, k),
            generate=lambda q, passages: generator.remote(q, passages),
        )
        self.limits = Limits()
        self.timeouts_s = {"normalizer": 2.0, "retriever": 5.0, "reranker": 15.0, "generator": 40.0}

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.limits = Limits.from_config(config)
        self.timeouts_s = {**self.timeouts_s, **config.get("stage_timeouts_s", {})}

    async def __call__(self, request: Request) -> Response:
        path = request.url.path.rstrip("/") or "/"
        if path == "/healthz":
            if request.method != "GET":
                return self._error(405, "method_not_allowed", "method", f"{request.method} {path}: use GET")
            return JSONResponse({"status": "ok", **self.info})
        if path == "/v1/answer":
            if request.method != "POST":
                return self._error(405, "method_not_allowed", "method", f"{request.method} {path}: use POST")
            return await self._answer(request)
        return self._error(404, "not_found", "path", f"{path}: no such endpoint (POST /v1/answer, GET /healthz)")

    async def _answer(self, request: Request) -> Response:
        try:
            body = await self._read_body(request)
            parsed = parse_answer_request(body, self.limits)
            result = await answer(parsed, self.stages, self.timeouts_s)
        except InvalidInput as exc:
            self.metrics.requests.inc(tags={"status_class": "4xx"})
            return JSONResponse(error_body(exc), status_code=exc.status)
        except StageError as exc:
            self.metrics.requests.inc(tags={"status_class": "5xx"})
            self.metrics.stage_errors.inc(tags={"stage": exc.stage, "reason": exc.reason})
            return JSONResponse(error_body(exc), status_code=exc.status)
        self.metrics.requests.inc(tags={"status_class": "2xx"})
        if result["retrieval"] == "empty":
            self.metrics.empty_retrievals.inc()
        tokens = result.get("generation", {}).get("tokens", 0)
        if tokens:
            self.metrics.generated_tokens.inc(tokens)
        return JSONResponse({**result, **self.info})

    async def _read_body(self, request: Request) -> bytes:
        """The body, refusing it as soon as it passes the limit (never buffering an unbounded upload)."""
        limit = self.limits.max_body_bytes
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

    def _error(self, status: int, code: str, field: str, message: str) -> JSONResponse:
        self.metrics.requests.inc(tags={"status_class": "4xx"})
        return JSONResponse({"error": {"code": code, "field": field, "message": message}}, status_code=status)


def build_app(args: dict[str, Any]) -> Application:
    """Application builder named by serveConfigV2's import_path; args come from the same config."""
    bundle_dir = args.get("bundle_dir")
    if not bundle_dir:
        raise ValueError("serveConfigV2 applications[].args.bundle_dir is required")
    return Ingress.bind(
        NormalizerDeployment.bind(),
        RetrieverDeployment.bind(bundle_dir),
        RerankerDeployment.bind(bundle_dir),
        GeneratorDeployment.bind(bundle_dir),
        bundle_dir,
    )

