"""Benchmarks (not tests): stage latencies without Ray, and the whole pipeline on a local Ray.

    make bench                               # both, on the local bundle
    .venv/bin/python bench/run.py --only stages --repeat 20
    .venv/bin/python bench/run.py --only serve --requests 60 --concurrency 4 --env dev

Prints a table and writes JSON (--out, default .cache/bench/latest.json) with the machine, the
bundle's models and the ONNX Runtime provider, so a figure can be traced to what produced it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = [
    "My RayService is stuck initializing after a deploy. What should I check first?",
    "Worker pod stays Pending because no node has a free nvidia.com/gpu",
    "replica keeps restarting with OOMKilled",
    "p99 latency of the reranker is over the SLO",
    "requests queue up at one deployment",
    "image pull back off on the ray head",
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summary(samples_ms: list[float]) -> dict:
    return {
        "n": len(samples_ms),
        "p50_ms": round(percentile(samples_ms, 50), 2),
        "p95_ms": round(percentile(samples_ms, 95), 2),
        "p99_ms": round(percentile(samples_ms, 99), 2),
        "mean_ms": round(statistics.fmean(samples_ms), 2),
    }


def timed(fn, repeat: int) -> list[float]:
    fn()  # warm-up: first ONNX runs allocate arenas
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def pipeline_config(env: str):
    """Every stage's user_config as the overlay deploys it, so the bench measures what runs."""
    from repoctl.render import render_overlay, serve_config_of
    from support_assistant.config import PipelineConfig

    return PipelineConfig.from_serve_config(serve_config_of(render_overlay(env)))


def bench_stages(bundle_dir: Path, repeat: int, env: str) -> dict:
    from support_assistant.assemble import build_stages
    from support_assistant.schema import GenerationRequest, RerankRequest

    stages = build_stages(bundle_dir, pipeline_config(env))
    candidates_k = stages.config.retriever.candidates
    normalizer, retriever, reranker, generator = stages.normalizer, stages.retriever, stages.reranker, stages.generator
    candidates = {q: retriever.search(q.lower(), candidates_k) for q in QUESTIONS}
    q0 = QUESTIONS[0]
    top3 = reranker.rerank(RerankRequest(q0, candidates[q0], 3)).passages
    results = {
        "normalizer": summary(timed(lambda: normalizer.normalize(q0), repeat)),
        f"retriever_top{candidates_k}": summary(timed(lambda: retriever.search(q0.lower(), candidates_k), repeat)),
        "generator_extractive_top3": summary(timed(lambda: generator.answer_many([GenerationRequest(q0, top3)]),
                                                   repeat)),
    }
    for batch in (1, 4):
        requests = [RerankRequest(q, candidates[q], 3) for q in QUESTIONS[:batch]]
        samples = timed(lambda requests=requests: reranker.rerank_many(requests), max(3, repeat // batch))
        results[f"reranker_{candidates_k}_candidates_batch{batch}"] = {
            **summary(samples), "per_request_ms": round(statistics.fmean(samples) / batch, 2)}
    results["provider"] = reranker.provider
    return results


def bench_serve(bundle_dir: Path, env: str, requests: int, concurrency: int, port: int) -> dict:
    from repoctl.local_run import deploy, local_serve_config, logical_cpus_needed, start_ray
    from repoctl.render import render_overlay, serve_config_of

    config = local_serve_config(serve_config_of(render_overlay(env)), bundle_dir, port)
    import ray
    from ray import serve

    start_ray(logical_cpus_needed(config))
    try:
        deploy(config)
        url = f"http://127.0.0.1:{port}/v1/answer"

        def one(i: int) -> tuple[float, int]:
            body = json.dumps({"question": QUESTIONS[i % len(QUESTIONS)], "top_k": 3}).encode()
            request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            start = time.perf_counter()
            try:
                with urllib.request.urlopen(request, timeout=120) as response:
                    response.read()
                    status = response.status
            except urllib.error.HTTPError as error:
                status = error.code
            return (time.perf_counter() - start) * 1000, status

        for i in range(concurrency):  # warm every replica's sessions
            one(i)
        lock, latencies, statuses = threading.Lock(), [], []
        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            for latency, status in pool.map(one, range(requests)):
                with lock:
                    latencies.append(latency)
                    statuses.append(status)
        elapsed = time.perf_counter() - started
        return {
            "env": env,
            "concurrency": concurrency,
            **summary(latencies),
            "throughput_rps": round(requests / elapsed, 2),
            "non_200": sum(1 for s in statuses if s != 200),
        }
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / ".cache" / "bundle")
    parser.add_argument("--only", choices=("stages", "serve"))
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--env", default="dev")
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--port", type=int, default=8010)
    parser.add_argument("--out", type=Path, default=ROOT / ".cache" / "bench" / "latest.json")
    args = parser.parse_args()
    if not (args.bundle / "manifest.json").is_file():
        print(f"{args.bundle}: no model bundle; run `make bundle`", file=sys.stderr)
        return 2
    manifest = json.loads((args.bundle / "manifest.json").read_text())
    report: dict = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "models": {role: f"{m['name']}@{m['revision']}" for role, m in manifest["models"].items()},
        "bundle_version": manifest["bundle_version"],
    }
    if args.only in (None, "stages"):
        report["stages"] = bench_stages(args.bundle, args.repeat, args.env)
    if args.only in (None, "serve"):
        report["serve"] = bench_serve(args.bundle, args.env, args.requests, args.concurrency, args.port)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
