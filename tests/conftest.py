"""Fixtures shared by every test area. Keep this small: area-specific fixtures live in tests/<area>/."""

from __future__ import annotations

from pathlib import Path

import pytest
from imagebuild import pushed_image  # noqa: F401  (the app image, built and pushed once: tests/images, tests/cluster)
from liveray import (  # noqa: F401  (the live Ray and its bundle, shared with tests/simulation)
    local_bundle_dir,
    local_ray,
)
from repoctl.paths import ENVIRONMENTS, ROOT
from repoctl.render import render_overlay


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict]]:
    """env -> the overlay's rendered documents, rendered once per session and shared by every test:
    never mutate them in place (copy.deepcopy first)."""
    return {env: render_overlay(env) for env in ENVIRONMENTS}
