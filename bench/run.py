"""Benchmarks (not tests): they measure and print; nothing here passes or fails.

    make bench                                          # every section, on the local bundle
    .venv/bin/python bench/run.py pipeline dataplane    # some sections
    .venv/bin/python bench/run.py reranker --seconds 2

Sections (each prints a Markdown table and writes .cache/bench/<section>.json with the machine,
versions, models, provider, git commit and the exact command):
  pipeline   end to end over HTTP at concurrency 1/8/32/64: Serve (dev overlay, as `make run`) vs a
             single-process Starlette/uvicorn baseline running the same stage classes; both without
             the bundle's vector cache at 1/8
  floor      the pipeline's shape with no work in it (bench/floor.py): Serve's proxy, ingress and
             three do-nothing hops vs uvicorn alone, at 1/32: what Serve costs before any stage runs
  dataplane  the overlays' Serve settings vs Ray's defaults, HAProxy ingress and direct ingress, at 1/32
             (admission limits opened to 64 so that every client is served)
  batching   the Reranker deployment alone at 32 clients: its @serve.batch vs max_batch_size=1
  reranker   encoder pairs/s vs batch and sequence length, fp32 vs int8 (dynamic quantization),
             threads 1/2, GFLOP/s against a MatMul peak measured in the same run; int8 ranking agreement
  generator  SmolLM2-135M-Instruct (local bundle): TTFT and decode tokens/s at batch 1/4/8, fp32 vs 4-bit
             graphs vs llama.cpp on the same GGUF (bench/llm.py), greedy agreement, memory per replica;
             and tokens/s with and without KV cache on the tests' decoder layout
  burst      the dev config as `make run` deploys it (language model, 128 tokens): 128 requests of the
             README question from 64 clients at once, how each ended (answer mode, 503, 504) and when
  quality    recall@1/@3 and MRR on bench/questions.yaml: BM25 alone, + fp32 rerank, + int8 rerank

Servers listen on 127.0.0.1 only and are started and stopped by this script; load is closed-loop,
bounded in time (--warmup + --seconds per level).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import OUT_DIR, ROOT, print_table, provenance, write_report
from questions import load_questions

SECTIONS = ("pipeline", "floor", "dataplane", "batching", "reranker", "generator", "generation", "burst",
            "quality")
LEVELS = [1, 8, 32, 64]
SHORT_LEVELS = [1, 32]
# Candidate settings measured against the committed dev config in the same run (bench only; what
# wins is then written into base/support-assistant/serve-config.yaml with its figure).
EXPERIMENTS: dict[str, dict[str, Any]] = {
    # The batch waits before they went to 2 ms (now only requests with company in the replica wait;
    # before BatchWait a lone request waited 10 + 20 ms too).
    "batch waits 10/20 ms (previous)": {"Reranker": {"user_config": {"batch_wait_timeout_s": 0.01}},
                                        "Generator": {"user_config": {"batch_wait_timeout_s": 0.02}}},
    # No wait even with company: a batch is whatever has queued when its first request arrives.
    "batch waits 0": {"Reranker": {"user_config": {"batch_wait_timeout_s": 0.0}},
                      "Generator": {"user_config": {"batch_wait_timeout_s": 0.0}}},
    # What the admission limits cost at 32-64 clients: the same config with room for every client.
    # (The proxy gate's limit is an environment variable, 32 in the base RayService; the sections
    # run this at 1 and 32 clients only, which it lets through.)
    "admission for 64": {"Ingress": {"user_config": {"max_in_flight": 64}},
                         "Reranker": {"max_queued_requests": 64}, "Generator": {"max_queued_requests": 64}},
}
# The data-plane sections (pipeline, dataplane) measure the pipeline with the extractive generator,
# as their figures always have: with the language model a request is seconds of decoding on 2 cores
# and what Serve's hops cost disappears in it. The generation section measures the model end to end.
EXTRACTIVE: dict[str, Any] = {"Generator": {"user_config": {"use_language_model": False}}}
# Issue 20's end-to-end case: answers of at most 64 tokens.
GENERATION_OVERRIDES: dict[str, Any] = {"Generator": {"user_config": {"max_new_tokens": 64}}}
GENERATION_LEVELS = [1, 8]
PIPELINE_COLUMNS = ["server", "concurrency", "requests_per_s", "p50_ms", "p99_ms", "ok", "errors"]


def _questions() -> list[str]:
    return [q for q, _ in load_questions()]


def pipeline(args: argparse.Namespace) -> dict[str, Any]:
    from load import sweep
    from servers import child_server, merge_overrides, nocache_bundle

    rows: list[dict[str, Any]] = []
    runs = [("single-process baseline", "baseline", args.bundle, LEVELS, {}),
            ("Ray Serve, dev config", "serve", args.bundle, LEVELS, {}),
            *[(f"Ray Serve, dev config + {name}", "serve", args.bundle, SHORT_LEVELS, overrides)
              for name, overrides in EXPERIMENTS.items()],
            # Model work that dominates the request (every candidate embedded per request, the shape
            # of a cross-encoder's cost): what Serve's hops cost next to it.
            ("single-process baseline, no vector cache", "baseline", nocache_bundle(args.bundle), [1, 8], {}),
            ("Ray Serve, dev config, no vector cache", "serve", nocache_bundle(args.bundle), [1, 8], {})]
    for label, kind, bundle, levels, overrides in runs:
        with child_server(kind, port=args.port, bundle=bundle, env=args.env,
                          overrides=merge_overrides(EXTRACTIVE, overrides)):
            for row in sweep(args.port, _questions(), levels, args.warmup, args.seconds):
                rows.append({"server": label, **row})
        print_table(f"pipeline: {label}", [r for r in rows if r["server"] == label], PIPELINE_COLUMNS)
        print_table(f"pipeline: {label}, p50 of each response's own timings_ms",
                    [{"concurrency": r["concurrency"], **r["stage_p50_ms"]} for r in rows if r["server"] == label])
    comparison = []
    for bundle_kind, suffix in (("with vector cache", ""), ("no vector cache", ", no vector cache")):
        baseline = {r["concurrency"]: r for r in rows if r["server"] == f"single-process baseline{suffix}"}
        serve = {r["concurrency"]: r for r in rows if r["server"] == f"Ray Serve, dev config{suffix}"}
        comparison += [{
            "bundle": bundle_kind,
            "concurrency": c,
            "serve_added_p50_ms": round(serve[c]["p50_ms"] - baseline[c]["p50_ms"], 2),
            "serve_over_baseline_throughput": round(serve[c]["requests_per_s"] / baseline[c]["requests_per_s"], 2)
            if baseline[c]["requests_per_s"] else None,
        } for c in LEVELS if c in serve and c in baseline]
    print_table("pipeline: Serve against the baseline", comparison)
    return {"rows": rows, "comparison": comparison, "env": args.env, "warmup_s": args.warmup,
            "seconds_per_level": args.seconds}


def floor(args: argparse.Namespace) -> dict[str, Any]:
    """Serve's own cost here: the pipeline's shape with no work in it (bench/floor.py), against the
    same in one uvicorn process; the pipeline section's figures minus these are the stages' share."""
    from load import sweep
    from servers import child_server

    rows: list[dict[str, Any]] = []
    runs = [("uvicorn, one process, no work", "floor_baseline", 0),
            ("Serve proxy + ingress replica, no hops", "floor_serve", 0),
            ("Serve proxy + ingress + 3 hops (the pipeline's shape)", "floor_serve", 3)]
    for label, kind, hops in runs:
        with child_server(kind, port=args.port, bundle=args.bundle, env=args.env, hops=hops):
            for row in sweep(args.port, _questions(), SHORT_LEVELS, args.warmup, args.seconds):
                rows.append({"server": label, "hops": hops, **row})
    print_table("floor: the pipeline's shape with no work in it", rows, PIPELINE_COLUMNS)
    uvicorn = {r["concurrency"]: r for r in rows if r["server"] == runs[0][0]}
    comparison = []
    for row in rows:
        base = uvicorn[row["concurrency"]]
        if row is base or not base["requests_per_s"]:
            continue
        comparison.append({"server": row["server"], "concurrency": row["concurrency"],
                           "added_p50_ms": round(row["p50_ms"] - base["p50_ms"], 2),
                           "over_uvicorn_throughput": round(row["requests_per_s"] / base["requests_per_s"], 2)})
    print_table("floor: Serve against one uvicorn process, both doing nothing", comparison)
    return {"rows": rows, "comparison": comparison, "env": args.env, "warmup_s": args.warmup,
            "seconds_per_level": args.seconds}


def dataplane(args: argparse.Namespace) -> dict[str, Any]:
    from load import sweep
    from servers import VARIANTS, child_server, merge_overrides

    rows: list[dict[str, Any]] = []
    for variant in VARIANTS:
        try:
            # With room for every client (EXPERIMENTS), so that concurrency 32 compares the data
            # planes' throughput rather than how fast each answers the admission 503s.
            with child_server("serve", port=args.port, bundle=args.bundle, env=args.env, variant=variant,
                              overrides=merge_overrides(EXTRACTIVE, EXPERIMENTS["admission for 64"])):
                for row in sweep(args.port, _questions(), SHORT_LEVELS, args.warmup, args.seconds):
                    rows.append({"variant": variant, "env_vars": VARIANTS[variant], **row})
        except (RuntimeError, TimeoutError) as exc:
            rows.append({"variant": variant, "env_vars": VARIANTS[variant], "failed": str(exc)})
    print_table("dataplane (dev config + admission for 64)", rows,
                ["variant", "concurrency", "requests_per_s", "p50_ms", "p99_ms", "errors", "failed"])
    return {"rows": rows, "env": args.env}


def batching(args: argparse.Namespace) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    stage_rows: list[dict[str, Any]] = []
    for label, bundle in (("vector cache (question only)", args.bundle),):
        command = [sys.executable, str(ROOT / "bench" / "run.py"), "_batching", "--bundle", str(bundle),
                   "--env", args.env, "--warmup", str(args.warmup), "--seconds", str(args.seconds)]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
        printed = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        in_process = [line for line in printed if line.get("in_process")]
        stage_rows.extend({"bundle": label, **line} for line in in_process)
        lines = [line for line in printed if not line.get("in_process")]
        if done.returncode != 0 or not lines:
            rows.append({"bundle": label, "failed": done.stderr.strip().splitlines()[-1:] or done.returncode})
            continue
        for line in lines:
            rows.append({"bundle": label, **line})
        unbatched = lines[-1]["requests_per_s"]
        if lines[-1]["max_batch_size"] == 1 and unbatched:
            for line in lines[:-1]:
                rows.append({"bundle": label, "max_batch_size": line["max_batch_size"],
                             "batch_wait_timeout_s": line["batch_wait_timeout_s"],
                             "over_unbatched": round(line["requests_per_s"] / unbatched, 2)})
    print_table("batching: Reranker deployment alone, 32 clients", rows,
                ["bundle", "max_batch_size", "batch_wait_timeout_s", "requests_per_s", "p50_ms", "p99_ms",
                 "over_unbatched", "failed"])
    print_table("batching: the Reranker stage alone in one process (no Serve), the replica's threads", stage_rows,
                ["bundle", "max_batch_size", "threads", "ms_per_request", "requests_per_s"])
    return {"rows": rows, "stage_in_process": stage_rows}


def reranker(args: argparse.Namespace) -> dict[str, Any]:
    import kernels
    from support_assistant.bundler.minilm_export import minilm_package_dir
    from support_assistant.runtime.bundle import load_bundle
    from support_assistant.runtime.encoder import BiEncoder

    arch = json.loads((minilm_package_dir() / "config.json").read_text())
    bundle = load_bundle(args.bundle, verify=False)
    fp32 = bundle.reranker_dir / "model.onnx"
    int8_dirs = {v: kernels.quantize_int8(bundle.reranker_dir, v) for v in kernels.INT8_VARIANTS}
    models = {"fp32": fp32, **{v: d / "model.onnx" for v, d in int8_dirs.items()}}
    peaks = {t: kernels.matmul_peak(t, min_seconds=args.seconds / 4) for t in (1, 2)}
    print_table("MatMul peak (fp32, 1024x1024x1024)", list(peaks.values()))
    rows: list[dict[str, Any]] = []

    def measure(precision: str, threads: int, batch: int, seq_len: int) -> None:
        row = kernels.encoder_throughput(models[precision], threads, batch, seq_len,
                                         kernels.encoder_flops(arch, seq_len), args.seconds / 8)
        row = {"precision": precision, **row}
        if precision == "fp32":
            row["fraction_of_matmul_peak"] = round(row["gflops"] / peaks[threads]["gflops"], 2)
        rows.append(row)

    for precision in ("fp32", "int8-s8"):
        for batch in (1, 2, 4, 8, 16, 32, 64):
            measure(precision, 2, batch, 128)
        for seq_len in (32, 64, 256):
            measure(precision, 2, 8, seq_len)
        measure(precision, 1, 8, 128)
    measure("int8-u8", 2, 8, 128)
    # Issue 12's candidate: at least 1.8x fp32 with top-3 overlap >= 0.95 (agreement table below).
    for threads in (2, 1):
        measure("int8-s8-matmul-asym", threads, 8, 128)
    print_table("reranker encoder (MiniLM-L6; a cross-encoder of the same architecture costs the same per pair)",
                rows, ["precision", "threads", "batch", "seq_len", "pairs_per_s", "ms_per_batch", "gflops",
                       "fraction_of_matmul_peak"])
    speedup = []
    for r in rows:
        if r["precision"] != "fp32":
            base = next(b for b in rows if b["precision"] == "fp32" and all(b[k] == r[k]
                                                                            for k in ("threads", "batch", "seq_len")))
            speedup.append({"precision": r["precision"], "threads": r["threads"], "batch": r["batch"],
                            "seq_len": r["seq_len"],
                            "int8_over_fp32": round(r["pairs_per_s"] / base["pairs_per_s"], 2)})
    print_table("int8 / fp32 pairs per second", speedup)
    # Session options at the shapes the local Reranker sees (one short question) and a batch of pairs.
    options = [kernels.encoder_latency_with(fp32, 2, batch, seq_len, level=level, spinning=spinning,
                                            min_seconds=args.seconds / 8)
               for batch, seq_len in ((1, 16), (8, 16), (8, 128))
               for level, spinning in [*((lv, False) for lv in kernels.GRAPH_LEVELS), ("ORT_ENABLE_ALL", True)]]
    print_table("fp32 encoder, 2 threads: graph optimisation level and thread spinning (ms per batch)", options)
    passages = _corpus_texts(bundle.index_dir)
    reference = BiEncoder(bundle.reranker_dir, threads=2)
    agreement = [{"precision": v, **kernels.ranking_agreement(reference, BiEncoder(d, threads=2), _questions(),
                                                               passages)} for v, d in int8_dirs.items()]
    print_table("int8 ranking agreement with fp32 (each question ranks the whole corpus)", agreement)
    return {"architecture": {k: arch[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                  "num_attention_heads")},
            "matmul_peak": list(peaks.values()), "rows": rows, "int8_speedup": speedup, "agreement": agreement,
            "session_options": options,
            "quantization": {v: kernels.quantization_settings(v) for v in kernels.INT8_VARIANTS}}


def _corpus_texts(index_dir: Path) -> list[str]:
    from support_assistant.schema import Passage
    from support_assistant.stages.reranker import passage_text
    from support_assistant.stages.retriever import CHUNKS_FILE

    with (index_dir / CHUNKS_FILE).open(encoding="utf-8") as fh:
        return [passage_text(Passage(**json.loads(line))) for line in fh]


def generator(args: argparse.Namespace) -> dict[str, Any]:
    import kernels
    import llm

    # The local bundle's SmolLM2-135M-Instruct: fp32 and 4-bit graphs against llama.cpp on the same GGUF.
    threads, repeats = 2, 3
    speed_rows, speeds = [], {}
    for name, path in llm.graphs().items():
        # Replicas run with spinning off (runtime/session.py); llama.cpp's threads spin, so the
        # shipped graph is measured both ways.
        for spinning in (False, True) if name.startswith("q4 (shipped") else (False,):
            rows = llm.onnx_speed(path, threads, spinning, repeats)
            speeds[(name, spinning)] = rows
            for r in rows:
                speed_rows.append({"engine": f"ONNX Runtime {name}", "spinning": spinning, **r})
    cpp = llm.llama_cpp_speed(threads, repeats)
    speed_rows.append({"engine": f"llama.cpp {cpp.get('version', '')} (same GGUF)", "spinning": True, "batch": 1,
                       "ttft_ms_400": cpp.get("ttft_ms_400"), "decode_tokens_per_s": cpp.get("decode_tokens_per_s")})
    print_table(f"generator: SmolLM2-135M-Instruct, {threads} threads, TTFT for a {llm.TTFT_PROMPT_TOKENS}-token "
                f"prompt, decode of {llm.NEW_TOKENS} tokens after {llm.DECODE_PROMPT_TOKENS} "
                "(aggregate over the batch)", speed_rows)
    if "error" in cpp:
        print(f"llama.cpp: {cpp['error']}")
    scaling = []
    for (name, spinning), rows in speeds.items():
        one = rows[0]["decode_tokens_per_s"]
        scaling.append({"graph": name, "spinning": spinning, "batch1_tokens_per_s": one,
                        "batch8_tokens_per_s": rows[-1]["decode_tokens_per_s"],
                        "batch8_over_batch1": round(rows[-1]["decode_tokens_per_s"] / one, 2),
                        "batch1_over_llama_cpp": round(one / cpp["decode_tokens_per_s"], 2)
                        if cpp.get("decode_tokens_per_s") else None})
    print_table("generator: batch scaling and ratio to llama.cpp", scaling)
    questions = [q for q, _ in load_questions()]
    graphs = llm.graphs()
    fp32 = graphs.pop("fp32")
    agreement = [{"graph": name, **llm.agreement(fp32, path, questions, threads)} for name, path in graphs.items()]
    print_table(f"generator: greedy agreement with fp32, teacher-forced, {llm.AGREEMENT_STEPS} steps x "
                f"{len(questions)} labelled questions", agreement)
    memory = [{"weights": w, **llm.memory_per_replica(llm.generator_dir(w))} for w in ("fp32", "q4")]
    print_table("generator: memory per replica (Decoder alone, batch 8 x (400 + 64) tokens)", memory)

    # The tests' decoder layout: what the KV cache saves, independent of weights.
    decoder_dir = kernels.build_test_decoder_dir()
    rows = []
    for batch in (1, 4, 8):
        for use_cache in (True, False):
            rows.append(kernels.decoder_throughput(decoder_dir, batch, 128, 64, use_cache, args.seconds / 4))
    print_table("generator: test decoder layout, 128-token prompts, 64 new tokens", rows)
    ratios = []
    for batch in (1, 4, 8):
        cached = next(r for r in rows if r["batch"] == batch and r["kv_cache"])
        plain = next(r for r in rows if r["batch"] == batch and not r["kv_cache"])
        ratios.append({"batch": batch, "kv_cache_speedup": round(cached["tokens_per_s"] / plain["tokens_per_s"], 2)})
    print_table("generator: KV cache speed-up", ratios)
    return {"smollm2": {"speed": speed_rows, "scaling": scaling, "llama_cpp": cpp, "agreement": agreement,
                        "memory": memory, "threads": threads},
            "rows": rows, "kv_cache_speedup": ratios, "decoder": "tests/testmodels/decoder.py layout"}


def generation(args: argparse.Namespace) -> dict[str, Any]:
    """The language model end to end: the dev config on a local Ray as `make run` deploys it, with
    answers capped at 64 tokens, over HTTP at 1 and 8 clients and streamed; then the quality of what
    it writes on the labelled questions next to the extractive generator's (bench/generation.py)."""
    from generation import answer_quality, first_streamed_token
    from load import sweep
    from servers import child_server

    # A request is seconds of decoding here: the window must hold enough of them to have a median.
    warmup, seconds = max(args.warmup, 10.0), max(args.seconds, 40.0)
    with child_server("serve", port=args.port, bundle=args.bundle, env=args.env, overrides=GENERATION_OVERRIDES):
        rows = sweep(args.port, _questions(), GENERATION_LEVELS, warmup, seconds)
        streamed = first_streamed_token(args.port, _questions(), requests=16)
    print_table("generation: the pipeline over HTTP, dev config, language model, max_new_tokens 64", rows,
                [*PIPELINE_COLUMNS, "mean_tokens"])
    print_table("generation: streamed, one request at a time", [streamed])
    quality_rows = answer_quality(args.bundle)
    print_table("generation: answers to the labelled questions, same passages, base config", quality_rows)
    return {"rows": rows, "streamed": streamed, "quality": quality_rows, "env": args.env,
            "overrides": GENERATION_OVERRIDES, "warmup_s": warmup, "seconds_per_level": seconds}


