"""Export pinned Hugging Face models to ONNX with Optimum, for production bundles.

Optimum (with torch and transformers) is heavy and needs network access to the Hub, so it is
imported only when an export actually runs; without it the export fails with a clear error.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from support_assistant.runtime.decoder import GENERATION_CONFIG
from support_assistant.runtime.encoder import ENCODER_CONFIG, RERANKER_KINDS

MODEL_KINDS = (*RERANKER_KINDS, "decoder")
ROLES = ("reranker", "generator")
SOURCES = ("huggingface", "pypi")
OPTIMUM_TASKS = {
    "decoder": "text-generation-with-past",
    "cross-encoder": "text-classification",
    "bi-encoder": "feature-extraction",
}
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
# Options a models.yaml entry may carry besides the identity fields.
_OPTION_KEYS = {"max_length", "max_context", "chat_template", "default_system", "package",
                # the local generator's (bundler/local_generator.py)
                "weights", "gguf_sha256"}
# optimum 2.x ships the ONNX exporter (optimum.exporters.onnx) in the separate optimum-onnx package.
OPTIMUM_HINT = ("production bundles need `pip install -r images/requirements-export.txt` (optimum, optimum-onnx, "
                "torch, transformers) and network access to huggingface.co")


class ExportError(RuntimeError):
    pass


@dataclass(frozen=True)
class PinnedModel:
    role: str
    name: str
    kind: str
    source: str
    revision: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def manifest_entry(self) -> dict[str, str]:
        return {"name": self.name, "revision": self.revision, "kind": self.kind, "source": self.source}


def load_models_file(path: str | Path) -> dict[str, dict[str, PinnedModel]]:
    """Parse and validate models.yaml into {profile: {role: PinnedModel}}.

    Errors name the file and the offending field, since this is what an operator edits.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: models file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ExportError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("profiles"), dict):
        raise ExportError(f"{path}: missing mapping 'profiles'")
    result: dict[str, dict[str, PinnedModel]] = {}
    for profile, roles in data["profiles"].items():
        if not isinstance(roles, dict):
            raise ExportError(f"{path}: profiles.{profile} must be a mapping of role -> model")
        result[profile] = {}
        for role, entry in roles.items():
            where = f"{path}: profiles.{profile}.{role}"
            if role not in ROLES:
                raise ExportError(f"{where}: unknown role (expected one of {', '.join(ROLES)})")
            if not isinstance(entry, dict):
                raise ExportError(f"{where}: must be a mapping")
            for key in ("name", "kind", "source", "revision"):
                if not isinstance(entry.get(key), str) or not entry[key]:
                    raise ExportError(f"{where}.{key}: missing or not a string")
            unknown = set(entry) - {"name", "kind", "source", "revision"} - _OPTION_KEYS
            if unknown:
                raise ExportError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
            kind, source, revision = entry["kind"], entry["source"], entry["revision"]
            if kind not in MODEL_KINDS:
                raise ExportError(f"{where}.kind: {kind!r} is not one of {', '.join(MODEL_KINDS)}")
            if (role == "generator") != (kind == "decoder"):
                raise ExportError(f"{where}.kind: {kind!r} does not fit role {role!r}")
            if source not in SOURCES:
                raise ExportError(f"{where}.source: {source!r} is not one of {', '.join(SOURCES)}")
            if source == "huggingface" and not _SHA_RE.match(revision):
                raise ExportError(f"{where}.revision: {revision!r} is not a full 40-hex commit sha "
                                  "(branches and tags move; pin the commit)")
            options = {k: v for k, v in entry.items() if k in _OPTION_KEYS}
            result[profile][role] = PinnedModel(role=role, name=entry["name"], kind=kind, source=source,
                                                revision=revision, options=options)
    return result


def main_export_kwargs(model: PinnedModel, output_dir: str | Path) -> dict[str, Any]:
    """Arguments for `optimum.exporters.onnx.main_export` for a pinned model."""
    if model.source != "huggingface":
        raise ExportError(f"{model.name}: only huggingface models are exported with Optimum (source {model.source!r})")
    if not _SHA_RE.match(model.revision):
        raise ExportError(f"{model.name}: revision {model.revision!r} is not a full 40-hex commit sha")
    return {
        "model_name_or_path": model.name,
        "output": Path(output_dir),
        "task": OPTIMUM_TASKS[model.kind],
        "revision": model.revision,
        "library_name": "transformers",
        "device": "cpu",
        "trust_remote_code": False,
    }


def _import_main_export() -> Callable[..., Any]:
    try:
        from optimum.exporters.onnx import main_export
    except ImportError as exc:
        raise ExportError(f"optimum is not available ({exc}); {OPTIMUM_HINT}") from None
    return main_export


