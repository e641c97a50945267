"""Versions that must move together: Ray everywhere it is named, and KubeRay's chart, image and CRDs."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from repoctl.paths import ENVIRONMENTS, versions
from repoctl.render import find, kustomize_build, load_documents, ray_containers


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_ray_version_agrees_in_the_overlay(rendered: dict[str, list[dict]], env: str) -> None:
    ray = versions()["RAY_VERSION"]
    rayservice = find(rendered[env], "RayService")
    assert rayservice["spec"]["rayClusterConfig"]["rayVersion"] == ray
    containers = [c for _, c in ray_containers(rayservice)]
    assert len(containers) >= 3  # head + the cpu and gpu worker groups
    for container in containers:
        tag = container["image"].split("@")[0].rsplit(":", 1)[-1]
        assert tag.endswith(f"-ray{ray}"), f"overlays/{env}: {container['name']} image {container['image']}"


def _pinned(requirements: list[str], name: str) -> str | None:
    for line in requirements:
        match = re.fullmatch(rf"\s*{re.escape(name)}==([^\s;#]+).*", line)
        if match:
            return match[1]
    return None


def test_app_and_repo_pin_the_same_ray(repo_root: Path) -> None:
    ray = versions()["RAY_VERSION"]
    app = tomllib.loads((repo_root / "apps/support_assistant/pyproject.toml").read_text())
    assert _pinned(app["project"]["dependencies"], "ray[serve]") == ray
    assert _pinned((repo_root / "requirements.txt").read_text().splitlines(), "ray[serve]") == ray
    assert _pinned((repo_root / "constraints.txt").read_text().splitlines(), "ray") == ray


def test_constraints_agree_with_requirements(repo_root: Path) -> None:
    """A requirements.txt bump without `make lock` would install under stale constraints."""
    constraints = (repo_root / "constraints.txt").read_text().splitlines()
    for line in (repo_root / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        name, _, version = line.partition("==")
        base = re.sub(r"\[.*\]", "", name)
        assert _pinned(constraints, base) == version, f"{base}: requirements {version}; run `make lock`"


def test_kuberay_chart_image_and_crds_are_one_version(repo_root: Path) -> None:
    kuberay = versions()["KUBERAY_VERSION"]
    chart_version = kuberay.removeprefix("v")

    flux = load_documents(kustomize_build("infrastructure/kuberay-operator"))
    release = find(flux, "HelmRelease", "kuberay-operator")
    assert release["spec"]["chart"]["spec"]["version"] == chart_version
    values = yaml.safe_load((repo_root / "infrastructure/kuberay-operator/values.yaml").read_text())
    assert values["image"]["tag"] == kuberay

    for env in ENVIRONMENTS:
        argocd = load_documents(kustomize_build(f"clusters/argocd/{env}"))
        chart = next(s for s in find(argocd, "Application", "kuberay-operator")["spec"]["sources"] if s.get("chart"))
        assert chart["chart"] == release["spec"]["chart"]["spec"]["chart"] == "kuberay-operator"
        assert chart["targetRevision"] == chart_version, f"clusters/argocd/{env}"
