"""repoctl.render: target discovery (what validate and diff render) covers everything a sync entry applies."""

from __future__ import annotations

import shutil
from pathlib import Path

from repoctl.paths import ENVIRONMENTS, ROOT
from repoctl.render import find, load_documents, render_target, target_paths


def test_targets_are_overlays_then_infrastructure_then_sync_entries() -> None:
    paths = target_paths()
    assert paths == [
        *(f"overlays/{env}" for env in sorted(ENVIRONMENTS)),
        "infrastructure", "infrastructure/admission", "infrastructure/kuberay-operator",
        *(f"clusters/{tool}/{env}" for tool in ("argocd", "flux") for env in sorted(ENVIRONMENTS)),
    ]
    # Argo CD's view of the layer is rendered inside every clusters/argocd/<env>, not on its own.
    assert "infrastructure/argocd" not in paths and (ROOT / "infrastructure/argocd/kustomization.yaml").is_file()


def applied_paths(docs: list[dict]) -> set[str]:
    """The repository folders a rendered sync entry applies: Flux Kustomization spec.path, Argo CD
    Application source paths."""
    found = set()
    for doc in docs:
        if doc["kind"] == "Kustomization":
            found.add(doc["spec"]["path"].removeprefix("./"))
        elif doc["kind"] == "Application":
            sources = doc["spec"].get("sources") or [doc["spec"]["source"]]
            found |= {s["path"] for s in sources if "path" in s}
    return found


def test_everything_a_sync_entry_applies_is_a_target() -> None:
    paths = target_paths()
    applied: set[str] = set()
    for path in paths:
        if path.startswith("clusters/"):
            target = render_target(path)
            assert target.ok, target.error
            applied |= applied_paths(target.docs)
    assert applied == {*(f"overlays/{env}" for env in ENVIRONMENTS), "infrastructure", "infrastructure/admission"}
    assert applied <= set(paths)


def test_discovery_in_another_tree(tmp_path: Path) -> None:
    (tmp_path / "overlays/qa").mkdir(parents=True)
    (tmp_path / "overlays/qa/kustomization.yaml").write_text("resources: []\n")
    (tmp_path / "overlays/notes").mkdir()  # no kustomization.yaml: not a target
    (tmp_path / "clusters/flux/base").mkdir(parents=True)
    (tmp_path / "clusters/flux/base/kustomization.yaml").write_text("resources: []\n")  # shared part
    assert target_paths(tmp_path) == ["overlays/qa"]
    shutil.copytree(ROOT / "infrastructure", tmp_path / "infrastructure")
    assert target_paths(tmp_path) == [
        "overlays/qa", "infrastructure", "infrastructure/admission", "infrastructure/kuberay-operator"]


def test_render_errors_are_kept_on_the_target(tmp_path: Path) -> None:
    (tmp_path / "overlays/broken").mkdir(parents=True)
    (tmp_path / "overlays/broken/kustomization.yaml").write_text("resources: [missing.yaml]\n")
    target = render_target("overlays/broken", tmp_path)
    assert not target.ok and target.error.startswith("kustomize build overlays/broken failed")
    assert "\n" not in target.error and target.name == "overlays-broken" and target.is_overlay


def test_find() -> None:
    docs = load_documents("kind: A\nmetadata: {name: a}\n---\nkind: B\nmetadata: {name: b}\n")
    assert find(docs, "B")["metadata"]["name"] == "b"
    assert find(docs, "A", "a") is docs[0]
