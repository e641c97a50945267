"""One real control plane for every test in tests/cluster (docs/controlplane.md).

The session fixture `cluster` starts etcd + kube-apiserver on loopback (repoctl.cluster), installs the
pinned CRDs with server-side apply and the repository's ValidatingAdmissionPolicies (waiting until the
server enforces them), and starts the real KubeRay operator watching the OPERATOR_NAMESPACES only, so that
the apply tests' own objects (namespace support-assistant, ...) are never touched by a controller and a
re-apply can prove it is a no-op. `flux_controllers` adds Flux's controllers and the loopback git server
(repoctl.flux, docs/flux.md) to the same control plane, once, for the first test that asks. It is torn
down at the end of the session whatever happened: the finalizer, an atexit hook, and PR_SET_PDEATHSIG on
every child in case pytest itself is killed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kube import ENFORCE_LABEL, OPERATOR_NAMESPACES, PROBE_NAMESPACE, admission_path, apply, wait_for
from repoctl import flux
from repoctl.cluster import OPERATOR, ControlPlane
from repoctl.render import kustomize_build, load_documents


def _admission_enforced(cp: ControlPlane) -> bool:
    """A LoadBalancer Service exposing the dashboard in an enforced namespace is refused (the policies are
    loaded by the server a moment after they are created)."""
    probe = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "probe", "namespace": PROBE_NAMESPACE},
             "spec": {"type": "LoadBalancer", "ports": [{"name": "dashboard", "port": 8265}]}}
    ok, stderr, _ = apply(cp, [probe], where="admission probe", dry_run=True, check=False)
    return not ok and "ValidatingAdmissionPolicy" in stderr


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    cp = ControlPlane.start(Path(tmp_path_factory.mktemp("controlplane")))
    try:
        cp.install_crds()
        policies = load_documents(kustomize_build(admission_path()))
        apply(cp, policies, where=admission_path())
        cp.kubectl("create", "namespace", PROBE_NAMESPACE)
        cp.kubectl("label", "namespace", PROBE_NAMESPACE, f"{ENFORCE_LABEL}=true")
        wait_for("the ValidatingAdmissionPolicies to be enforced", lambda: _admission_enforced(cp), timeout=60)
        cp.start_operator(watch_namespaces=sorted(OPERATOR_NAMESPACES.values()))
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def operator_log(cluster: ControlPlane) -> Path:
    return cluster.logs[OPERATOR]


# The Flux objects test_apply.py applies from clusters/flux/<env> and leaves, never reconciled.
FLUX_KINDS = ",".join(f"{kind}.{group}.toolkit.fluxcd.io" for kind, group in (
    ("gitrepositories", "source"), ("helmrepositories", "source"), ("kustomizations", "kustomize"),
    ("helmreleases", "helm")))  # fmt: skip


@pytest.fixture(scope="session")
def flux_controllers(cluster: ControlPlane) -> flux.Flux:
    """source-, kustomize- and helm-controller plus the git server serving the commit under test, on the
    session's control plane, stopped with it. The apply tests' leftovers go first: no controller has
    touched them yet (no finalizers), and Flux should start from the objects the sync tests apply."""
    cluster.kubectl("delete", FLUX_KINDS, "--all", "-n", flux.NAMESPACE, "--ignore-not-found", "--timeout=60s")
    return flux.start(cluster)
