"""Flux really syncs this repository: source-, kustomize- and helm-controller (built by `make setup`,
versions.env) pull it from a git server on loopback and apply it to the session's control plane, where the
admission policies are enforced and the real KubeRay operator reconciles what Flux applied (docs/flux.md).

clusters/flux/dev is applied as the repository has it, except the GitRepository's URL (the loopback server)
and its polling interval (seconds instead of a minute). Its `support-assistant` Kustomization dependsOn
`infrastructure`, whose HelmRelease can never install here (no chart repository), so the app layer is
synced by a Kustomization of the test's own: the repository's `support-assistant` spec minus dependsOn,
with a targetNamespace the operator watches and the shortest health-check timeout Flux allows (30s; no
kubelet: the RayService can never get Ready, and kustomize-controller holds each reconcile for the whole
timeout, 20m in git; a new commit cancels the check, repoctl.flux). For the same reason lastAppliedRevision
(set only once the health checks pass) never moves here: a commit counts as applied once Flux has applied
it and started checking its health, `Running health checks for revision <commit>`.
Commits are made in a clone of the served repository and pushed to it, as a merge to main would be.
Every wait that fails names the Flux object, its Ready reason and its message.
"""

from __future__ import annotations

import copy
import datetime
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from kube import OPERATOR_NAMESPACES, condition, wait_for
from repoctl import flux, gitserver
from repoctl.cluster import OPERATOR, ControlPlane
from repoctl.paths import BIN, versions
from repoctl.promote import Release, edit_kustomization, kustomization_path

NS = flux.NAMESPACE
APP_NAMESPACE = OPERATOR_NAMESPACES["flux"]
APP = "support-assistant-app"  # the test's own Kustomization of ./overlays/dev
SOURCE = "support-assistant-gitops"  # the GitRepository of clusters/flux/base
HEALTH_TIMEOUT = "30s"  # GetTimeout() never gives less
FLUX_LABEL = "kustomize.toolkit.fluxcd.io/name"
REQUESTED_AT = "reconcile.fluxcd.io/requestedAt"


# --- describing and waiting on Flux objects -------------------------------------------------------------


def ready(obj: dict) -> str:
    """`Kind namespace/name: Ready=<status> reason=<reason>: <message>`, what a failure must say."""
    meta = obj.get("metadata", {})
    cond = condition(obj, "Ready") or {}
    return (f"{obj.get('kind')} {meta.get('namespace')}/{meta.get('name')}: Ready={cond.get('status', '?')} "
            f"reason={cond.get('reason', '?')}: {cond.get('message', '(no Ready condition)')}")  # fmt: skip


def get(cluster: ControlPlane, kind: str, name: str, namespace: str = NS) -> dict:
    result = cluster.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
    return yaml.safe_load(result.stdout) if result.returncode == 0 else {"kind": kind, "metadata": {"name": name}}


def wait_flux(cluster: ControlPlane, kind: str, name: str, until: Callable[[dict], bool], what: str,
              timeout: float = 120) -> dict:
    """Poll the Flux object until until(obj); on timeout fail with its Ready reason and message."""
    seen: dict = {}

    def probe() -> dict | None:
        seen["obj"] = get(cluster, kind, name)
        return seen["obj"] if until(seen["obj"]) else None

    try:
        return wait_for(what, probe, timeout=timeout, interval=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc.args[0].split(' (last:')[0]}; {ready(seen.get('obj', {}))}") from None


def is_ready(obj: dict) -> bool:
    return (condition(obj, "Ready") or {}).get("status") == "True"


def reconcile(cluster: ControlPlane, kind: str, name: str) -> str:
    """Ask for a reconcile now (what `flux reconcile` does); returns the token to wait for in
    status.lastHandledReconcileAt."""
    token = datetime.datetime.now(datetime.UTC).isoformat()
    cluster.kubectl("annotate", "--overwrite", kind, name, "-n", NS, f"{REQUESTED_AT}={token}")
    return token


def revision(sha: str) -> str:
    return f"{gitserver.BRANCH}@sha1:{sha}"


def has_applied(kustomization: dict, sha: str) -> bool:
    """kustomize-controller applied the commit: it passed its health checks (lastAppliedRevision), or it
    went on to them, which it does only after every object was applied and the stale ones pruned."""
    status = kustomization.get("status", {})
    if status.get("lastAppliedRevision") == revision(sha):
        return True
    checking = (condition(kustomization, "Reconciling") or {}).get("message", "")
    return status.get("lastAttemptedRevision") == revision(sha) and checking.startswith(
        f"Running health checks for revision {revision(sha)} ")  # fmt: skip


