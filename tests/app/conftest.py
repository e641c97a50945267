"""Bundles for the stage tests, built once per session from the real runbooks."""

from __future__ import annotations

from pathlib import Path

import pytest
from support_assistant.bundle.build import build_bundle
from support_assistant.bundle.manifest import Bundle

RUNBOOKS = Path(__file__).resolve().parents[2] / "docs" / "runbooks"


@pytest.fixture(scope="session")
def local_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """What `make bundle` builds: real all-MiniLM-L6-v2 + BM25 index over docs/runbooks, no LM."""
    return build_bundle(tmp_path_factory.mktemp("bundle") / "local", profile="local", corpus_dir=RUNBOOKS)


@pytest.fixture(scope="session")
def test_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """The local bundle plus the tiny test decoder (abstractive path; never a default)."""
    return build_bundle(tmp_path_factory.mktemp("bundle") / "test", profile="test", corpus_dir=RUNBOOKS)
