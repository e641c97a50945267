"""`repoctl serve-config --check` (and validate's serve-config step) catch drift and non-owned keys."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from repoctl.paths import ROOT
from repoctl.validate import Context, step_serve_config


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """The parts of the repository serve-config reads, in a scratch folder (REPO_ROOT points there)."""
    shutil.copytree(ROOT / "overlays", tmp_path / "overlays")
    (tmp_path / "base" / "support-assistant").mkdir(parents=True)
    shutil.copy(ROOT / "base/support-assistant/serve-config.yaml", tmp_path / "base/support-assistant")
    shutil.copy(ROOT / "versions.env", tmp_path)
    return tmp_path


def serve_config_check(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REPO_ROOT": str(root), "PYTHONPATH": str(ROOT / "tools")}
    return subprocess.run(
        [sys.executable, "-m", "repoctl.cli", "serve-config", "--check"],
        env=env, capture_output=True, text=True, check=False,
    )


def test_in_sync_passes(repo_copy: Path) -> None:
    result = serve_config_check(repo_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert step_serve_config(Context(repo_copy, [])) == []


def test_drift_fails_naming_the_file(repo_copy: Path) -> None:
    overrides = repo_copy / "overlays/staging/serve-overrides.yaml"
    data = yaml.safe_load(overrides.read_text())
    data["applications"][0]["deployments"][0].setdefault("autoscaling_config", {})["max_replicas"] = 17
    overrides.write_text(yaml.safe_dump(data))

    result = serve_config_check(repo_copy)
    assert result.returncode == 1
    assert "overlays/staging/serve-config.yaml: out of date" in result.stdout
    (line,) = step_serve_config(Context(repo_copy, []))
    assert line.startswith("overlays/staging/serve-config.yaml: out of date")


def test_non_owned_key_fails_naming_the_key(repo_copy: Path) -> None:
    overrides = repo_copy / "overlays/dev/serve-overrides.yaml"
    data = yaml.safe_load(overrides.read_text())
    data["applications"][0]["deployments"][0]["max_ongoing_requests"] = 999
    overrides.write_text(yaml.safe_dump(data))

    result = serve_config_check(repo_copy)
    assert result.returncode != 0
    assert "applications.*.deployments.*.max_ongoing_requests: not an overlay-owned key" in result.stderr
    (line,) = step_serve_config(Context(repo_copy, []))
    assert "overlays/dev/serve-overrides.yaml" in line
    assert "max_ongoing_requests: not an overlay-owned key" in line
