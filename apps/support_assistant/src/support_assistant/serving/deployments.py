"""One thin Serve deployment per stage: load the stage from the bundle, apply the typed
user_config, batch where a model runs, and tell Serve the truth about the replica's health.

Every stage call takes the caller's deadline (`deadline_s`, seconds since the epoch; see
pipeline.stage_deadline): a request that arrives, or reaches the head of the batch queue, after its
budget ended is dropped (errors.BudgetExpired) instead of taking a place in a model run whose
answer nobody would receive.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import aclosing, contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import ray
from ray import serve

from support_assistant.assemble import configure_generator, load_generator, load_reranker_stage, load_retriever
from support_assistant.config import GeneratorConfig, RerankerConfig, RetrieverConfig, parse
from support_assistant.errors import BudgetExpired
from support_assistant.runtime.bundle import load_bundle
from support_assistant.runtime.decode_loop import DecodeLoop
from support_assistant.runtime.session import CUDA, gpus_simulated
from support_assistant.schema import (
    Answer,
    GenerationRequest,
    Passage,
    RankedPassage,
    Reranked,
    RerankRequest,
)
from support_assistant.serving.telemetry import GeneratorMetrics, StageMetrics
from support_assistant.stages.generator import AbstractiveGenerator

logger = logging.getLogger("ray.serve")

# @serve.batch needs numbers at import time; reconfigure() replaces both from the deployment's
# user_config before the first request, so these are placeholders, not settings.
_UNSET_BATCH = {"max_batch_size": 1, "batch_wait_timeout_s": 0.0}

# What check_health runs through the model: one short passage, so a probe costs one small
# inference and still goes through the same session, tokenizer and scoring code as a request.
_PROBE_PASSAGE = Passage(id=-1, source="health-check", title="Health check", section="Probe",
                         text="The replica answers this probe with a real inference.")


class _Expired:
    """What a batch returns for a request whose budget ended while it waited for the batch."""


_EXPIRED = _Expired()
T = TypeVar("T")  # a request of a batched stage
R = TypeVar("R")  # its result


def _expired(deadline_s: float | None) -> bool:
    return deadline_s is not None and time.time() >= deadline_s


def _refuse_if_expired(stage: str, deadline_s: float | None) -> None:
    if _expired(deadline_s):
        raise BudgetExpired(f"{stage}: the request's budget ended before it reached the replica")


async def _run_live_batch(metrics: StageMetrics, run: Callable[[list[T]], list[R]], requests: list[T],
                                deadlines: list[float | None]) -> list[R | _Expired]:
    """One model run over the batch's requests whose budget has not ended; the others come back
    as _EXPIRED without costing a place in the run."""
    live = [i for i, deadline in enumerate(deadlines) if not _expired(deadline)]
    results: list[R | _Expired] = [_EXPIRED] * len(requests)
    if not live:
        return results
    metrics.batch_size.observe(len(live))
    with metrics.timed():
        # ONNX Runtime releases the GIL; a thread keeps the replica's event loop free to
        # collect the next batch meanwhile.
        done = await asyncio.to_thread(run, [requests[i] for i in live])
    for i, result in zip(live, done, strict=True):
        results[i] = result
    return results


def _unless_expired(stage: str, result: R | _Expired) -> R:
    if isinstance(result, _Expired):
        raise BudgetExpired(f"{stage}: the request's budget ended while it waited for a batch")
    return result


class BatchWait:
    """When a batch waits for company: Serve's @serve.batch waits batch_wait_timeout_s after a batch's
    first request for more, even when that request is the only one in the replica and nothing else
    is coming. Here a request that finds no other request in the replica is batched at once (wait
    0); while others are in flight the configured wait applies, so batches still fill under load.
    The replica's event loop runs every request, so the count needs no lock."""

    def __init__(self, set_wait_s: Callable[[float], None]) -> None:
        self._set_wait_s = set_wait_s
        self.wait_s = 0.0
        self.in_flight = 0

    def configure(self, wait_s: float) -> None:
        self.wait_s = wait_s

    @contextmanager
    def request(self) -> Iterator[None]:
        """Around one request's call of the batched method (Serve reads the wait when the batch
        it starts takes its first request)."""
        self.in_flight += 1
        try:
            self._set_wait_s(self.wait_s if self.in_flight > 1 else 0.0)
            yield
        finally:
            self.in_flight -= 1


