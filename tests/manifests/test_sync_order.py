"""Infrastructure before the app, in both sync engines, read from the rendered clusters/<tool>/<env> entries:
Flux through its dependsOn chain, Argo CD through sync waves. And the app's overlays hold only the app."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from repoctl.paths import ENVIRONMENTS
from repoctl.render import find, kustomize_build, load_documents

INFRASTRUCTURE = "infrastructure"
CHART_REPO = "https://ray-project.github.io/kuberay-helm/"


def render(path: str) -> list[dict]:
    return load_documents(kustomize_build(path))


def of_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


# --- Flux -----------------------------------------------------------------------------------------------


def flux_layers(docs: list[dict]) -> tuple[dict[str, dict], dict[str, dict]]:
    """(infrastructure Kustomizations, app Kustomizations) by name, from the path each applies."""
    kustomizations = of_kind(docs, "Kustomization")
    path = {name: k["spec"]["path"].removeprefix("./") for name, k in kustomizations.items()}
    infra = {n: k for n, k in kustomizations.items() if path[n].startswith(INFRASTRUCTURE)}
    apps = {n: k for n, k in kustomizations.items() if path[n].startswith("overlays/")}
    assert set(infra) | set(apps) == set(kustomizations), "a Flux Kustomization that is neither infrastructure nor app"
    return infra, apps


def depends_on(kustomizations: dict[str, dict], name: str, seen: tuple[str, ...] = ()) -> set[str]:
    """Every Kustomization `name` waits for, transitively (a cycle fails: Flux would never apply it)."""
    assert name not in seen, f"dependsOn cycle: {' -> '.join((*seen, name))}"
    assert name in kustomizations, f"dependsOn names {name!r}, which no Kustomization in the entry is"
    found: set[str] = set()
    for dependency in kustomizations[name]["spec"].get("dependsOn", []):
        found |= {dependency["name"], *depends_on(kustomizations, dependency["name"], (*seen, name))}
    return found


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_flux_applies_the_infrastructure_before_the_app(env: str) -> None:
    docs = render(f"clusters/flux/{env}")
    kustomizations = of_kind(docs, "Kustomization")
    infra, apps = flux_layers(docs)
    assert set(infra) == {"infrastructure"} and set(apps) == {"support-assistant"}
    for app in apps:
        assert set(infra) <= depends_on(kustomizations, app), f"{app} does not wait for {sorted(infra)}"
    for name, kustomization in infra.items():
        assert not depends_on(kustomizations, name) & set(apps), f"{name} waits for the app"
        # dependsOn waits for Ready, and only wait: true makes Ready mean "everything applied is healthy".
        assert kustomization["spec"]["wait"] is True, name


# --- Argo CD --------------------------------------------------------------------------------------------


def wave(application: dict) -> int:
    return int(application["metadata"].get("annotations", {}).get("argocd.argoproj.io/sync-wave", "0"))


def argocd_layers(docs: list[dict]) -> tuple[dict[str, dict], dict[str, dict]]:
    """(infrastructure Applications, app Applications): a chart from the KubeRay Helm repository, or a
    path under infrastructure/, is infrastructure; a path under overlays/ is the app."""
    applications = of_kind(docs, "Application")
    infra, apps = {}, {}
    for name, application in applications.items():
        sources = application["spec"].get("sources") or [application["spec"]["source"]]
        paths = [s["path"] for s in sources if "path" in s]
        if any(s["repoURL"] == CHART_REPO for s in sources) or any(p.startswith(INFRASTRUCTURE) for p in paths):
            infra[name] = application
        elif any(p.startswith("overlays/") for p in paths):
            apps[name] = application
    assert set(infra) | set(apps) == set(applications), "an Application that is neither infrastructure nor app"
    return infra, apps


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_argocd_syncs_the_infrastructure_in_an_earlier_wave(env: str) -> None:
    infra, apps = argocd_layers(render(f"clusters/argocd/{env}"))
    assert set(infra) == {"kuberay-operator", "admission"} and set(apps) == {"support-assistant"}
    assert max(map(wave, infra.values())) < min(map(wave, apps.values())), {
        name: wave(a) for name, a in {**infra, **apps}.items()}


# --- the same infrastructure in both engines -------------------------------------------------------------


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_both_engines_install_the_same_infrastructure(env: str, repo_root: Path) -> None:
    flux_layer = render(INFRASTRUCTURE)
    infra, _ = argocd_layers(render(f"clusters/argocd/{env}"))

    # Admission: Argo CD syncs the folder that Flux's layer includes.
    (admission_path,) = [a["spec"]["source"]["path"] for a in infra.values() if "source" in a["spec"]]
    admission = render(admission_path)
    assert admission and all(doc in flux_layer for doc in admission)

    # The operator: the same chart, version and values file.
    release = find(flux_layer, "HelmRelease", "kuberay-operator")
    flux_values = find(flux_layer, "ConfigMap")["data"]["values.yaml"]
    chart = next(s for s in infra["kuberay-operator"]["spec"]["sources"] if s.get("chart"))
    assert (chart["repoURL"], chart["chart"], chart["targetRevision"]) == (
        find(flux_layer, "HelmRepository", release["spec"]["chart"]["spec"]["sourceRef"]["name"])["spec"]["url"],
        release["spec"]["chart"]["spec"]["chart"],
        release["spec"]["chart"]["spec"]["version"],
    )
    (value_file,) = chart["helm"]["valueFiles"]
    argocd_values = (repo_root / value_file.removeprefix("$values/")).read_text()
    assert yaml.safe_load(argocd_values) == yaml.safe_load(flux_values)


# --- the app's overlays -----------------------------------------------------------------------------------


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_overlays_hold_only_the_app(env: str, rendered: dict[str, list[dict]]) -> None:
    namespace = find(rendered[env], "Namespace")["metadata"]["name"]
    outside = [f"{d['kind']}/{d['metadata']['name']}" for d in rendered[env]
               if d["kind"] != "Namespace" and d["metadata"].get("namespace") != namespace]
    assert outside == [], f"overlays/{env} renders cluster add-ons or other namespaces' objects: {outside}"
