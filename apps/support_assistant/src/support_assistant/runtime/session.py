"""ONNX Runtime session factory shared by every model in the app.

One place decides the execution provider and the thread budget, so that the reranker and the
generator behave the same and a response can report which provider really ran the model.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path

import onnxruntime as ort

logger = logging.getLogger(__name__)

PROVIDERS_ENV = "SUPPORT_ASSISTANT_ORT_PROVIDERS"
THREADS_ENV = "SUPPORT_ASSISTANT_ORT_THREADS"
# "1" lets idle intra-op threads spin instead of sleeping (ORT's session.intra_op.allow_spinning).
# Off by default: a spinning thread keeps a core busy after every run, taken from whatever shares
# the cores; worth it only where a replica's sessions have their cores to themselves
# (docs/benchmarks.md section 4: 1.36-1.40x for a lone 16-token question on 2 threads).
SPIN_ENV = "SUPPORT_ASSISTANT_ORT_SPIN"
# Ray sets OMP_NUM_THREADS in every worker process (ray._private.utils.set_omp_num_threads_if_unset,
# Ray 2.60) to the actor's num_cpus, floored, at least 1, unless the environment already sets it: so
# a Serve replica with ray_actor_options.num_cpus: 2 reads 2 here. ONNX Runtime's default would be
# every core of the node, whatever the replica was given.
OMP_THREADS_ENV = "OMP_NUM_THREADS"
# The HF tokenizers library parallelises encode_batch on rayon's global pool, sized by this variable
# when the pool is first used (default: every core). Capped like the session's threads.
RAYON_THREADS_ENV = "RAYON_NUM_THREADS"

# "1" on every node of a simulated cluster (`repoctl simulate`, tools/repoctl/simulation): its GPUs
# are Ray resources declared on raylets without a device, so a replica given one runs its model on
# the CPU. Nothing in a real cluster sets it: there, a replica given a GPU must run on CUDA
# (serving/deployments.py require_cuda_when_given_a_gpu).
SIMULATED_GPUS_ENV = "SUPPORT_ASSISTANT_SIMULATED_GPUS"

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

# ORT severity levels: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal. Warnings such as "some nodes
# were not assigned to the preferred execution providers" are expected with CUDA (shape ops stay on
# CPU by design) and would be printed once per replica start, so only errors get through.
_ORT_LOG_LEVEL = 3

ort.set_default_logger_severity(_ORT_LOG_LEVEL)


def choose_providers(available: list[str] | None = None, env: dict[str, str] | None = None) -> list[str]:
    """The provider list to ask ORT for, best first.

    An explicit `SUPPORT_ASSISTANT_ORT_PROVIDERS` wins; naming a provider this onnxruntime build
    does not have is an error rather than a silent fallback, since an operator who forces CUDA
    wants to know when the image cannot do it.
    """
    available = list(ort.get_available_providers() if available is None else available)
    env = os.environ if env is None else env
    raw = env.get(PROVIDERS_ENV, "").strip()
    if raw:
        requested = [p.strip() for p in raw.split(",") if p.strip()]
        missing = [p for p in requested if p not in available]
        if missing:
            raise ValueError(
                f"{PROVIDERS_ENV} asks for {', '.join(missing)}, which this onnxruntime build does not "
                f"provide (available: {', '.join(available)})"
            )
        return requested
    # Only CUDA or CPU by default: other providers present in stock wheels (e.g. Azure) are remote
    # or experimental and must be opted into explicitly.
    return [CUDA, CPU] if CUDA in available else [CPU]


def _switch(name: str, env: Mapping[str, str] | None) -> bool:
    """An on/off variable: "1" on, "0" or unset off; anything else is refused, naming the variable."""
    env = os.environ if env is None else env
    raw = env.get(name, "").strip()
    if raw not in ("", "0", "1"):
        raise ValueError(f"{name} must be 0 or 1, got {raw!r}")
    return raw == "1"


def gpus_simulated(env: Mapping[str, str] | None = None) -> bool:
    """Whether this process runs on a simulated cluster's node (SIMULATED_GPUS_ENV is "1")."""
    return _switch(SIMULATED_GPUS_ENV, env)


def intra_op_threads(env: Mapping[str, str] | None = None) -> int:
    """Threads per session: `SUPPORT_ASSISTANT_ORT_THREADS` when set, else the CPUs Ray gave the
    replica (OMP_NUM_THREADS), else 1. Matching the replica's num_cpus keeps replicas that share a
    node from oversubscribing it, and lets a replica given more CPUs use them."""
    env = os.environ if env is None else env
    raw = env.get(THREADS_ENV, "").strip()
    if not raw:
        omp = env.get(OMP_THREADS_ENV, "").strip()
        # An unusable OMP_NUM_THREADS (someone else's variable) is not ours to refuse.
        return int(omp) if omp.isdigit() and int(omp) >= 1 else 1
    try:
        threads = int(raw)
    except ValueError:
        raise ValueError(f"{THREADS_ENV} must be a positive integer, got {raw!r}") from None
    if threads < 1:
        raise ValueError(f"{THREADS_ENV} must be a positive integer, got {raw!r}")
    return threads


def spinning(env: Mapping[str, str] | None = None) -> bool:
    """Whether idle intra-op threads spin: only when `SUPPORT_ASSISTANT_ORT_SPIN` is "1"."""
    return _switch(SPIN_ENV, env)


def cap_tokenizer_threads(threads: int, env: MutableMapping[str, str] | None = None) -> None:
    """Size the tokenizers' thread pool like the session, unless the environment already does.
    Must run before the first batch is tokenized (the pool is built once per process)."""
    env = os.environ if env is None else env
    env.setdefault(RAYON_THREADS_ENV, str(threads))


def session_options(threads: int | None = None) -> ort.SessionOptions:
    threads = intra_op_threads() if threads is None else threads
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = _ORT_LOG_LEVEL
    # Spinning workers burn a core while idle; with replicas sharing cores that steals time from
    # the neighbours, so idle threads sleep unless the deployment opts in (SPIN_ENV).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning() else "0")
    return opts


def make_session(
    path: str | Path, *, providers: list[str] | None = None, threads: int | None = None
) -> ort.InferenceSession:
    """Create an inference session for `path` on the best available provider.

    Create one per model per process and reuse it: session creation parses and optimises the
    whole graph.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    wanted = choose_providers() if providers is None else providers
    session = ort.InferenceSession(str(path), sess_options=session_options(threads), providers=wanted)
    active = active_provider(session)
    if active != wanted[0]:
        # ORT falls back silently when e.g. the CUDA libraries are missing at runtime; say so once.
        logger.warning("onnx session %s: wanted %s, running on %s", path.name, wanted[0], active)
    else:
        logger.info("onnx session %s: running on %s", path.name, active)
    return session


def active_provider(session: ort.InferenceSession) -> str:
    """The provider that runs the model (the first one ORT actually registered)."""
    return session.get_providers()[0]