# --- the sync -------------------------------------------------------------------------------------------


@dataclass
class Sync:
    cluster: ControlPlane
    flux: flux.Flux
    work: Path  # a clone of the served repository that the tests commit to

    def commit(self, message: str, change: Callable[[Path], None]) -> str:
        """Change the clone, commit, push to the served repository; returns the new commit's sha."""
        gitserver.git("pull", "--quiet", "--ff-only", cwd=self.work)
        change(self.work)
        gitserver.git("commit", "--quiet", "-am", message, cwd=self.work)
        gitserver.git("push", "--quiet", "origin", f"HEAD:{gitserver.BRANCH}", cwd=self.work)
        return gitserver.git("rev-parse", "HEAD", cwd=self.work)

    def applied(self, sha: str, timeout: float = 120) -> dict:
        """Wait until the app Kustomization has applied (and pruned for) the commit: it is checking the
        health of what it applied at that revision, or has done so."""
        return wait_flux(self.cluster, "kustomization", APP, lambda k: has_applied(k, sha),
                         f"Kustomization {NS}/{APP} to apply {sha[:12]}", timeout)  # fmt: skip

    def rayservice(self) -> dict:
        return self.cluster.get_json("rayservice", "support-assistant", "-n", APP_NAMESPACE, "--show-managed-fields")


def app_kustomization(entry: list[dict]) -> dict:
    """The repository's support-assistant Kustomization (clusters/flux/dev) as the app layer's own: minus
    dependsOn, in APP_NAMESPACE, with a health-check timeout the test can wait out."""
    (repo_app,) = [d for d in entry if d["kind"] == "Kustomization" and d["metadata"]["name"] == "support-assistant"]
    app = copy.deepcopy(repo_app)
    app["metadata"] = {"name": APP, "namespace": NS}
    del app["spec"]["dependsOn"]
    app["spec"]["targetNamespace"] = APP_NAMESPACE
    for check in app["spec"]["healthChecks"]:
        check["namespace"] = APP_NAMESPACE
    app["spec"]["timeout"] = HEALTH_TIMEOUT
    return app


@pytest.fixture(scope="module")
def sync(cluster: ControlPlane, flux_controllers: flux.Flux,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sync]:  # fmt: skip
    started = flux_controllers
    entry = flux.entry("dev", started.git_url)
    source = next(d for d in entry if d["kind"] == "GitRepository")
    source["spec"]["interval"] = "2s"  # new commits are seen within seconds (git: 1m)
    cluster.kubectl("apply", "--server-side", "--field-manager=flux-test", "-f", "-",
                    stdin=yaml.safe_dump_all([*entry, app_kustomization(entry)], sort_keys=False))  # fmt: skip
    work = tmp_path_factory.mktemp("flux-work") / "repo"
    gitserver.git("clone", "--quiet", str(started.git_root / gitserver.REPOSITORY), str(work))
    yield Sync(cluster, started, work)
    # The tests after these need no sync in the background: suspend it (what `flux suspend` does).
    for kind, name in (("kustomization", "infrastructure"), ("kustomization", "support-assistant"),
                       ("kustomization", APP), ("gitrepository", SOURCE)):  # fmt: skip
        cluster.kubectl("patch", kind, name, "-n", NS, "--type=merge", "-p", '{"spec": {"suspend": true}}',
                        check=False)  # fmt: skip


@pytest.fixture(scope="module")
def first_sync(sync: Sync) -> dict:
    """The app Kustomization once it has applied the served commit."""
    return sync.applied(sync.flux.commit, timeout=180)


# --- the controllers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "module", "key"), [
    ("source-controller", "github.com/fluxcd/source-controller", "FLUX_SOURCE_CONTROLLER_VERSION"),
    ("kustomize-controller", "github.com/fluxcd/kustomize-controller", "FLUX_KUSTOMIZE_CONTROLLER_VERSION"),
    ("helm-controller", "github.com/fluxcd/helm-controller", "FLUX_HELM_CONTROLLER_VERSION"),
])  # fmt: skip
def test_controllers_are_built_at_the_pinned_versions(name: str, module: str, key: str) -> None:
    built = subprocess.run(["go", "version", "-m", str(BIN / name)], capture_output=True, text=True, check=True)
    deps = {fields[1]: fields[2] for line in built.stdout.splitlines()
            if len(fields := line.split()) >= 3 and fields[0] in ("mod", "dep")}  # fmt: skip
    assert deps.get(module) == versions()[key], f"bin/{name}: {module} {deps.get(module)}, versions.env {key}"


