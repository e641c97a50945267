"""Model-level benchmarks without Ray: the reranker's encoder (fp32 vs int8, batch, sequence length,
threads) against the machine's MatMul peak, and the generator's decoder with and without KV cache."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from common import OUT_DIR, ROOT, time_calls
from onnx import TensorProto, helper, numpy_helper

MATMUL_SIZE = 1024


def matmul_peak(threads: int, size: int = MATMUL_SIZE, min_seconds: float = 2.0) -> dict[str, Any]:
    """GFLOP/s of one large fp32 MatMul (size^3 multiply-adds) on ONNX Runtime: the ceiling the
    encoder's GEMMs are compared with, measured in the same run on the same threads."""
    from support_assistant.runtime.session import make_session

    rng = np.random.default_rng(0)
    b = numpy_helper.from_array(rng.standard_normal((size, size)).astype(np.float32), "B")
    graph = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["Y"])], "matmul",
                              [helper.make_tensor_value_info("A", TensorProto.FLOAT, [size, size])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [size, size])], [b])
    # IR version 8 (ONNX 1.10): read by every onnxruntime this repo pins.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = OUT_DIR / f"matmul-{size}.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    session = make_session(path, threads=threads)
    a = rng.standard_normal((size, size)).astype(np.float32)
    samples = time_calls(lambda: session.run(None, {"A": a}), min_seconds=min_seconds, warmup=2)
    best = min(samples)
    return {"threads": threads, "size": size, "gflops": round(2 * size**3 / best / 1e9, 1),
            "ms_per_run": round(best * 1000, 2)}


def encoder_flops(config: dict[str, Any], seq_len: int) -> float:
    """Multiply-add FLOPs of one sequence through a BERT encoder: projections, FFN and attention
    (softmax, layer norms and GELU are < 1 % and left out)."""
    h, i, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    per_layer = 2 * seq_len * (4 * h * h + 2 * h * i) + 2 * 2 * seq_len * seq_len * h
    return float(layers * per_layer)


# onnxruntime.quantization.quantize_dynamic settings compared, all with weights per output channel and
# uint8 activations quantized per run (ORT's fast x86 int8 GEMM is u8 x s8, VNNI where present).
# "drop_value_info" is not a quantize_dynamic argument: see _drop_value_info.
INT8_VARIANTS: dict[str, dict[str, Any]] = {
    # int8 weights, ORT's defaults otherwise (every quantizable op: the MatMuls and the embedding Gathers).
    "int8-s8": {"weight_type": "QInt8"},
    # uint8 weights: closer rankings, but the u8 x u8 GEMM is slower than fp32 here.
    "int8-u8": {"weight_type": "QUInt8"},
    # Issue 12: MatMuls only (embedding tables stay fp32) with asymmetric int8 weights for the ranking
    # agreement, and no value_info so that ORT keeps Add + LayerNormalization (see _drop_value_info).
    "int8-s8-matmul-asym": {"weight_type": "QInt8", "op_types_to_quantize": ["MatMul"],
                            "extra_options": {"WeightSymmetric": False}, "drop_value_info": True},
}


def quantization_settings(variant: str) -> str:
    """The call that made `variant`, as the report prints it."""
    spec = dict(INT8_VARIANTS[variant])
    drop = spec.pop("drop_value_info", False)
    args = ", ".join(f"{k}=QuantType.{v}" if k == "weight_type" else f"{k}={v!r}" for k, v in spec.items())
    return f"quantize_dynamic(per_channel=True, {args})" + (" without value_info" if drop else "")


def _drop_value_info(path: Path) -> None:
    """quantize_dynamic stores the shapes its shape inference found; with them ORT (1.31, CPU) fuses
    each residual Add + LayerNormalization into SkipLayerNormalization, which ran slower here than the
    two ops (48.8 vs 41.0 ms per batch of 8 x 128 with 2 threads). The bundle's fp32 graph has none either."""
    model = onnx.load(path)
    del model.graph.value_info[:]
    onnx.save(model, path)


