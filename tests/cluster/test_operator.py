"""The real KubeRay operator (bin/ray-operator, KUBERAY_VERSION) reconciles every overlay's RayService.

Each overlay is applied into its own namespace (OPERATOR_NAMESPACES, the only ones the operator watches;
the Namespace keeps its labels, so Pod Security `restricted` and the admission policies apply). There is
no kubelet and no scheduler: the pods stay Pending and no Ray process ever answers, so the RayService
never gets Ready. What is asserted is what the operator really wrote: the RayCluster, the head Service,
the pods' specs, and the RayService conditions, which the Argo CD Lua health check and the Flux health
expression (both from clusters/) must read as in progress, not healthy. A RayService the operator's own
validation refuses ends ValidationFailed, which both read as failed and which conftest refuses first.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import cel
import pytest
import yaml
from kube import OPERATOR_NAMESPACES, apply, condition, ensure_namespaces, items, retarget, wait_for
from lupa import lua51
from repoctl.cluster import ControlPlane
from repoctl.paths import ENVIRONMENTS, ROOT
from repoctl.policy import run_conftest
from repoctl.render import find, kustomize_build, load_documents

ARGOCD_HEALTH = ROOT / "clusters" / "argocd" / "base" / "health" / "ray.io_RayService.lua"
TIMEOUT_ANNOTATION = "ray.io/initializing-timeout"
BAD_TIMEOUT = "15 minutes"  # neither a Go duration nor a number of seconds


# --- the two health checks, evaluated as Argo CD and Flux evaluate them ---------------------------------


def argocd_health(obj: dict) -> tuple[str, str]:
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(ARGOCD_HEALTH.read_text())
    return result["status"], result["message"]


def flux_health_exprs() -> dict[str, str]:
    (entry,) = [e for doc in load_documents(kustomize_build("clusters/flux/dev")) if doc["kind"] == "Kustomization"
                for e in doc["spec"].get("healthCheckExprs", []) if e["kind"] == "RayService"]  # fmt: skip
    return entry


def flux_health(obj: dict) -> str:
    """kustomize-controller's CEL status reader: inProgress, then failed, then current; otherwise InProgress.
    The object's top-level fields are the variables."""
    exprs = flux_health_exprs()
    for field, status in (("inProgress", "InProgress"), ("failed", "Failed"), ("current", "Current")):
        if field in exprs and cel.evaluate(exprs[field], obj) is True:
            return status
    return "InProgress"


# --- the reconciled overlays ----------------------------------------------------------------------------


def expected_workers(group: dict) -> int:
    low, high = group.get("minReplicas", 0), group.get("maxReplicas", 2**31 - 1)
    return max(low, min(group.get("replicas", low), high))


