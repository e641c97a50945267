"""scripts/build-image.sh (`make image`) against a stand-in `docker`: no Docker engine runs here."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from dockerfile_parse import DockerfileParser
from repoctl.paths import ROOT, versions
from repoctl.promote import parse_source

DIGEST = "sha256:" + "b" * 64
BASES = {
    "PYTHON_IMAGE": "python:3.11-slim@sha256:" + "1" * 64,
    "RAY_BASE_IMAGE_GPU": f"rayproject/ray:{versions()['RAY_VERSION']}-py311-gpu@sha256:" + "2" * 64,
    "RAY_BASE_IMAGE_CPU": f"rayproject/ray:{versions()['RAY_VERSION']}-py311@sha256:" + "3" * 64,
}
COPIED = ("scripts/build-image.sh", "versions.env", "apps/support_assistant/pyproject.toml", "images/models.yaml")
# Answers `info` and `buildx version`; for `buildx build` records its arguments and writes the
# metadata file the way buildx does after a push.
FAKE_DOCKER = f"""#!/usr/bin/env python3
import json, sys
args = sys.argv[1:]
if args[:2] == ["buildx", "build"]:
    json.dump(args, open(sys.argv[0] + ".args", "w"))
    metadata = args[args.index("--metadata-file") + 1]
    json.dump({{"containerimage.digest": "{DIGEST}"}}, open(metadata, "w"))
"""


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A committed git tree holding what the script reads."""
    root = tmp_path / "repo"
    for name in COPIED:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, root / name)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run([*git, "init", "-q"], cwd=root, check=True)
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=root, check=True)
    return root


@pytest.fixture
def docker(tmp_path: Path) -> Path:
    path = tmp_path / "docker"
    path.write_text(FAKE_DOCKER)
    path.chmod(0o755)
    return path


def build(checkout: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in (*BASES, "VARIANT", "PUSH", "ALLOW_DIRTY", "IMAGE")}
    environ.update(PYTHON=sys.executable, **env)
    return subprocess.run(["bash", str(checkout / "scripts" / "build-image.sh")], env=environ, capture_output=True,
                          text=True, check=False, timeout=60)


def build_args(docker: Path) -> dict[str, str]:
    args = json.loads(Path(str(docker) + ".args").read_text())
    return dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--build-arg")


def test_without_docker_it_says_what_is_missing(checkout: Path) -> None:
    result = build(checkout, DOCKER="/nonexistent/docker", **BASES)
    assert result.returncode == 1
    assert result.stderr.startswith("build-image: '/nonexistent/docker' not found: building the image needs a Docker")
    assert "images/README.md" in result.stderr


def test_builds_with_the_pinned_versions_and_prints_the_promote_command(checkout: Path, docker: Path) -> None:
    result = build(checkout, DOCKER=str(docker), **BASES)
    assert result.returncode == 0, result.stderr
    ray = versions()["RAY_VERSION"]
    app = tomllib.loads((ROOT / "apps/support_assistant/pyproject.toml").read_text())["project"]["version"]
    models = yaml.safe_load((ROOT / "images/models.yaml").read_text())["profiles"]["production"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True).stdout.strip()
    assert build_args(docker) == {
        "PYTHON_IMAGE": BASES["PYTHON_IMAGE"],
        "RAY_BASE_IMAGE": BASES["RAY_BASE_IMAGE_GPU"],
        "RAY_VERSION": ray,
        "VARIANT": "gpu",
        "APP_VERSION": app,
        "VCS_REF": head,
        "SOURCE_URL": "unknown",
        "MODELS": ",".join(f"{m['name']}@{m['revision']}" for _, m in sorted(models.items())),
    }
    args = json.loads(Path(str(docker) + ".args").read_text())
    tag = f"{app}-ray{ray}"
    assert args[args.index("--tag") + 1] == f"ghcr.io/acme-platform/support-assistant:{tag}"
    assert args[args.index("--file") + 1] == "images/Dockerfile" and "--push" in args
    reference = f"ghcr.io/acme-platform/support-assistant:{tag}@{DIGEST}"
    assert f"digest: {DIGEST}" in result.stdout.splitlines()
    assert f"  make promote FROM={reference} TO=dev" in result.stdout.splitlines()
    # What it prints is what `repoctl promote` accepts.
    assert parse_source(reference, "dev", ROOT)[1].digest == DIGEST


def test_passes_exactly_the_arguments_the_dockerfile_declares(checkout: Path, docker: Path) -> None:
    assert build(checkout, DOCKER=str(docker), **BASES).returncode == 0
    declared: dict[str, str | None] = {}
    for instruction in DockerfileParser(path=str(ROOT / "images" / "Dockerfile")).structure:
        if instruction["instruction"] == "ARG":
            name, sep, default = instruction["value"].partition("=")
            declared.setdefault(name, default if sep else None)
    passed = build_args(docker)
    assert passed.keys() <= declared.keys(), passed.keys() - declared.keys()
    assert {name for name, default in declared.items() if default is None} <= passed.keys()


def test_cpu_variant_uses_the_cpu_ray_image_and_its_own_repository(checkout: Path, docker: Path) -> None:
    result = build(checkout, DOCKER=str(docker), VARIANT="cpu", **BASES)
    assert result.returncode == 0, result.stderr
    assert build_args(docker)["RAY_BASE_IMAGE"] == BASES["RAY_BASE_IMAGE_CPU"]
    args = json.loads(Path(str(docker) + ".args").read_text())
    assert args[args.index("--tag") + 1].startswith("ghcr.io/acme-platform/support-assistant-cpu:")
    assert "make promote" not in result.stdout  # the overlays run the GPU image only


@pytest.mark.parametrize(("key", "value"), [
    ("PYTHON_IMAGE", "python:3.11-slim"),
    ("RAY_BASE_IMAGE_GPU", f"rayproject/ray:{versions()['RAY_VERSION']}-py311-gpu"),
    ("RAY_BASE_IMAGE_GPU", "rayproject/ray:2.0.0-py311-gpu@sha256:" + "2" * 64),
])
def test_refuses_base_images_without_a_digest_or_of_another_ray(checkout: Path, docker: Path, key, value) -> None:
    result = build(checkout, DOCKER=str(docker), **{**BASES, key: value})
    assert result.returncode == 1
    assert re.match(rf"build-image: versions.env: {key}=\S+@sha256:<digest> is required", result.stderr)
    assert not Path(str(docker) + ".args").exists()


def test_refuses_a_dirty_tree_unless_allowed(checkout: Path, docker: Path) -> None:
    (checkout / "versions.env").write_text((checkout / "versions.env").read_text() + "\n# local edit\n")
    refused = build(checkout, DOCKER=str(docker), **BASES)
    assert refused.returncode == 1 and "uncommitted changes" in refused.stderr
    allowed = build(checkout, DOCKER=str(docker), ALLOW_DIRTY="1", **BASES)
    assert allowed.returncode == 0, allowed.stderr
    assert build_args(docker)["VCS_REF"].endswith("-dirty")
