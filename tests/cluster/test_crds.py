"""The pinned CRDs on a real API server: server-side apply works, client-side apply of KubeRay's does not."""

from __future__ import annotations

import copy
import json

from kube import target_paths
from repoctl.cluster import FIELD_MANAGER, ControlPlane, pinned_crds
from repoctl.render import kustomize_build, load_documents

# KubeRay #271: kubectl's client-side apply stores the whole object in this annotation, capped at 256 KiB.
TOO_LONG = "metadata.annotations: Too long"
ANNOTATION_LIMIT = "262144 bytes"


def test_every_pinned_crd_is_established_and_applied_server_side(cluster: ControlPlane) -> None:
    names = {doc["metadata"]["name"] for doc in pinned_crds()}
    groups = {doc["spec"]["group"] for doc in pinned_crds()}
    assert {"ray.io", "monitoring.coreos.com", "argoproj.io", "source.toolkit.fluxcd.io",
            "kustomize.toolkit.fluxcd.io", "helm.toolkit.fluxcd.io"} <= groups  # fmt: skip
    listed = cluster.get_json("crd", "--show-managed-fields")["items"]
    served = {item["metadata"]["name"]: item for item in listed}
    assert names <= set(served)
    for name in names:
        crd = served[name]
        established = [c for c in crd["status"]["conditions"] if c["type"] == "Established"]
        assert established and established[0]["status"] == "True", name
        managers = {(f["manager"], f["operation"]) for f in crd["metadata"]["managedFields"]}
        assert (FIELD_MANAGER, "Apply") in managers, f"{name}: {managers}"
        assert "kubectl.kubernetes.io/last-applied-configuration" not in crd["metadata"].get("annotations", {})


def test_client_side_apply_of_the_rayservice_crd_fails(cluster: ControlPlane) -> None:
    """The same CRD under another group (a new object: client-side apply then creates it with the
    last-applied annotation, which is where it fails; no three-way diff against the installed one)."""
    (crd,) = [copy.deepcopy(d) for d in pinned_crds() if d["metadata"]["name"] == "rayservices.ray.io"]
    crd["spec"]["group"] = "ray.example.com"
    crd["metadata"]["name"] = f"{crd['spec']['names']['plural']}.ray.example.com"
    document = json.dumps(crd)
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", stdin=document, check=False)
    assert result.returncode != 0
    assert TOO_LONG in result.stderr and ANNOTATION_LIMIT in result.stderr, result.stderr
    server_side = cluster.kubectl("apply", "--server-side", "--dry-run=server", "-f", "-", stdin=document, check=False)
    assert server_side.returncode == 0, server_side.stderr


def test_the_sync_settings_never_apply_client_side() -> None:
    """What keeps GitOps off the path above: every Argo CD Application syncs with ServerSideApply=true;
    Flux's kustomize-controller always applies server-side, and its helm-controller installs the chart's
    CRDs with create/replace (CreateReplace), never with a last-applied annotation."""
    applications = []
    releases = []
    for path in target_paths():
        for doc in load_documents(kustomize_build(path)):
            if doc["kind"] == "Application":
                applications.append((path, doc))
            if doc["kind"] == "HelmRelease":
                releases.append((path, doc))
    assert applications and releases
    for path, app in applications:
        options = app["spec"].get("syncPolicy", {}).get("syncOptions", [])
        assert "ServerSideApply=true" in options, f"{path}: Application {app['metadata']['name']}: {options}"
    for path, release in releases:
        spec = release["spec"]
        assert spec["install"]["crds"] == spec["upgrade"]["crds"] == "CreateReplace", path