def burst(args: argparse.Namespace) -> dict[str, Any]:
    """More than the Generator's batch can write in a stage's budget, at once: the requests the ingress
    admits get an answer (the model's, or the extractive fallback saying why), the rest a 503."""
    from generation import burst as send_burst
    from repoctl.local_run import EXAMPLE_QUESTION
    from servers import child_server

    with child_server("serve", port=args.port, bundle=args.bundle, env=args.env):
        row = send_burst(args.port, EXAMPLE_QUESTION, clients=64, requests=128)
    print_table("burst: 128 requests from 64 clients at once, dev config as `make run` (language model)",
                [{**{k: v for k, v in row.items() if k != "outcomes"}, **row["outcomes"]}])
    return {"row": row, "env": args.env, "question": EXAMPLE_QUESTION}


def quality(args: argparse.Namespace) -> dict[str, Any]:
    import kernels
    from quality import evaluate
    from servers import pipeline_config
    from support_assistant.assemble import load_vectors
    from support_assistant.runtime.bundle import load_bundle
    from support_assistant.runtime.encoder import BiEncoder
    from support_assistant.stages.normalizer import Normalizer
    from support_assistant.stages.reranker import RerankStage
    from support_assistant.stages.retriever import Retriever

    config = pipeline_config(args.env)
    bundle = load_bundle(args.bundle)
    labelled = load_questions()
    normalizer, retriever = Normalizer(config.ingress.normalizer.max_chars), Retriever(bundle.index_dir)
    normalized = [normalizer.normalize(q) for q, _ in labelled]
    shortlist = [retriever.search(n.search_text, config.retriever.candidates) for n in normalized]
    encoder = BiEncoder(bundle.reranker_dir)
    rerankers = {
        "BM25 + rerank fp32 (bundle's cached vectors)": RerankStage(encoder, load_vectors(bundle)),
        "BM25 + rerank fp32 (embedded per request)": RerankStage(encoder),
        **{f"BM25 + rerank {v}": RerankStage(BiEncoder(kernels.quantize_int8(bundle.reranker_dir, v)))
           for v in kernels.INT8_VARIANTS},
    }
    rows = evaluate([(n.text, runbook) for n, (_, runbook) in zip(normalized, labelled, strict=True)],
                    shortlist, rerankers)
    print_table(f"retrieval quality: {len(labelled)} labelled questions, BM25 shortlist of "
                f"{config.retriever.candidates}", rows)
    return {"rows": rows, "candidates": config.retriever.candidates, "questions_file": "bench/questions.yaml"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sections", nargs="*", metavar="SECTION",
                        help=f"any of {', '.join(SECTIONS)} (default: all); names starting with _ are internal")
    parser.add_argument("--bundle", type=Path, default=ROOT / ".cache" / "bundle")
    parser.add_argument("--env", default="dev", help="overlay whose serveConfigV2 is deployed (default dev)")
    parser.add_argument("--port", type=int, default=8010)
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring, per level")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per level / kernel budget")
    parser.add_argument("--variant", default="overlay", help=argparse.SUPPRESS)
    parser.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--hops", type=int, default=0, help=argparse.SUPPRESS)
    return parser


