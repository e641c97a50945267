"""The control plane itself: the pinned versions, loopback only, and nothing left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from kube import wait_for
from repoctl import flux
from repoctl.cluster import OPERATOR, ControlPlane
from repoctl.paths import ROOT, versions
from repoctl.sockets import is_loopback, listeners


def _gone(pids: list[int]) -> bool:
    return not any(Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in pids)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1]
    except (OSError, IndexError):
        return "Z"


def test_server_and_client_are_the_pinned_version(cluster: ControlPlane) -> None:
    reported = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    pinned = versions()["KUBERNETES_SERVER_VERSION"]
    assert reported["serverVersion"]["gitVersion"] == reported["clientVersion"]["gitVersion"] == pinned


def test_validating_admission_policy_api_is_served(cluster: ControlPlane) -> None:
    resources = cluster.kubectl("api-resources", "--api-group=admissionregistration.k8s.io", "-o", "name").stdout
    assert "validatingadmissionpolicies.admissionregistration.k8s.io" in resources.split()


def test_everything_listens_on_loopback_only(cluster: ControlPlane, flux_controllers: flux.Flux) -> None:
    """Every process of the session's control plane, Flux's controllers and its git server included."""
    assert set(cluster.pids) >= {"etcd", "kube-apiserver", OPERATOR, *flux.CONTROLLERS, flux.GIT_SERVER}
    found = listeners(list(cluster.pids.values()))
    assert found, "no listening socket found at all: the /proc reader is broken"
    assert [f for f in found if not is_loopback(f[1])] == []
    by_name = {name: sorted(port for p, _, port in found if p == pid) for name, pid in cluster.pids.items()}
    assert len(by_name["kube-apiserver"]) == 1  # the secure port, nothing else
    assert by_name[OPERATOR] == []  # metrics and health probes are off
    # Flux: metrics and health probes each; source-controller also its artifact server; the git server one.
    assert {n: len(by_name[n]) for n in (*flux.CONTROLLERS, flux.GIT_SERVER)} == {
        "source-controller": 3, "kustomize-controller": 2, "helm-controller": 2, flux.GIT_SERVER: 1}  # fmt: skip
    assert int(flux_controllers.storage_address.rsplit(":", 1)[1]) in by_name["source-controller"]


def test_cluster_command_up_status_down(tmp_path: Path) -> None:
    """`repoctl cluster up` runs in the background until `down`; then nothing of it is left."""
    env = {**os.environ, "REPOCTL_CLUSTER_DIR": str(tmp_path / "state")}
    repoctl = [sys.executable, "-m", "repoctl.cli", "cluster"]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*repoctl, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)

    up = run("up", "--no-crds", "--no-operator")
    try:
        assert up.returncode == 0, up.stderr
        assert f"export KUBECONFIG={tmp_path / 'state' / 'kubeconfig'}" in up.stdout
        state = json.loads((tmp_path / "state" / "state.json").read_text())
        status = run("status")
        assert status.returncode == 0 and "kube-apiserver" in status.stdout and "127.0.0.1:" in status.stdout
    finally:
        down = run("down")
    assert down.returncode == 0, down.stderr
    pids = list(state["pids"].values())
    wait_for("`repoctl cluster down` to end every process", lambda: _gone(pids), timeout=20)
    assert run("status").returncode == 1
    assert not (tmp_path / "state").exists()


def test_a_killed_test_run_leaves_nothing_running(tmp_path: Path) -> None:
    """Even SIGKILL of the process that started the control plane (a pytest killed by CI) ends it."""
    script = textwrap.dedent(f"""
        import json, sys, time
        from pathlib import Path
        from repoctl.cluster import ControlPlane
        cp = ControlPlane.start(Path({str(tmp_path / "cp")!r}))
        print(json.dumps(list(cp.pids.values())), flush=True)
        time.sleep(600)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = child.stdout.readline() if child.stdout else ""
        pids = json.loads(line)
        assert len(pids) == 2 and not _gone(pids)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    wait_for("the control plane to die with its parent", lambda: _gone(pids), timeout=20)