def quantize_int8(fp32_dir: Path, variant: str = "int8-s8") -> Path:
    """Dynamic quantization, weights per output channel, activations quantized per run. The model
    directory is copied so the bundle's BiEncoder can load it unchanged."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = OUT_DIR / f"minilm-{variant}"
    out.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "encoder.json"):
        shutil.copy2(fp32_dir / name, out / name)
    spec = dict(INT8_VARIANTS[variant])
    drop = spec.pop("drop_value_info", False)
    spec["weight_type"] = getattr(QuantType, spec["weight_type"])
    quantize_dynamic(fp32_dir / "model.onnx", out / "model.onnx", per_channel=True, **spec)
    if drop:
        _drop_value_info(out / "model.onnx")
    return out


def _feed(session: Any, batch: int, seq_len: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seq_len * 1000 + batch)
    feed = {"input_ids": rng.integers(1000, 20000, size=(batch, seq_len), dtype=np.int64),
            "attention_mask": np.ones((batch, seq_len), dtype=np.int64),
            "token_type_ids": np.zeros((batch, seq_len), dtype=np.int64)}
    names = {i.name for i in session.get_inputs()}
    return {k: v for k, v in feed.items() if k in names}


def encoder_throughput(model: Path, threads: int, batch: int, seq_len: int, flops_per_seq: float,
                       min_seconds: float) -> dict[str, Any]:
    from support_assistant.runtime.session import make_session

    session = make_session(model, threads=threads)
    feed = _feed(session, batch, seq_len)
    samples = time_calls(lambda: session.run(None, feed), min_seconds=min_seconds, warmup=1)
    median = float(np.median(samples))
    return {"batch": batch, "seq_len": seq_len, "threads": threads,
            "pairs_per_s": round(batch / median, 1), "ms_per_batch": round(median * 1000, 2),
            "gflops": round(flops_per_seq * batch / median / 1e9, 1)}


# ONNX Runtime session options compared on the encoder (section "session options"): graph
# optimisation level, and whether idle intra-op threads spin (runtime/session.py turns it off).
GRAPH_LEVELS = ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL")


def encoder_latency_with(model: Path, threads: int, batch: int, seq_len: int, *, level: str, spinning: bool,
                         min_seconds: float) -> dict[str, Any]:
    """Median ms per batch with the project's session options except the graph level and spinning."""
    import onnxruntime as ort
    from support_assistant.runtime.session import session_options

    opts = session_options(threads)
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    feed = _feed(session, batch, seq_len)
    samples = time_calls(lambda: session.run(None, feed), min_seconds=min_seconds, warmup=2)
    return {"graph_level": level, "spinning": spinning, "threads": threads, "batch": batch, "seq_len": seq_len,
            "ms_per_batch": round(float(np.median(samples)) * 1000, 2)}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho (ties are measure-zero for float cosine scores)."""
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def ranking_agreement(fp32: Any, other: Any, questions: list[str], passages: list[str]) -> dict[str, Any]:
    """Rank the whole corpus for each question with both encoders: top-3 overlap and Spearman."""
    corpus_a, corpus_b = fp32.embed(passages), other.embed(passages)
    q_a, q_b = fp32.embed(questions), other.embed(questions)
    overlaps, rhos = [], []
    for i in range(len(questions)):
        sa, sb = corpus_a @ q_a[i], corpus_b @ q_b[i]
        top_a, top_b = set(np.argsort(-sa)[:3]), set(np.argsort(-sb)[:3])
        overlaps.append(len(top_a & top_b) / 3)
        rhos.append(spearman(sa, sb))
    return {"questions": len(questions), "passages": len(passages),
            "top3_overlap_mean": round(float(np.mean(overlaps)), 3),
            "spearman_mean": round(float(np.mean(rhos)), 4), "spearman_min": round(float(np.min(rhos)), 4)}


def decoder_throughput(decoder_dir: Path, batch: int, prompt_tokens: int, new_tokens: int, use_cache: bool,
                       min_seconds: float) -> dict[str, Any]:
    from support_assistant.runtime.decoder import Decoder

    decoder = Decoder(decoder_dir)
    text = ("The reranker replica restarted after an out of memory kill; check the worker group limits. " * 64)
    prompts = [decoder.truncate_to_tokens(f"{b} {text}", prompt_tokens) for b in range(batch)]
    run = decoder.generate if use_cache else decoder.generate_without_cache
    generated: list[int] = []

    def once() -> None:
        generated.append(sum(g.tokens for g in run(prompts, max_new_tokens=new_tokens)))

    samples = time_calls(once, min_seconds=min_seconds, warmup=1)
    tokens = float(np.mean(generated[1:]))
    median = float(np.median(samples))
    return {"kv_cache": use_cache, "batch": batch, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
            "tokens_generated": round(tokens, 1), "tokens_per_s": round(tokens / median, 1),
            "ms_per_call": round(median * 1000, 1)}


def build_test_decoder_dir() -> Path:
    """The tests' decoder layout (tests/testmodels/decoder.py); its cost does not depend on weights."""
    sys.path.insert(0, str(ROOT / "tests"))
    from testmodels.decoder import build_test_decoder

    out = OUT_DIR / "test-decoder"
    if not (out / "model.onnx").is_file():
        build_test_decoder(out)
    return out
