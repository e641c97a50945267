"""Models and bundles for the app tests, built once per session (converting MiniLM takes ~2 s)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from support_assistant.bundler.bundle import build_bundle
from support_assistant.bundler.minilm_export import convert_minilm, minilm_package_dir
from support_assistant.config import PipelineConfig
from support_assistant.runtime.bundle import Bundle
from testmodels.decoder import build_test_decoder

ROOT = Path(__file__).resolve().parents[2]
RUNBOOKS = ROOT / "docs" / "runbooks"
BASE_SERVE_CONFIG = ROOT / "base" / "support-assistant" / "serve-config.yaml"


@pytest.fixture(scope="session")
def local_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """What `make bundle` builds: real all-MiniLM-L6-v2, SmolLM2-135M-Instruct (4-bit ONNX decoder from
    the GGUF) and the BM25 index over docs/runbooks."""
    return build_bundle(tmp_path_factory.mktemp("bundle") / "local", profile="local", corpus_dir=RUNBOOKS)


@pytest.fixture(scope="session")
def test_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """The local bundle plus the tiny test decoder (abstractive path; never a default)."""
    return build_bundle(tmp_path_factory.mktemp("bundle") / "test", profile="test", corpus_dir=RUNBOOKS,
                        test_generator=build_test_decoder)


@pytest.fixture(scope="session")
def base_config() -> PipelineConfig:
    """Every stage's user_config as the base serveConfigV2 sets it (the values every overlay starts from)."""
    return PipelineConfig.from_serve_config(yaml.safe_load(BASE_SERVE_CONFIG.read_text()))


@pytest.fixture(scope="session")
def minilm_source_dir() -> Path:
    return minilm_package_dir()


@pytest.fixture(scope="session")
def minilm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("minilm")
    convert_minilm(out)
    return out


@pytest.fixture(scope="session")
def test_decoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("test-decoder")
    build_test_decoder(out)
    return out
