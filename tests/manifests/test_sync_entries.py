"""The Argo CD and Flux entries sync the right overlay, after the infrastructure, server-side, with health.
(The order itself, for every infrastructure entry, is tests/manifests/test_sync_order.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from repoctl.paths import ENVIRONMENTS
from repoctl.render import find, kustomize_build, load_documents

REPO_URL = "https://github.com/acme-platform/support-assistant-gitops.git"


def render(path: str) -> list[dict]:
    return load_documents(kustomize_build(path))


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_argocd_entry(env: str, rendered: dict[str, list[dict]], repo_root: Path) -> None:
    docs = render(f"clusters/argocd/{env}")
    operator = find(docs, "Application", "kuberay-operator")
    admission = find(docs, "Application", "admission")
    app = find(docs, "Application", "support-assistant")
    project = find(docs, "AppProject", "support-assistant")

    assert app["spec"]["source"] == {"repoURL": REPO_URL, "targetRevision": "main", "path": f"overlays/{env}"}
    wave = lambda a: int(a["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"])  # noqa: E731
    assert wave(operator) == -1 < 0 <= wave(app)
    assert wave(admission) == -1
    assert admission["spec"]["source"] == {"repoURL": REPO_URL, "targetRevision": "main",
                                           "path": "infrastructure/admission"}
    assert "ServerSideApply=true" in admission["spec"]["syncPolicy"]["syncOptions"]
    assert admission["spec"]["project"] == project["metadata"]["name"]
    assert {"ServerSideApply=true", "CreateNamespace=true"} <= set(operator["spec"]["syncPolicy"]["syncOptions"])
    assert {"ServerSideApply=true", "RespectIgnoreDifferences=true"} <= set(app["spec"]["syncPolicy"]["syncOptions"])
    assert operator["spec"]["destination"]["namespace"] == "kuberay-system"

    rayservice = find(rendered[env], "RayService")
    assert app["spec"]["destination"]["namespace"] == rayservice["metadata"]["namespace"]
    assert app["spec"]["ignoreDifferences"] == [{
        "group": "ray.io", "kind": "RayService",
        "jqPathExpressions": [".spec.rayClusterConfig.workerGroupSpecs[].replicas"],
    }]

    # The operator's values come from this repository's file, which must exist where $values points.
    chart, values = operator["spec"]["sources"]
    assert chart["repoURL"] == "https://ray-project.github.io/kuberay-helm/"
    assert values == {"repoURL": REPO_URL, "targetRevision": "main", "ref": "values"}
    for value_file in chart["helm"]["valueFiles"]:
        assert (repo_root / value_file.removeprefix("$values/")).is_file(), value_file

    assert {chart["repoURL"], REPO_URL} <= set(project["spec"]["sourceRepos"])
    assert operator["spec"]["project"] == app["spec"]["project"] == project["metadata"]["name"]
    destinations = {d["namespace"] for d in project["spec"]["destinations"]}
    assert {"kuberay-system", rayservice["metadata"]["namespace"]} <= destinations

    argocd_cm = find(docs, "ConfigMap", "argocd-cm")
    health = repo_root / "clusters/argocd/base/health"
    assert argocd_cm["data"] == {
        f"resource.customizations.health.{p.stem}": p.read_text() for p in sorted(health.glob("*.lua"))
    }
    assert "resource.customizations.health.ray.io_RayService" in argocd_cm["data"]


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_flux_entry(env: str, rendered: dict[str, list[dict]], repo_root: Path) -> None:
    docs = render(f"clusters/flux/{env}")
    source = find(docs, "GitRepository", "support-assistant-gitops")
    infrastructure = find(docs, "Kustomization", "infrastructure")
    app = find(docs, "Kustomization", "support-assistant")

    assert source["spec"]["url"] == REPO_URL
    for kustomization in (infrastructure, app):
        assert kustomization["spec"]["sourceRef"] == {"kind": "GitRepository", "name": "support-assistant-gitops"}
        path = kustomization["spec"]["path"].removeprefix("./")
        assert (repo_root / path / "kustomization.yaml").is_file()
        # The source artifact must contain what the Kustomization builds.
        assert f"!/{path.split('/')[0]}/" in source["spec"]["ignore"]
    assert app["spec"]["path"] == f"./overlays/{env}"
    assert infrastructure["spec"]["path"] == "./infrastructure"
    assert infrastructure["spec"]["wait"] is True  # Ready only when the HelmRelease is (operator up, CRDs in)
    assert app["spec"]["dependsOn"] == [{"name": "infrastructure"}]

    rayservice = find(rendered[env], "RayService")
    assert app["spec"]["wait"] is False  # wait: true would ignore healthChecks
    assert app["spec"]["healthChecks"] == [{
        "apiVersion": rayservice["apiVersion"], "kind": "RayService",
        "name": rayservice["metadata"]["name"], "namespace": rayservice["metadata"]["namespace"],
    }]
    (expr,) = app["spec"]["healthCheckExprs"]
    assert "InitializingTimeout" in expr["failed"] and "'Ready'" in expr["current"]
    timeout_minutes = int(app["spec"]["timeout"].removesuffix("m"))
    initializing = rayservice["metadata"]["annotations"]["ray.io/initializing-timeout"]
    assert timeout_minutes > int(initializing.removesuffix("m"))


def test_flux_operator_release() -> None:
    docs = render("infrastructure/kuberay-operator")
    release = find(docs, "HelmRelease", "kuberay-operator")
    repo = find(docs, "HelmRepository")
    values = find(docs, "ConfigMap")
    spec = release["spec"]
    assert spec["install"]["crds"] == spec["upgrade"]["crds"] == "CreateReplace"
    assert spec["install"]["createNamespace"] is True and spec["targetNamespace"] == "kuberay-system"
    assert spec["chart"]["spec"]["sourceRef"] == {"kind": "HelmRepository", "name": repo["metadata"]["name"]}
    assert repo["spec"]["url"] == "https://ray-project.github.io/kuberay-helm/"
    # The generated (hash-suffixed) ConfigMap name reaches the HelmRelease.
    assert spec["valuesFrom"] == [{"kind": "ConfigMap", "name": values["metadata"]["name"], "valuesKey": "values.yaml"}]
    assert values["metadata"]["name"].startswith("kuberay-operator-values-")