def main() -> int:
    args = _parser().parse_args()
    args.bundle = args.bundle.resolve()
    internal = [s for s in args.sections if s.startswith("_")]
    if internal:
        import servers

        if internal[0] == "_serve":
            return servers.run_serve(args.port, args.bundle, args.env, json.loads(args.overrides))
        if internal[0] == "_baseline":
            return servers.run_baseline(args.port, args.bundle, args.env, json.loads(args.overrides))
        if internal[0] == "_floor_serve":
            return servers.run_floor_serve(args.port, args.bundle, args.env, args.hops)
        if internal[0] == "_floor_baseline":
            return servers.run_floor_baseline(args.port)
        if internal[0] == "_batching":
            return servers.run_batching(args.bundle, args.env, 32, args.warmup, args.seconds)
        print(f"unknown internal command {internal[0]}", file=sys.stderr)
        return 2
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        print(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    if not (args.bundle / "manifest.json").is_file():
        print(f"{args.bundle}: no model bundle; run `make bundle`", file=sys.stderr)
        return 2
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    functions = {"pipeline": pipeline, "floor": floor, "dataplane": dataplane, "batching": batching,
                 "reranker": reranker, "generator": generator, "generation": generation, "burst": burst,
                 "quality": quality}
    for section in args.sections or SECTIONS:
        info = provenance(args.bundle)
        print(f"\n## {section}  (commit {info['git_commit']}, {info['machine']['cpus']} CPUs, "
              f"load {info['machine']['load_average_at_start']})", flush=True)
        write_report(section, {**info, "section": section, "results": functions[section](args)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
