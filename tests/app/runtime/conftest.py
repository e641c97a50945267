"""Shared, session-scoped model fixtures: converting MiniLM takes ~2 s, so do it once."""

from __future__ import annotations

from pathlib import Path

import pytest
from support_assistant.build.minilm_export import convert_minilm, minilm_package_dir
from testmodels.decoder import build_test_decoder


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