# --- source, infrastructure, dependsOn ------------------------------------------------------------------


def test_the_git_repository_is_ready_at_the_served_commit(sync: Sync) -> None:
    repo = wait_flux(sync.cluster, "gitrepository", SOURCE, is_ready, f"GitRepository {NS}/{SOURCE} Ready")
    artifact = repo["status"]["artifact"]
    assert artifact["revision"] == revision(sync.flux.commit), ready(repo)
    assert artifact["url"].startswith(f"http://{sync.flux.storage_address}/gitrepository/{NS}/{SOURCE}/")
    assert list(sync.flux.storage.rglob("*.tar.gz")), "no artifact in the control plane's storage folder"


def test_infrastructure_applies_the_admission_policies_and_the_operator_helmrelease(sync: Sync) -> None:
    def applied(kind: str) -> list[str]:
        result = sync.cluster.kubectl("get", kind, "-A", "-l", f"{FLUX_LABEL}=infrastructure", "-o", "name")
        return sorted(result.stdout.split())

    wait_for("the infrastructure Kustomization to apply its objects", lambda: applied("helmreleases"), timeout=120)
    assert applied("helmreleases") == ["helmrelease.helm.toolkit.fluxcd.io/kuberay-operator"]
    assert applied("helmrepositories") == ["helmrepository.source.toolkit.fluxcd.io/kuberay"]
    policies = applied("validatingadmissionpolicies")
    assert "validatingadmissionpolicy.admissionregistration.k8s.io/support-assistant-pod-security" in policies
    assert len(applied("validatingadmissionpolicybindings")) == len(policies) > 1


def test_helm_controller_reports_that_the_chart_cannot_be_fetched(sync: Sync) -> None:
    """No chart repository is reachable: source-controller's HelmRepository says why, helm-controller's
    HelmRelease says its chart is not ready, and the infrastructure Kustomization is not Ready."""
    repo = wait_flux(sync.cluster, "helmrepository", "kuberay", lambda r: condition(r, "Ready") is not None
                     and condition(r, "Ready")["status"] == "False", "HelmRepository kuberay to fail")  # fmt: skip
    assert "https://ray-project.github.io/kuberay-helm/" in ready(repo) or "index" in ready(repo), ready(repo)
    release = wait_flux(sync.cluster, "helmrelease", "kuberay-operator",
                        lambda r: (condition(r, "Ready") or {}).get("status") == "False",
                        "HelmRelease kuberay-operator to report its state")  # fmt: skip
    print(ready(repo), ready(release), sep="\n")
    assert condition(release, "Ready")["reason"] != "InstallSucceeded", ready(release)
    assert not is_ready(get(sync.cluster, "kustomization", "infrastructure")), "infrastructure Ready without operator"


def test_the_app_waits_on_depends_on_and_is_never_applied(sync: Sync) -> None:
    app = wait_flux(sync.cluster, "kustomization", "support-assistant",
                    lambda k: (condition(k, "Ready") or {}).get("reason") == "DependencyNotReady",
                    "Kustomization support-assistant to wait on infrastructure")  # fmt: skip
    assert condition(app, "Ready")["status"] == "False", ready(app)
    assert "dependency 'flux-system/infrastructure' is not ready" in condition(app, "Ready")["message"], ready(app)
    assert "lastAppliedRevision" not in app.get("status", {}), ready(app)
    applied = sync.cluster.kubectl("get", "rayservices", "-A", "-l", f"{FLUX_LABEL}=support-assistant", "-o", "name")
    assert applied.stdout.strip() == ""


# --- the app layer --------------------------------------------------------------------------------------


