"""Flux's controllers against the local control plane: source-controller, kustomize-controller and
helm-controller (built by `make setup` from tools/controlplane, versions in versions.env) as plain processes
with the control plane's kubeconfig, plus the loopback git server they pull this repository from.

Every listener is on 127.0.0.1: each controller's metrics and health probes, source-controller's artifact
server (the address it advertises in artifact URLs too, which kustomize- and helm-controller download from),
and the git server. Their outbound HTTP(S) goes to a proxy address on loopback where nothing listens, so a
source outside this machine (the KubeRay chart repository in infrastructure/) fails at once with the
controller's own message and no request leaves the machine; Go never proxies loopback, so the git server and
the artifact server are reached directly. Artifacts live in the control plane's folder and go with it.
docs/flux.md says what this proves and what it cannot.
"""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from repoctl import gitserver
from repoctl.cluster import FIELD_MANAGER, LOOPBACK, ClusterError, ControlPlane, _http_ok, binary, free_port
from repoctl.paths import ROOT
from repoctl.render import kustomize_build, load_documents

NAMESPACE = "flux-system"  # where clusters/flux/base puts the GitRepository and the Kustomizations
CONTROLLERS = ("source-controller", "kustomize-controller", "helm-controller")
GIT_SERVER = "git-server"
# How often a Kustomization or HelmRelease whose dependsOn is not ready looks again (default 30s).
REQUEUE_DEPENDENCY = "5s"


@dataclass
class Flux:
    """What `start()` started: the controllers' health endpoints, the artifact server, the git server."""

    health: dict[str, str]  # controller -> http://127.0.0.1:PORT (readyz, healthz)
    storage: Path
    storage_address: str
    git_root: Path  # the folder the git server serves; FOLDER/support-assistant-gitops.git
    git_url: str  # what the GitRepository's spec.url must be
    commit: str  # the commit published as main when it started

    def to_state(self) -> dict:
        return {"health": self.health, "storage": str(self.storage), "storage_address": self.storage_address,
                "git_root": str(self.git_root), "git_url": self.git_url, "commit": self.commit}  # fmt: skip


def _listening(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return False
    return True


def _controller_argv(name: str, health_port: int, metrics_port: int) -> list[str]:
    return [
        binary(name),
        f"--metrics-addr={LOOPBACK}:{metrics_port}",
        f"--health-addr={LOOPBACK}:{health_port}",
        "--enable-leader-election=false",  # one replica; no Lease objects to clean up
        "--watch-all-namespaces=true",
        "--log-encoding=console",
        "--events-addr=",  # no notification-controller: events go to the API server only
    ]


def start(cp: ControlPlane, *, repo: Path = ROOT, timeout: float = 120.0) -> Flux:
    """Publish the commit under test on a loopback git server and start the three controllers (the Flux
    CRDs must be installed: ControlPlane.install_crds). Everything stops with cp.stop()."""
    folder = cp.workdir / "flux"
    storage = folder / "storage"
    git_root = folder / "git"
    storage.mkdir(parents=True, exist_ok=True)
    git_root.mkdir(parents=True, exist_ok=True)
    try:
        commit = gitserver.publish(repo, git_root)
    except gitserver.GitError as exc:
        raise ClusterError(f"cannot publish {repo} on the git server: {exc}") from None
    if cp.kubectl("get", "namespace", NAMESPACE, check=False).returncode != 0:
        cp.kubectl("create", "namespace", NAMESPACE)

    git_port = free_port()
    cp.start_process(GIT_SERVER, [sys.executable, "-m", "repoctl.gitserver", str(git_root), f"--port={git_port}"],
                     lambda: _http_ok(f"{gitserver.url(git_port)}/info/refs?service=git-upload-pack"),
                     timeout=timeout)  # fmt: skip

    dead_proxy = f"http://{LOOPBACK}:{free_port()}"  # nothing listens there
    env = {"KUBECONFIG": str(cp.kubeconfig), "RUNTIME_NAMESPACE": NAMESPACE,
           "HTTPS_PROXY": dead_proxy, "HTTP_PROXY": dead_proxy, "NO_PROXY": LOOPBACK,
           "https_proxy": dead_proxy, "http_proxy": dead_proxy, "no_proxy": LOOPBACK}  # fmt: skip
    storage_address = f"{LOOPBACK}:{free_port()}"
    extra = {
        "source-controller": [f"--storage-path={storage}", f"--storage-addr={storage_address}",
                              f"--storage-adv-addr={storage_address}"],
        # A new commit cancels a health check in progress instead of waiting out its timeout: the RayService
        # can never get Ready here (no kubelet), so every check would otherwise hold the next commit back.
        "kustomize-controller": [f"--requeue-dependency={REQUEUE_DEPENDENCY}", "--no-remote-bases=true",
                                 "--feature-gates=CancelHealthCheckOnNewRevision=true"],
        # SIGTERM waits this long for a release in flight (default 10 minutes).
        "helm-controller": [f"--requeue-dependency={REQUEUE_DEPENDENCY}", "--graceful-shutdown-timeout=5s"],
    }
    health = {}
    for name in CONTROLLERS:
        health_port = free_port()
        health[name] = f"http://{LOOPBACK}:{health_port}"
        argv = _controller_argv(name, health_port, free_port()) + extra[name]
        # source-controller's artifact server starts after its probes: wait for it too.
        served = (lambda: _listening(storage_address)) if name == "source-controller" else (lambda: True)
        cp.start_process(name, argv, lambda url=health[name], served=served: _http_ok(f"{url}/readyz") and served(),
                         env=env, timeout=timeout)  # fmt: skip
    return Flux(health=health, storage=storage, storage_address=storage_address, git_root=git_root,
                git_url=gitserver.url(git_port), commit=commit)  # fmt: skip


def entry(env: str, git_url: str) -> list[dict]:
    """clusters/flux/<env> as the repository has it, with the GitRepository pointed at the loopback git
    server: the only change, since nothing else in it names where the repository lives."""
    docs = load_documents(kustomize_build(f"clusters/flux/{env}"))
    sources = [d for d in docs if d["kind"] == "GitRepository"]
    if len(sources) != 1:
        raise ClusterError(f"clusters/flux/{env}: expected one GitRepository, found {len(sources)}")
    sources[0]["spec"]["url"] = git_url
    return docs


def sync(cp: ControlPlane, env: str, git_url: str) -> list[dict]:
    """Apply clusters/flux/<env> (entry()) server-side, as `flux bootstrap` would have put it there."""
    import yaml

    docs = entry(env, git_url)
    cp.kubectl("apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "-f", "-",
               stdin=yaml.safe_dump_all(docs, sort_keys=False))  # fmt: skip
    return docs