@pytest.fixture(scope="module")
def reconciled(cluster: ControlPlane, rendered: dict[str, list[dict]]) -> dict[str, dict[str, Any]]:
    """env -> {rayservice (as applied), raycluster, pods, services, live rayservice} once the operator has
    created every pod the overlay asks for and written the RayService's Ready condition."""
    for env in ENVIRONMENTS:
        docs = retarget(rendered[env], OPERATOR_NAMESPACES[env])
        ensure_namespaces(cluster, docs)
        apply(cluster, docs, where=f"overlays/{env} in {OPERATOR_NAMESPACES[env]}")
    result = {}
    for env in ENVIRONMENTS:
        ns = OPERATOR_NAMESPACES[env]
        rs = find(retarget(rendered[env], ns), "RayService")
        config = rs["spec"]["rayClusterConfig"]
        want = 1 + sum(expected_workers(g) for g in config["workerGroupSpecs"])
        clusters = wait_for(f"{ns}: a RayCluster", lambda ns=ns: items(cluster, "raycluster", ns), timeout=60)
        (raycluster,) = clusters
        selector = f"ray.io/cluster={raycluster['metadata']['name']}"
        pods = wait_for(f"{ns}: {want} pods", lambda ns=ns, s=selector, w=want: (
            p if len(p := items(cluster, "pod", ns, s)) >= w else None), timeout=90)  # fmt: skip
        live = wait_for(f"{ns}: the RayService Ready condition", lambda ns=ns, name=rs["metadata"]["name"]: (
            r if condition(r := cluster.get_json("rayservice", name, "-n", ns), "Ready") else None), timeout=60)
        result[env] = {"rayservice": rs, "raycluster": raycluster, "pods": pods, "live": live,
                       "services": items(cluster, "service", ns)}  # fmt: skip
    return result


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_operator_creates_the_raycluster_from_the_overlay(env: str, reconciled: dict) -> None:
    got = reconciled[env]
    rs, rc = got["rayservice"], got["raycluster"]
    config = rs["spec"]["rayClusterConfig"]
    owners = [(o["kind"], o["name"]) for o in rc["metadata"].get("ownerReferences", [])]
    assert owners == [("RayService", rs["metadata"]["name"])]
    assert rc["spec"]["rayVersion"] == config["rayVersion"]
    bounds = {g["groupName"]: (g["minReplicas"], g["maxReplicas"]) for g in rc["spec"]["workerGroupSpecs"]}
    assert bounds == {g["groupName"]: (g["minReplicas"], g["maxReplicas"]) for g in config["workerGroupSpecs"]}
    # Ray's own auth (token mode), once an overlay sets it, reaches the cluster unchanged.
    assert rc["spec"].get("authOptions") == config.get("authOptions")
    assert rc["spec"].get("enableInTreeAutoscaling") == config.get("enableInTreeAutoscaling")


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_operator_creates_a_cluster_internal_head_service(env: str, reconciled: dict) -> None:
    rc = reconciled[env]["raycluster"]
    head = [s for s in reconciled[env]["services"] if s["metadata"]["name"] == f"{rc['metadata']['name']}-head-svc"]
    assert head, [s["metadata"]["name"] for s in reconciled[env]["services"]]
    assert all(s["spec"]["type"] == "ClusterIP" for s in reconciled[env]["services"])
    ports = {p["port"] for p in head[0]["spec"]["ports"]}
    assert {6379, 8265, 10001, 8000} <= ports