def test_the_app_layer_is_applied_server_side_and_reconciled_by_the_operator(sync: Sync, first_sync: dict) -> None:
    inventory = {e["id"] for e in first_sync["status"]["inventory"]["entries"]}
    assert f"{APP_NAMESPACE}_support-assistant_ray.io_RayService" in inventory, ready(first_sync)
    assert f"_{APP_NAMESPACE}__Namespace" in inventory, ready(first_sync)
    rs = sync.rayservice()
    managers = {(m["manager"], m["operation"]) for m in rs["metadata"]["managedFields"]}
    assert ("kustomize-controller", "Apply") in managers, managers
    assert rs["metadata"]["labels"][FLUX_LABEL] == APP
    # The operator acts on what Flux applied: its RayCluster and the RayService's conditions.
    cluster_name = wait_for("the operator to create the RayCluster", lambda: sync.cluster.get_json(
        "rayclusters", "-n", APP_NAMESPACE)["items"], timeout=120)[0]["metadata"]["name"]  # fmt: skip
    assert cluster_name.startswith("support-assistant-")

    def with_ready() -> dict | None:
        rs = sync.rayservice()
        return rs if condition(rs, "Ready") else None

    rs = wait_for("the operator to write the RayService's Ready condition", with_ready, timeout=120)
    assert condition(rs, "Ready")["status"] == "False"  # no kubelet: nothing ever runs


def test_the_health_check_reports_the_rayservice_state(sync: Sync, first_sync: dict) -> None:
    """The repository's healthCheckExprs, evaluated by kustomize-controller on the live RayService: not
    Ready (Initializing) is in progress, so the Kustomization times out naming it, never Ready."""
    expected = f"RayService/{APP_NAMESPACE}/support-assistant status: 'InProgress'"
    handled = None
    # On a loaded machine a health check can end in kustomize-controller's own client throttle ("client rate
    # limiter Wait ... would exceed context deadline") before it read the RayService: that says nothing of the
    # RayService, so ask for another reconcile (as `flux reconcile` would) and judge that one; at most twice.
    for _ in range(3):
        app = wait_flux(sync.cluster, "kustomization", APP,
                        lambda k, handled=handled: (condition(k, "Ready") or {}).get("reason") == "HealthCheckFailed"
                        and (handled is None or k.get("status", {}).get("lastHandledReconcileAt") == handled),
                        f"Kustomization {APP} to report the RayService's health", timeout=120)  # fmt: skip
        message = condition(app, "Ready")["message"]
        if "client rate limiter" not in message:
            break
        handled = reconcile(sync.cluster, "kustomization", APP)
    assert expected in message, ready(app)


# --- drift, autoscaler-owned replicas -------------------------------------------------------------------


def test_a_hand_changed_field_is_restored_on_the_next_reconcile(sync: Sync, first_sync: dict) -> None:
    before = sync.rayservice()
    assert before["spec"]["upgradeStrategy"]["type"] == "None"  # overlays/dev/rayservice-patch.yaml
    sync.cluster.kubectl("patch", "rayservice", "support-assistant", "-n", APP_NAMESPACE, "--type=merge",
                         "-p", '{"spec": {"upgradeStrategy": {"type": "NewCluster"}}}')  # fmt: skip
    assert sync.rayservice()["spec"]["upgradeStrategy"]["type"] == "NewCluster"
    token = reconcile(sync.cluster, "kustomization", APP)
    wait_flux(sync.cluster, "kustomization", APP, lambda k: k.get("status", {}).get("lastHandledReconcileAt") == token,
              f"Kustomization {APP} to handle the reconcile request", timeout=120)  # fmt: skip
    restored = sync.rayservice()
    assert restored["spec"]["upgradeStrategy"]["type"] == "None", "the hand-made change survived a reconcile"
    owner = {m["manager"] for m in restored["metadata"]["managedFields"]
             if "f:upgradeStrategy" in m.get("fieldsV1", {}).get("f:spec", {})}  # fmt: skip
    assert owner == {"kustomize-controller"}, owner  # Flux's apply took the field back (force), not shared it