def encoder_config_from_hf(model: PinnedModel, hf_config: Mapping[str, Any]) -> dict[str, Any]:
    labels = int(hf_config.get("num_labels", len(hf_config.get("id2label", {})) or 1))
    if model.kind == "cross-encoder" and labels != 1:
        raise ExportError(f"{model.name}: a cross-encoder reranker needs exactly one output logit, "
                          f"the model has {labels}")
    max_len = int(model.options.get("max_length", min(int(hf_config.get("max_position_embeddings", 512)), 512)))
    return {**model.manifest_entry(), "max_length": max_len, "hidden_size": hf_config.get("hidden_size"),
            "pad_token_id": int(hf_config.get("pad_token_id") or 0)}


def generation_config_from_hf(model: PinnedModel, hf_config: Mapping[str, Any],
                              hf_generation: Mapping[str, Any]) -> dict[str, Any]:
    """generation.json for `decoder.Decoder` from the model's config.json and generation_config.json."""
    def first(*keys: str) -> Any:
        for source in (hf_generation, hf_config):
            for key in keys:
                if source.get(key) is not None:
                    return source[key]
        return None

    eos = first("eos_token_id")
    if eos is None:
        raise ExportError(f"{model.name}: no eos_token_id in config.json or generation_config.json")
    heads = int(hf_config["num_attention_heads"])
    max_positions = hf_config.get("max_position_embeddings")
    max_context = model.options.get("max_context", max_positions)
    if max_positions and max_context and int(max_context) > int(max_positions):
        raise ExportError(f"{model.name}: max_context {max_context} exceeds the model's {max_positions} positions")
    return {
        **model.manifest_entry(),
        "eos_token_id": eos if isinstance(eos, list) else [eos],
        "pad_token_id": first("pad_token_id"),
        "bos_token_id": first("bos_token_id"),
        "num_layers": int(hf_config["num_hidden_layers"]),
        "num_kv_heads": int(hf_config.get("num_key_value_heads") or heads),
        "head_dim": int(hf_config.get("head_dim") or hf_config["hidden_size"] // heads),
        "vocab_size": hf_config.get("vocab_size"),
        "max_context": int(max_context) if max_context else None,
        # Chat prompts already carry their special tokens in the template text.
        "add_special_tokens": False,
        "chat_template": model.options.get("chat_template"),
        "default_system": model.options.get("default_system", ""),
    }


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def export_hf_model(model: PinnedModel, out_dir: str | Path, *,
                    main_export: Callable[..., Any] | None = None) -> dict[str, str]:
    """Export `model` into `out_dir` as model.onnx (+ external data), tokenizer.json and
    encoder.json / generation.json. Returns the manifest entry.

    `main_export` defaults to Optimum's; it is injectable so the file handling can be tested
    without Optimum.
    """
    kwargs = main_export_kwargs(model, out_dir)  # validates before the expensive import
    export = main_export or _import_main_export()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hf-export-") as tmp:
        raw = Path(tmp)
        kwargs["output"] = raw
        try:
            export(**kwargs)
        except ExportError:
            raise
        except Exception as exc:  # network, auth, unknown revision, conversion: all end the build
            raise ExportError(f"exporting {model.name}@{model.revision} ({kwargs['task']}) failed: "
                              f"{type(exc).__name__}: {exc}") from exc
        # Recent Optimum writes model.onnx; older versions merge decoders into decoder_model_merged.onnx.
        candidates = [raw / "model.onnx", raw / "decoder_model_merged.onnx"]
        onnx_file = next((c for c in candidates if c.is_file()), None)
        if onnx_file is None:
            found = sorted(p.name for p in raw.iterdir())
            raise ExportError(f"exporting {model.name}: no model.onnx in the Optimum output ({', '.join(found)})")
        if not (raw / "tokenizer.json").is_file():
            raise ExportError(f"exporting {model.name}: Optimum wrote no tokenizer.json (a fast tokenizer is required)")
        shutil.copyfile(onnx_file, out / "model.onnx")
        # External weights keep the name the graph refers to, whatever the graph file is renamed to.
        for data in sorted(raw.glob("*.onnx_data")) + sorted(raw.glob("*.onnx.data")):
            shutil.copyfile(data, out / data.name)
        shutil.copyfile(raw / "tokenizer.json", out / "tokenizer.json")
        hf_config = _read_json(raw / "config.json")
        if model.kind == "decoder":
            config = generation_config_from_hf(model, hf_config, _read_json(raw / "generation_config.json"))
            (out / GENERATION_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        else:
            config = encoder_config_from_hf(model, hf_config)
            (out / ENCODER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return model.manifest_entry()