@contextmanager
def counting_load_failures(metrics: StageMetrics, model: str) -> Iterator[None]:
    """Counts a failed bundle or model load (SupportAssistantModelLoadFailure) and re-raises it."""
    try:
        yield
    except Exception:
        metrics.model_load_failures.inc(tags={"model": model})
        raise


def require_cuda_when_given_a_gpu(model: str, provider: str, gpu_ids: Sequence[Any] | None = None) -> None:
    """A replica that Ray gave a GPU must run its model on CUDA: silently serving from the CPU would
    hold a GPU idle and answer many times slower than the capacity the config was sized for."""
    gpu_ids = ray.get_runtime_context().get_accelerator_ids().get("GPU", []) if gpu_ids is None else gpu_ids
    if gpu_ids and provider != CUDA and not gpus_simulated():  # a simulated node's GPUs have no device
        message = (f"{model}: this replica was given GPU {', '.join(map(str, gpu_ids))} but its ONNX session runs "
                   f"on {provider}, not {CUDA} (CUDA libraries missing from the image, or an onnxruntime "
                   f"without CUDA); refusing to start")
        logger.error(message)
        raise RuntimeError(message)


# How much lower than the proxy's and the ingress's the model replicas' CPU priority is (nice(2)).
# Model work is batched behind queues and takes its CPU in long runs; the proxy and the ingress answer
# every request, refusals and health checks included, in short ones. Where they share cores (a
# pod's CPU limit, a laptop), a lower priority for the model lets a refusal or a probe through in
# milliseconds instead of waiting behind a batch; the model loses no throughput (the CPU it yields is
# the little the front needs). docs/reliability.md has the figures.
MODEL_REPLICA_NICENESS = 10


def yield_cpu_to_the_front(niceness: int = MODEL_REPLICA_NICENESS) -> None:
    """Lowers the CPU priority of every thread of this replica process by `niceness` (raising a
    niceness needs no privilege). Linux keeps a niceness per thread and a new thread inherits its
    creator's, so the threads Ray started before __init__ are lowered one by one, and the ONNX
    Runtime and to_thread pools created later inherit it."""
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        os.nice(niceness)
        return
    for tid in (int(t.name) for t in tasks.iterdir()):
        with suppress(ProcessLookupError):  # the thread ended meanwhile
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + niceness))


@serve.deployment(name="Retriever")
class RetrieverDeployment:
    def __init__(self, bundle_dir: str) -> None:
        self.metrics = StageMetrics("retriever")
        with counting_load_failures(self.metrics, "index"):
            self.retriever = load_retriever(load_bundle(bundle_dir))
        self.config: RetrieverConfig | None = None

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.config = parse(RetrieverConfig, user_config, "Retriever.user_config")

    async def check_health(self) -> None:
        # A search over the loaded index: raises if it is unusable.
        await asyncio.to_thread(self.retriever.search, "health check", 1)

    async def __call__(self, search_text: str, deadline_s: float | None = None) -> list[Passage]:
        if self.config is None:
            raise RuntimeError("Retriever: no user_config in serveConfigV2")
        _refuse_if_expired("retriever", deadline_s)
        with self.metrics.timed():
            return self.retriever.search(search_text, self.config.candidates)


@serve.deployment(name="Reranker")
class RerankerDeployment:
    def __init__(self, bundle_dir: str) -> None:
        self.metrics = StageMetrics("reranker")
        yield_cpu_to_the_front()
        with counting_load_failures(self.metrics, "reranker"):
            self.stage = load_reranker_stage(load_bundle(bundle_dir))
            require_cuda_when_given_a_gpu("reranker", self.stage.provider)
        self.batch_wait = BatchWait(self.rerank_batch.set_batch_wait_timeout_s)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = parse(RerankerConfig, user_config, "Reranker.user_config")
        self.rerank_batch.set_max_batch_size(config.max_batch_size)
        self.batch_wait.configure(config.batch_wait_timeout_s)

    async def check_health(self) -> None:
        # One tiny inference through the real session: a broken session fails the probe and Serve
        # replaces the replica, instead of the replica answering 502 to every request. On a
        # thread, like requests, so the probe never stalls the event loop.
        await asyncio.to_thread(self.stage.rerank, RerankRequest("health check", [_PROBE_PASSAGE], 1))

    @serve.batch(**_UNSET_BATCH)
    async def rerank_batch(self, requests: list[RerankRequest], deadlines: list[float | None]
                           ) -> list[Reranked | _Expired]:
        return await _run_live_batch(self.metrics, self.stage.rerank_many, requests, deadlines)

    async def __call__(self, request: RerankRequest, deadline_s: float | None = None) -> Reranked:
        _refuse_if_expired("reranker", deadline_s)
        with self.batch_wait.request():
            return _unless_expired("reranker", await self.rerank_batch(request, deadline_s))


