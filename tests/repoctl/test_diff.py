"""`repoctl diff`: a rendered diff per target against a git ref, with added and removed targets."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from repoctl.diff import DiffError, resolve_ref, run_diff
from repoctl.paths import ROOT


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                   cwd=repo, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    for folder in ("base", "components", "overlays", "infrastructure"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    git(tmp_path, "init", "-q", "-b", "main")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "base")
    return tmp_path


def sections(lines: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in lines:
        if line.startswith("== "):
            current = out.setdefault(line[3:], [])
        elif not line.startswith("diff: "):
            current.append(line)
    return out


def test_unchanged_tree_says_no_changes(repo: Path) -> None:
    lines, changed = run_diff("main", repo)
    assert changed == 0
    assert sections(lines) == {"overlays/dev": ["no changes"], "overlays/prod": ["no changes"],
                               "overlays/staging": ["no changes"], "infrastructure": ["no changes"],
                               "infrastructure/admission": ["no changes"],
                               "infrastructure/kuberay-operator": ["no changes"]}
    assert lines[-1].startswith("diff: 0 of 6 targets changed against main")


def test_changed_added_and_removed_overlays(repo: Path) -> None:
    patch = repo / "overlays/prod/rayservice-patch.yaml"
    patch.write_text(patch.read_text().replace(
        "workerGroupSpecs/1/maxReplicas, value: 4}", "workerGroupSpecs/1/maxReplicas, value: 5}"))
    shutil.rmtree(repo / "overlays/staging")
    shutil.copytree(repo / "overlays/dev", repo / "overlays/qa")

    lines, changed = run_diff("main", repo)
    found = sections(lines)
    assert changed == 3
    assert found["overlays/dev"] == ["no changes"]
    prod = found["overlays/prod"]
    assert prod[:2] == ["--- main:overlays/prod", "+++ working-tree:overlays/prod"]
    assert [line for line in prod if line[:1] in "+-" and line[:3] not in ("---", "+++")] == [
        "-      maxReplicas: 4", "+      maxReplicas: 5"]
    assert found["overlays/qa"][0] == "(new: absent at main)"
    qa = found["overlays/qa"]
    assert qa[3].startswith("@@ -0,0 ") and len(qa) > 10
    assert all(line.startswith("+") for line in qa[4:])
    assert found["overlays/staging"][0] == "(removed in the working tree)"


def test_unknown_base_ref_is_a_clear_error(repo: Path) -> None:
    with pytest.raises(DiffError, match="git ref 'no-such-branch' not found"):
        resolve_ref("no-such-branch", repo)


def test_falls_back_to_origin(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    clone = tmp_path_factory.mktemp("clone") / "repo"
    git(repo, "checkout", "-q", "-b", "feature")
    git(repo.parent, "clone", "-q", "--branch", "feature", str(repo), str(clone))
    assert resolve_ref("main", clone) == resolve_ref("origin/main", clone)
