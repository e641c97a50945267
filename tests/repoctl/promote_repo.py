"""A throwaway git repository holding a copy of the manifests and repoctl, for promotions to edit.

A module of its own (not conftest.py) so that the tests can import its helpers by a unique name.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from repoctl.paths import ROOT

IMAGE = "ghcr.io/acme-platform/support-assistant"
# What a promotion (and `repoctl validate`) reads from the working tree. bin/ and .cache/schemas (the
# pinned CLIs and schemas that `make setup` installed) are linked, not copied; the copy gets its own
# .cache/rendered so that validating it never overwrites the real repository's rendered output.
COPIED = ("base", "components", "overlays", "infrastructure", "clusters", "policies", "tools", "versions.env",
          "pyproject.toml", ".gitignore")
TOOLS = ("kustomize", "kubeconform", "conftest", "promtool")


def digest(char: str) -> str:
    return "sha256:" + char * 64


def _git(repo: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True)
    return result.stdout


@dataclass
class Repo:
    root: Path

    def kustomization(self, env: str) -> Path:
        return self.root / "overlays" / env / "kustomization.yaml"

    def changed(self) -> list[str]:
        """Paths changed since the last commit (tracked or not)."""
        return sorted(line[3:] for line in _git(self.root, "status", "--porcelain", "-uall").splitlines())

    def commit(self, message: str = "test") -> None:
        _git(self.root, "add", "-A")
        _git(self.root, "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-qm", message)

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """`repoctl promote ...` as `make promote` runs it, against this copy."""
        environ = {key: value for key, value in os.environ.items() if key != "ALLOW_DOWNGRADE"}
        environ.update(REPO_ROOT=str(self.root), PYTHONPATH=str(self.root / "tools"), **(env or {}))
        return subprocess.run([sys.executable, "-m", "repoctl.cli", "promote", *args], cwd=self.root, env=environ,
                              capture_output=True, text=True, check=False, timeout=120)


def make_repo(tmp_path: Path) -> Repo:
    for tool in TOOLS:
        if not (ROOT / "bin" / tool).exists():
            pytest.fail(f"bin/{tool} is missing: run `make setup` before the tests")
    if not (ROOT / ".cache" / "schemas" / "stamp.json").exists():
        pytest.fail(".cache/schemas is missing: run `make setup` (repoctl schemas) before the tests")
    root = tmp_path / "repo"
    root.mkdir()
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(source, root / name)
    (root / "bin").symlink_to(ROOT / "bin")
    (root / ".cache").mkdir()
    (root / ".cache" / "schemas").symlink_to(ROOT / ".cache" / "schemas")
    _git(root, "init", "-q")
    # A symlink is not matched by the directory pattern /bin/ of .gitignore.
    (root / ".git" / "info" / "exclude").write_text("/bin\n")
    repo = Repo(root)
    repo.commit("copy of the working tree")
    return repo
