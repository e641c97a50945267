"""One thin Serve deployment per stage: load the stage from the bundle, apply the typed
user_config, and batch where a model runs. The stage logic lives in support_assistant.stages."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ray import serve

from support_assistant.assemble import configure_generator, load_generator, load_reranker_stage, load_retriever
from support_assistant.config import GeneratorConfig, NormalizerConfig, RerankerConfig, RetrieverConfig, parse
from support_assistant.runtime.bundle import load_bundle
from support_assistant.schema import Answer, GenerationRequest, NormalizedQuestion, Passage, Reranked, RerankRequest
from support_assistant.serving.telemetry import StageMetrics
from support_assistant.stages.normalizer import Normalizer

# @serve.batch needs numbers at import time; reconfigure() replaces both from the deployment's
# user_config before the first request, so these are placeholders, not settings.
_UNSET_BATCH = {"max_batch_size": 1, "batch_wait_timeout_s": 0.0}


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
        self.stage: Normalizer | None = None

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = parse(NormalizerConfig, user_config, "Normalizer.user_config")
        self.stage = Normalizer(max_chars=config.max_chars)

    async def __call__(self, question: str) -> NormalizedQuestion:
        if self.stage is None:
            raise RuntimeError("Normalizer: no user_config in serveConfigV2")
        with self.metrics.timed():
            return self.stage.normalize(question)


@serve.deployment(name="Retriever")
class RetrieverDeployment:
    def __init__(self, bundle_dir: str) -> None:
        self.metrics = StageMetrics("retriever")
        with counting_load_failures(self.metrics, "index"):
            self.retriever = load_retriever(load_bundle(bundle_dir))
        self.config: RetrieverConfig | None = None

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.config = parse(RetrieverConfig, user_config, "Retriever.user_config")

    async def __call__(self, search_text: str) -> list[Passage]:
        if self.config is None:
            raise RuntimeError("Retriever: no user_config in serveConfigV2")
        with self.metrics.timed():
            return self.retriever.search(search_text, self.config.candidates)


@serve.deployment(name="Reranker")
class RerankerDeployment:
    def __init__(self, bundle_dir: str) -> None:
        self.metrics = StageMetrics("reranker")
        with counting_load_failures(self.metrics, "reranker"):
            self.stage = load_reranker_stage(load_bundle(bundle_dir))

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = parse(RerankerConfig, user_config, "Reranker.user_config")
        self.rerank_batch.set_max_batch_size(config.max_batch_size)
        self.rerank_batch.set_batch_wait_timeout_s(config.batch_wait_timeout_s)

    @serve.batch(**_UNSET_BATCH)
    async def rerank_batch(self, requests: list[RerankRequest]) -> list[Reranked]:
        self.metrics.batch_size.observe(len(requests))
        with self.metrics.timed():
            # ONNX Runtime releases the GIL; a thread keeps the replica's event loop free to
            # collect the next batch meanwhile.
            return await asyncio.to_thread(self.stage.rerank_many, requests)

    async def __call__(self, request: RerankRequest) -> Reranked:
        return await self.rerank_batch(request)


@serve.deployment(name="Generator")
class GeneratorDeployment:
    def __init__(self, bundle_dir: str) -> None:
        self.metrics = StageMetrics("generator")
        self.bundle_dir = bundle_dir
        self.generator: Any = None

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = parse(GeneratorConfig, user_config, "Generator.user_config")
        if self.generator is None:
            # The first reconfigure comes right after __init__, still inside the replica's start.
            with counting_load_failures(self.metrics, "generator"):
                self.generator = load_generator(load_bundle(self.bundle_dir), config)
        else:
            configure_generator(self.generator, config)
        self.generate_batch.set_max_batch_size(config.max_batch_size)
        self.generate_batch.set_batch_wait_timeout_s(config.batch_wait_timeout_s)

    @serve.batch(**_UNSET_BATCH)
    async def generate_batch(self, requests: list[GenerationRequest]) -> list[Answer]:
        self.metrics.batch_size.observe(len(requests))
        with self.metrics.timed():
            return await asyncio.to_thread(self.generator.answer_many, requests)

    async def __call__(self, request: GenerationRequest) -> Answer:
        if self.generator is None:
            raise RuntimeError("Generator: no user_config in serveConfigV2")
        return await self.generate_batch(request)