def test_the_worker_replicas_the_autoscaler_owns_are_not_fought_over(sync: Sync, first_sync: dict) -> None:
    """Git declares the RayService; the Ray autoscaler scales the RayCluster the operator made from it
    (patching its workerGroupSpecs[].replicas). Flux never applies a RayCluster, and KubeRay compares the
    RayService with its RayCluster by a hash that leaves replicas out, so git's initial `replicas: 1` is
    never pushed onto the running cluster: a Flux reconcile after the autoscaler scaled changes nothing."""
    raycluster = wait_for("the operator to create the RayCluster",
                          lambda: sync.cluster.get_json("rayclusters", "-n", APP_NAMESPACE)["items"], timeout=120)[0]
    name = raycluster["metadata"]["name"]
    cpu = next(i for i, g in enumerate(raycluster["spec"]["workerGroupSpecs"]) if g["groupName"] == "cpu")
    assert raycluster["spec"]["workerGroupSpecs"][cpu]["replicas"] == 1
    # What the autoscaler does to scale up: patch the RayCluster, within the group's maxReplicas (dev: 2).
    sync.cluster.kubectl("patch", "raycluster", name, "-n", APP_NAMESPACE, "--type=json", "--field-manager=autoscaler",
                         "-p", f'[{{"op": "replace", "path": "/spec/workerGroupSpecs/{cpu}/replicas", "value": 2}}]')
    generation = sync.rayservice()["metadata"]["generation"]
    token = reconcile(sync.cluster, "kustomization", APP)
    wait_flux(sync.cluster, "kustomization", APP, lambda k: k.get("status", {}).get("lastHandledReconcileAt") == token,
              f"Kustomization {APP} to handle the reconcile request", timeout=120)  # fmt: skip
    # Give the operator time to react to the (unchanged) RayService as well: it requeues every few seconds.
    wait_for("the operator to create the second cpu worker pod",
             lambda: len(sync.cluster.get_json("pods", "-n", APP_NAMESPACE, "-l",
                                               f"ray.io/cluster={name},ray.io/group=cpu")["items"]) == 2,
             timeout=60)  # fmt: skip
    rs = sync.rayservice()
    assert rs["metadata"]["generation"] == generation, "Flux rewrote the RayService spec"
    assert rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][cpu]["replicas"] == 1  # git's value, untouched
    scaled = sync.cluster.get_json("raycluster", name, "-n", APP_NAMESPACE)
    assert scaled["spec"]["workerGroupSpecs"][cpu]["replicas"] == 2, "the autoscaler's replicas were reverted"


# --- commits: promotion, prune, a broken commit ---------------------------------------------------------


def _add_patch(work: Path, patch: dict) -> None:
    """One more entry in overlays/dev's patches (a strategic-merge patch given inline)."""
    path = kustomization_path("dev", work)
    kustomization = yaml.safe_load(path.read_text())
    kustomization["patches"].append({"patch": yaml.safe_dump(patch, sort_keys=False)})
    path.write_text(yaml.safe_dump(kustomization, sort_keys=False))


def _images(rs: dict) -> set[str]:
    spec = rs["spec"]["rayClusterConfig"] if "rayClusterConfig" in rs["spec"] else rs["spec"]
    pods = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return {c["image"] for p in pods for c in p["template"]["spec"]["containers"] if c["name"].startswith("ray-")}


def test_a_promotion_commit_reaches_the_rayservice_and_the_operator(sync: Sync, first_sync: dict) -> None:
    """`make promote`'s edit of overlays/dev, committed: Flux applies the new image to the RayService and
    the operator reconciles the new generation. What it does with it is dev's choice, `upgradeStrategy:
    None`: KubeRay prepares no new RayCluster (it says so in its log) and leaves the running one on the old
    image; staging and prod (`NewCluster`) would roll to a new cluster instead."""
    clusters_before = {c["metadata"]["name"]: _images(c) for c in
                       sync.cluster.get_json("rayclusters", "-n", APP_NAMESPACE)["items"]}  # fmt: skip
    log = sync.cluster.logs[OPERATOR]
    log_offset = log.stat().st_size
    release = Release(tag="0.1.1-ray2.60.0", digest="sha256:" + "1" * 64)
    sha = sync.commit("promote dev to 0.1.1", lambda work: kustomization_path("dev", work).write_text(
        edit_kustomization(kustomization_path("dev", work).read_text(), release)))  # fmt: skip
    sync.applied(sha)
    assert _images(sync.rayservice()) == {release.ref()}
    # (KubeRay v1.6 does not keep the RayService's status.observedGeneration: its log is what shows it.)

    def declined() -> list[str]:
        with log.open(errors="replace") as text:
            text.seek(log_offset)
            return [line for line in text if APP_NAMESPACE in line and "Zero-downtime upgrade is disabled" in line]

    wait_for("the operator to decide on the new cluster spec (dev: upgradeStrategy None)", declined, timeout=60)
    clusters_after = {c["metadata"]["name"]: _images(c) for c in
                      sync.cluster.get_json("rayclusters", "-n", APP_NAMESPACE)["items"]}  # fmt: skip
    assert clusters_after == clusters_before, "dev's RayCluster changed although upgradeStrategy is None"


