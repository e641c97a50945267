"""A real digest through promotion: the image tests/imagebuild.py pushed to the loopback registry is recorded in
dev with `make promote FROM=127.0.0.1:PORT/support-assistant:<tag>@sha256:<digest> TO=dev` (in a throwaway copy
of the repository, never the committed overlay), and the promoted overlay renders, validates and applies to
the local control plane, where the KubeRay operator's pods carry exactly that image reference."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml
from imagebuild import PushedImage
from kube import OPERATOR_NAMESPACES, apply, ensure_namespaces, items, load_module, retarget, wait_for
from repoctl.cluster import ControlPlane
from repoctl.paths import ROOT
from repoctl.render import find, render_overlay

promote_repo = load_module(ROOT / "tests" / "repoctl" / "promote_repo.py", "promote_repo")


@pytest.fixture(scope="module")
def promoted(pushed_image: PushedImage, tmp_path_factory: pytest.TempPathFactory) -> tuple[object, list[dict]]:
    repo = promote_repo.make_repo(tmp_path_factory.mktemp("promoted"))
    shutil.copy2(ROOT / "Makefile", repo.root / "Makefile")
    (repo.root / ".venv").symlink_to(ROOT / ".venv")
    # `-o setup`: the copy shares this checkout's venv and tools, so make must not set up a second one.
    env = {k: v for k, v in os.environ.items() if k not in ("ALLOW_DOWNGRADE", "MAKEFLAGS")}
    result = subprocess.run(["make", "--no-print-directory", "-o", "setup", "promote",
                             f"FROM={pushed_image.reference}", "TO=dev"], cwd=repo.root, capture_output=True,
                            text=True, check=False, timeout=300, env={**env, "REPO_ROOT": str(repo.root)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"promoted overlays/dev to {pushed_image.tag}@{pushed_image.digest}" in result.stdout
    return repo, render_overlay("dev", repo.root)


def test_the_promoted_dev_overlay_pins_the_pushed_image(promoted, pushed_image: PushedImage) -> None:
    repo, docs = promoted
    entry = next(e for e in yaml.safe_load((repo.root / "overlays/dev/kustomization.yaml").read_text())["images"])
    assert (entry["newName"], entry["newTag"], entry["digest"]) == (
        f"{pushed_image.registry}/support-assistant", pushed_image.tag, pushed_image.digest)
    rs = find(docs, "RayService")
    cluster = rs["spec"]["rayClusterConfig"]
    images = {c["image"] for g in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
              for c in g["template"]["spec"]["containers"]}
    assert images == {pushed_image.reference}
    # The committed overlay is untouched.
    assert pushed_image.digest not in (ROOT / "overlays/dev/kustomization.yaml").read_text()


def test_the_operator_pods_of_the_promoted_overlay_run_the_pushed_digest(
        cluster: ControlPlane, promoted, pushed_image: PushedImage) -> None:
    _, docs = promoted
    ns = OPERATOR_NAMESPACES["promoted"]
    moved = retarget(docs, ns)
    ensure_namespaces(cluster, moved)
    apply(cluster, moved, where=f"promoted overlays/dev in {ns}")
    rs = find(moved, "RayService")
    want = 1 + sum(max(g.get("minReplicas", 0), min(g.get("replicas", 0), g.get("maxReplicas", 2**31 - 1)))
                   for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"])
    pods = wait_for(f"{ns}: {want} pods", lambda: p if len(p := items(cluster, "pod", ns)) >= want else None,
                    timeout=90)
    for pod in pods:
        ray = pod["spec"]["containers"][0]
        assert ray["image"] == pushed_image.reference, (pod["metadata"]["name"], ray["image"])
