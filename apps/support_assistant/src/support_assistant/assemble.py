"""From a bundle and the typed config to the stage objects: the one place that wires them.

Each Serve replica loads only its own stage (`load_retriever`, `load_reranker_stage`,
`load_generator`); `build_stages` loads all of them in one process for the tests and the bench's
single-process baseline, and `in_process` turns them into the async callables `pipeline.answer`
takes, so every caller runs exactly the same objects.
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path

from support_assistant.config import GeneratorConfig, PipelineConfig
from support_assistant.pipeline import Stages
from support_assistant.runtime.bundle import Bundle, BundleError, load_bundle
from support_assistant.runtime.decode_loop import DecodeLoop
from support_assistant.runtime.decoder import Decoder
from support_assistant.runtime.embeddings import CachedVectors, EmbeddingsError, load_cached_vectors
from support_assistant.runtime.encoder import load_reranker
from support_assistant.schema import GenerationRequest, RerankRequest
from support_assistant.stages.generator import AbstractiveGenerator, ExtractiveGenerator
from support_assistant.stages.grounding import GroundingGuard
from support_assistant.stages.normalizer import Normalizer
from support_assistant.stages.reranker import RerankStage
from support_assistant.stages.retriever import Retriever

Generator = ExtractiveGenerator | AbstractiveGenerator


def load_retriever(bundle: Bundle) -> Retriever:
    if bundle.index_dir is None:
        raise BundleError(f"{bundle.root}: the bundle has no retrieval index (build it with --corpus)")
    return Retriever(bundle.index_dir)


def load_vectors(bundle: Bundle) -> CachedVectors | None:
    """The bundle's precomputed corpus vectors (bi-encoder bundles built with a corpus), else None."""
    if bundle.embeddings is None:
        return None
    try:
        return load_cached_vectors(bundle.root / bundle.embeddings["path"], bundle.embeddings, bundle.files)
    except EmbeddingsError as exc:
        # A cache that does not belong to this bundle's model is a broken bundle, not a slow path.
        raise BundleError(str(exc)) from None


def load_reranker_stage(bundle: Bundle, vectors: CachedVectors | None = None, *,
                        threads: int | None = None) -> RerankStage:
    """`threads`: the session's intra-op threads (default: runtime.session.intra_op_threads)."""
    return RerankStage(load_reranker(bundle.reranker_dir, bundle.models["reranker"]["kind"], threads=threads),
                       vectors if vectors is not None else load_vectors(bundle))


def load_generator(bundle: Bundle, config: GeneratorConfig, vectors: CachedVectors | None = None) -> Generator:
    """Abstractive when the bundle holds a language model (and the config lets it run), guarded by
    the reranker's encoder, with the extractive generator over that same encoder as the fallback;
    else extractive."""
    vectors = vectors if vectors is not None else load_vectors(bundle)
    encoder = load_reranker(bundle.reranker_dir, bundle.models["reranker"]["kind"])
    extractive = ExtractiveGenerator(encoder, vectors=vectors, model=bundle.models["reranker"]["name"])
    generator: Generator = extractive
    if bundle.generator_dir is not None and config.use_language_model:
        guard = GroundingGuard(encoder, grounding_threshold(bundle, config), vectors=extractive.vectors)
        generator = AbstractiveGenerator(Decoder(bundle.generator_dir), guard, extractive)
    configure_generator(generator, config)
    return generator


def grounding_threshold(bundle: Bundle, config: GeneratorConfig) -> float:
    """The guard's threshold for the bundle's encoder. None calibrated for it: the replica refuses to
    start rather than let the language model answer unguarded (or guarded by another model's scale)."""
    encoder = bundle.models["reranker"]
    if encoder["name"] not in config.grounding_thresholds:
        raise BundleError(f"Generator.user_config.grounding_thresholds has no threshold for {encoder['name']}, "
                          "the bundle's sentence encoder: calibrate one (bench/guard_calibration.py) before "
                          "the language model may answer")
    return config.grounding_thresholds[encoder["name"]]


def configure_generator(generator: Generator, config: GeneratorConfig) -> None:
    if isinstance(generator, AbstractiveGenerator):
        generator.max_new_tokens = config.max_new_tokens
        generator.max_prompt_tokens = config.max_prompt_tokens
        generator.temperature = config.temperature
        generator.fallback.sentences = config.answer_sentences
    else:
        generator.sentences = config.answer_sentences


@dataclass
class PipelineStages:
    """Every stage of the pipeline, loaded in one process."""

    bundle: Bundle
    config: PipelineConfig
    normalizer: Normalizer
    retriever: Retriever
    reranker: RerankStage
    generator: Generator


def build_stages(bundle_dir: str | Path, config: PipelineConfig, *, verify: bool = True) -> PipelineStages:
    bundle = load_bundle(bundle_dir, verify=verify)
    vectors = load_vectors(bundle)
    return PipelineStages(
        bundle=bundle,
        config=config,
        normalizer=Normalizer(max_chars=config.ingress.normalizer.max_chars),
        retriever=load_retriever(bundle),
        reranker=load_reranker_stage(bundle, vectors),
        generator=load_generator(bundle, config.generator, vectors),
    )


def in_process(stages: PipelineStages, decode_loop: DecodeLoop | None = None) -> Stages:
    """The stages as pipeline.answer's async callables, model work on worker threads (ONNX Runtime
    releases the GIL) so an event loop serving HTTP stays responsive. With a language model and a
    `decode_loop` over its decoder, generation goes through the loop as in a Generator replica
    (requests share decode steps, and can stream); without one, each request decodes alone."""
    candidates = stages.config.retriever.candidates
    generator = stages.generator

    async def normalize(question: str):
        return stages.normalizer.normalize(question)

    async def retrieve(search_text: str):
        return await asyncio.to_thread(stages.retriever.search, search_text, candidates)

    async def rerank(request: RerankRequest):
        return await asyncio.to_thread(stages.reranker.rerank, request)

    async def generate(request: GenerationRequest):
        if decode_loop is not None and isinstance(generator, AbstractiveGenerator):
            return await generator.answer_in(decode_loop, request)
        return (await asyncio.to_thread(generator.answer_many, [request]))[0]

    async def generate_stream(request: GenerationRequest, deadline_s: float):
        if decode_loop is not None and isinstance(generator, AbstractiveGenerator):
            async with aclosing(generator.stream(request, decode_loop, deadline_s)) as items:
                async for item in items:
                    yield item
        else:
            yield await generate(request)

    return Stages(normalize=normalize, retrieve=retrieve, rerank=rerank, generate=generate,
                  generate_stream=generate_stream)