def test_an_object_removed_from_the_overlay_is_pruned(sync: Sync, first_sync: dict) -> None:
    podmonitor = ("podmonitor", "support-assistant-ray", "-n", APP_NAMESPACE)
    assert sync.cluster.kubectl("get", *podmonitor, check=False).returncode == 0
    sha = sync.commit("dev: drop the PodMonitor", lambda work: _add_patch(work, {
        "$patch": "delete", "apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
        "metadata": {"name": "support-assistant-ray"}}))  # fmt: skip
    pruned = f"{APP_NAMESPACE}_support-assistant-ray_monitoring.coreos.com_PodMonitor"

    def inventory(k: dict) -> set[str]:
        return {e["id"] for e in k.get("status", {}).get("inventory", {}).get("entries", [])}

    sync.applied(sha)
    # A loaded machine has shown the "Running health checks" message for the new revision one read before
    # the status carried the new inventory, so wait for the inventory too (a Kustomization that never
    # prunes still fails here, naming its condition).
    wait_flux(sync.cluster, "kustomization", APP, lambda k: has_applied(k, sha) and pruned not in inventory(k),
              f"Kustomization {NS}/{APP} to drop the PodMonitor from its inventory at {sha[:12]}")  # fmt: skip
    gone = sync.cluster.kubectl("get", *podmonitor, check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr, gone.stdout


def test_a_broken_commit_is_refused_and_what_runs_stays_as_it_was(sync: Sync, first_sync: dict) -> None:
    """A commit that the admission policies refuse (a GPU worker allowed to escalate privileges) together
    with a harmless change to another object: Flux dry-runs every object before it applies any, so the
    Kustomization reports the server's refusal and neither object changes."""
    rs_before = sync.rayservice()
    account = ("serviceaccount", "support-assistant", "-n", APP_NAMESPACE)
    account_before = sync.cluster.get_json(*account)
    inventory_before = sync.cluster.get_json("kustomization", APP, "-n", NS)["status"]["inventory"]

    def break_it(work: Path) -> None:
        path = work / "overlays" / "dev" / "rayservice-patch.yaml"
        path.write_text(path.read_text() + "- {op: replace, path: /spec/rayClusterConfig/workerGroupSpecs/1/template"
                        "/spec/containers/0/securityContext/allowPrivilegeEscalation, value: true}\n")  # fmt: skip
        _add_patch(work, {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {
            "name": "support-assistant", "labels": {"flux-test/changed": "true"}}})  # fmt: skip

    sha = sync.commit("dev: let the GPU workers escalate (refused)", break_it)
    app = wait_flux(sync.cluster, "kustomization", APP,
                    lambda k: k.get("status", {}).get("lastAttemptedRevision") == revision(sha)
                    and (condition(k, "Ready") or {}).get("status") == "False",
                    f"Kustomization {APP} to refuse {sha[:12]}")  # fmt: skip
    message = condition(app, "Ready")["message"]
    assert condition(app, "Ready")["reason"] == "ReconciliationFailed", ready(app)
    assert f"RayService/{APP_NAMESPACE}/support-assistant dry-run failed" in message, ready(app)
    assert "ValidatingAdmissionPolicy 'support-assistant-pod-security'" in message, ready(app)
    assert "[pod-security-context] RayService/support-assistant" in message, ready(app)
    assert "allowPrivilegeEscalation is not false" in message, ready(app)
    assert app["status"]["inventory"] == inventory_before, ready(app)
    (last,) = app["status"]["history"][:1]
    assert (last["metadata"]["revision"], last["lastReconciledStatus"]) == (revision(sha), "ReconciliationFailed")
    rs_after = sync.rayservice()
    assert rs_after["metadata"]["generation"] == rs_before["metadata"]["generation"]
    assert rs_after["spec"] == rs_before["spec"]
    assert sync.cluster.get_json(*account)["metadata"].get("labels") == account_before["metadata"].get("labels")

    # Reverting the commit brings the Kustomization back to applying git.
    gitserver.git("revert", "--no-edit", "HEAD", cwd=sync.work)
    gitserver.git("push", "--quiet", "origin", f"HEAD:{gitserver.BRANCH}", cwd=sync.work)
    sync.applied(gitserver.git("rev-parse", "HEAD", cwd=sync.work))