@serve.deployment(name="Generator")
class GeneratorDeployment:
    """With a language model, one decode loop (runtime/decode_loop.py) serves every request of the
    replica: a request joins the running batch at its next step, up to max_batch_size rows, and
    leaves it when it finishes, when its budget ends (its answer is what was generated by then,
    `truncated`), or when its caller goes away. Without one, the extractive generator answers in
    @serve.batch batches like the reranker."""

    def __init__(self, bundle_dir: str) -> None:
        self.metrics = StageMetrics("generator")
        yield_cpu_to_the_front()
        self.bundle_dir = bundle_dir
        self.generator: Any = None
        self.decode_loop: DecodeLoop | None = None
        self.batch_wait = BatchWait(self.generate_batch.set_batch_wait_timeout_s)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = parse(GeneratorConfig, user_config, "Generator.user_config")
        if self.generator is None:
            # The first reconfigure comes right after __init__, still inside the replica's start.
            with counting_load_failures(self.metrics, "generator"):
                self.generator = load_generator(load_bundle(self.bundle_dir), config)
                require_cuda_when_given_a_gpu("generator", self.generator.provider)
            if isinstance(self.generator, AbstractiveGenerator):
                lm = GeneratorMetrics()
                self.decode_loop = DecodeLoop(self.generator.decoder, max_batch=config.max_batch_size,
                                              on_decode=lm.decoded, on_first_token=lm.first_token)
        else:
            configure_generator(self.generator, config)
        if self.decode_loop is not None:
            self.decode_loop.max_batch = config.max_batch_size
        self.generate_batch.set_max_batch_size(config.max_batch_size)
        self.batch_wait.configure(config.batch_wait_timeout_s)

    async def check_health(self) -> None:
        if self.generator is None:
            raise RuntimeError("Generator: no model loaded (no user_config in serveConfigV2)")
        if self.decode_loop is not None:
            # One new token through the decode loop the requests use (a stuck or dead loop fails
            # the probe), not the max_new_tokens a request may take.
            ticket = self.decode_loop.submit(self.generator.decoder.new_sequence("Health check.", 1))
            await ticket.result()
        else:
            probe = GenerationRequest("health check", [RankedPassage.of(_PROBE_PASSAGE, 1.0)])
            await asyncio.to_thread(self.generator.answer_many, [probe])

    @serve.batch(**_UNSET_BATCH)
    async def generate_batch(self, requests: list[GenerationRequest], deadlines: list[float | None]
                             ) -> list[Answer | _Expired]:
        return await _run_live_batch(self.metrics, self.generator.answer_many, requests, deadlines)

    async def __call__(self, request: GenerationRequest, deadline_s: float | None = None) -> Answer:
        if self.generator is None:
            raise RuntimeError("Generator: no user_config in serveConfigV2")
        _refuse_if_expired("generator", deadline_s)
        if self.decode_loop is not None:
            with self.metrics.timed():
                return await self.generator.answer_in(self.decode_loop, request, deadline_s)
        with self.batch_wait.request():
            return _unless_expired("generator", await self.generate_batch(request, deadline_s))

    async def stream(self, request: GenerationRequest, deadline_s: float | None = None
                     ) -> AsyncIterator[str | Answer]:
        """The draft's text in pieces as it is decoded, then the guarded Answer (the ingress calls
        this with handle.options(stream=True)). The extractive generator yields its answer only."""
        if self.generator is None:
            raise RuntimeError("Generator: no user_config in serveConfigV2")
        _refuse_if_expired("generator", deadline_s)
        if self.decode_loop is None:
            yield await self(request, deadline_s)
            return
        with self.metrics.timed():
            # Closing this generator (the caller went away: Serve cancels it) closes the stage's,
            # which takes the sequence out of the batch.
            async with aclosing(self.generator.stream(request, self.decode_loop, deadline_s)) as items:
                async for item in items:
                    yield item