def _ray_start(container: dict) -> str:
    return " ".join([*container.get("command", []), *container.get("args", [])])


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_pods_carry_what_the_overlay_promised(env: str, reconciled: dict) -> None:
    got = reconciled[env]
    config = got["rayservice"]["spec"]["rayClusterConfig"]
    groups = {"headgroup": config["headGroupSpec"], **{g["groupName"]: g for g in config["workerGroupSpecs"]}}
    per_group: dict[str, int] = {}
    for pod in got["pods"]:
        labels = pod["metadata"]["labels"]
        group_name = labels["ray.io/group"]
        group = groups[group_name]
        per_group[group_name] = per_group.get(group_name, 0) + 1
        where = f"{env} pod {pod['metadata']['name']}"
        spec = pod["spec"]
        assert spec["serviceAccountName"] == group["template"]["spec"]["serviceAccountName"], where
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for container in spec["containers"]:
            name = f"{where} container {container['name']}"
            security = container.get("securityContext", {})
            assert security.get("allowPrivilegeEscalation") is False, name
            assert security.get("capabilities", {}).get("drop") == ["ALL"], name
            resources = container["resources"]
            assert resources.get("limits") and resources.get("requests"), name
            gpus = {k: v for k, v in resources["limits"].items() if k.endswith("gpu")}
            assert gpus == {k: v for k, v in resources["requests"].items() if k.endswith("gpu")}, name
        ray = spec["containers"][0]
        template = group["template"]["spec"]["containers"][0]
        assert ray["image"] == template["image"], where
        assert ray["resources"] == template["resources"], where
        # rayStartParams reach `ray start`; num-gpus equals the container's GPU limit.
        command = _ray_start(ray)
        for param, value in group["rayStartParams"].items():
            if param in ("num-cpus", "num-gpus"):
                assert f"--{param}={value}" in command, f"{where}: --{param}={value} not in {command}"
        gpu_limit = sum(int(v) for k, v in ray["resources"]["limits"].items() if k.endswith("gpu"))
        if gpu_limit:
            assert f"--num-gpus={gpu_limit}" in command, f"{where}: {command}"
        assert re.search(r"--num-gpus=(?!0)", command) is None or gpu_limit, f"{where}: GPUs claimed without a limit"
        if config.get("authOptions", {}).get("mode") == "token":  # Ray token auth: KubeRay injects it
            env = {e["name"]: e for e in ray.get("env", [])}
            assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", where
            assert "secretKeyRef" in env.get("RAY_AUTH_TOKEN", {}).get("valueFrom", {}), where
        if group_name == "headgroup" and config.get("enableInTreeAutoscaling"):
            sidecars = [c for c in spec["containers"] if c["name"] == "autoscaler"]
            assert sidecars and sidecars[0]["resources"] == config["autoscalerOptions"]["resources"], where
        assert pod["status"].get("phase") == "Pending", where  # no kubelet, no scheduler
    wanted = {"headgroup": 1, **{g["groupName"]: expected_workers(g) for g in config["workerGroupSpecs"]}}
    assert per_group == {k: v for k, v in wanted.items() if v}


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_the_rayservice_is_initializing_and_both_health_checks_say_progressing(env: str, reconciled: dict) -> None:
    live = reconciled[env]["live"]
    ready = condition(live, "Ready")
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("False", "Initializing"), ready
    upgrading = condition(live, "UpgradeInProgress")
    assert upgrading is not None and upgrading["status"] == "False", upgrading
    assert live["status"]["observedGeneration"] == live["metadata"]["generation"]
    # The cluster is still the pending one: it never becomes active, so KubeRay creates no Serve Service.
    rc = reconciled[env]["raycluster"]["metadata"]["name"]
    assert live["status"]["pendingServiceStatus"]["rayClusterName"] == rc
    assert not [s for s in reconciled[env]["services"] if s["metadata"]["name"].endswith("-serve-svc")]
    status, _ = argocd_health(live)
    assert status == "Progressing"
    assert flux_health(live) == "InProgress"


# --- a RayService KubeRay refuses -----------------------------------------------------------------------


def invalid_overlay(rendered: dict[str, list[dict]]) -> list[dict]:
    docs = copy.deepcopy(rendered["dev"])
    find(docs, "RayService")["metadata"]["annotations"][TIMEOUT_ANNOTATION] = BAD_TIMEOUT
    return docs


def test_a_rayservice_the_operator_refuses_ends_validation_failed(
    cluster: ControlPlane, rendered: dict[str, list[dict]]
) -> None:
    """KubeRay v1.6 validateInitializingTimeout (controllers/ray/utils/validation.go): the API server and
    kubeconform accept any annotation value; the operator refuses the RayService and never reconciles it."""
    ns = OPERATOR_NAMESPACES["invalid"]
    docs = retarget(invalid_overlay(rendered), ns)
    ensure_namespaces(cluster, docs)
    apply(cluster, docs, where=f"dev overlay with a bad {TIMEOUT_ANNOTATION} in {ns}")
    live = wait_for(f"{ns}: the RayService Ready condition", lambda: (
        r if condition(r := cluster.get_json("rayservice", "support-assistant", "-n", ns), "Ready") else None))
    ready = condition(live, "Ready")
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("False", "ValidationFailed")
    assert f"annotation {TIMEOUT_ANNOTATION} has invalid format: {BAD_TIMEOUT}" in ready["message"]
    assert items(cluster, "raycluster", ns) == []
    assert argocd_health(live) == ("Degraded", ready["message"])
    assert flux_health(live) == "Failed"


def test_conftest_refuses_it_before_merge(rendered: dict[str, list[dict]], tmp_path: Path) -> None:
    path = tmp_path / "dev.yaml"
    path.write_text(yaml.safe_dump_all(invalid_overlay(rendered), sort_keys=False))
    ok, lines = run_conftest(path, "dev")
    failures = [line for line in lines if line.startswith("FAIL")]
    assert not ok
    assert len(failures) == 1 and "[initializing-timeout] RayService/support-assistant" in failures[0], lines
