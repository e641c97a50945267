"""Helpers for the tests against the real API server (tests/cluster): apply, read back, wait.

Failures are AssertionErrors whose message is what a person needs: the target, then the API server's own
words, which name the object (`RayService.ray.io "support-assistant" is invalid: ...`, or `... is
forbidden: ValidatingAdmissionPolicy '...' denied request: [rule] ...`).
"""

from __future__ import annotations

import copy
import glob
import importlib
import importlib.util
import json
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import yaml
from repoctl.cluster import FIELD_MANAGER, ControlPlane
from repoctl.paths import ROOT

T = TypeVar("T")
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ValidatingAdmissionPolicy",
                  "ValidatingAdmissionPolicyBinding", "ClusterRole", "ClusterRoleBinding"}  # fmt: skip
ENFORCE_LABEL = "support-assistant.acme.dev/enforce"
# A namespace labelled for the admission policies, where the admission tests send their dry runs.
PROBE_NAMESPACE = "admission-probe"
# Where the operator tests put each overlay's RayService (and the one KubeRay refuses); the operator
# watches only these, so that nothing reconciles the objects the apply tests re-apply.
# "flux": where test_flux_sync.py's own Kustomization puts overlays/dev (Flux applies it, the operator reconciles).
OPERATOR_NAMESPACES = {"dev": "reconcile-dev", "staging": "reconcile-staging", "prod": "reconcile-prod",
                       "invalid": "reconcile-invalid", "flux": "reconcile-flux",
                       # the dev overlay with the image the tests built and pushed (test_promoted_image.py)
                       "promoted": "reconcile-promoted"}  # fmt: skip


def target_paths() -> list[str]:
    """Every kustomization something syncs; the discovery lives in repoctl (render.py, formerly validate.py)."""
    for module in ("repoctl.render", "repoctl.validate"):
        found = getattr(importlib.import_module(module), "target_paths", None)
        if found is not None:
            return found()
    raise AssertionError("repoctl has no target_paths() in render.py or validate.py")


def load_module(path: Path, name: str) -> ModuleType:
    """Another test area's module (its cases or helpers), imported by path under a name of its own."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def admission_path() -> str:
    """The folder of the ValidatingAdmissionPolicies, wherever it lives (base/admission, infrastructure/admission)."""
    found = sorted(Path(p).parent.relative_to(ROOT).as_posix()
                   for p in glob.glob(str(ROOT / "*" / "admission" / "kustomization.yaml")))  # fmt: skip
    assert len(found) == 1, f"expected one */admission/kustomization.yaml, found {found}"
    return found[0]


def dump(docs: Iterable[dict]) -> str:
    return yaml.safe_dump_all(list(docs), sort_keys=False)


def key(doc: dict) -> tuple[str, str, str]:
    meta = doc["metadata"]
    return doc["kind"], meta.get("namespace", ""), meta["name"]


def apply(cp: ControlPlane, docs: list[dict], *, where: str, dry_run: bool = False,
          server_side: bool = True, check: bool = True) -> tuple[bool, str, dict[tuple, dict]]:
    """kubectl apply of the documents (server-side by default, as Argo CD and Flux apply here).
    Returns (ok, stderr, {(kind, namespace, name): the object the server returned})."""
    args = ["apply", "-f", "-", "-o", "json"]
    if server_side:
        args += ["--server-side", f"--field-manager={FIELD_MANAGER}"]
    if dry_run:
        args.append("--dry-run=server")
    result = cp.kubectl(*args, stdin=dump(docs), check=False)
    ok = result.returncode == 0
    if check:
        assert ok, f"{where}: kubectl {' '.join(args[:1] + args[5:])} refused it:\n{result.stderr.strip()}"
    objects: dict[tuple, dict] = {}
    if result.stdout.strip():
        out = json.loads(result.stdout)
        for obj in out.get("items", [out]) if out.get("kind") == "List" else [out]:
            objects[key(obj)] = obj
    return ok, result.stderr.strip(), objects


def ensure_namespaces(cp: ControlPlane, docs: list[dict]) -> None:
    """Make the namespaces the documents live in exist first: the ones they define are applied (server-side,
    like the rest), the others (argocd, flux-system: a sync engine brings its own) are created. A server-side
    dry run cannot admit objects into a namespace that is not there yet (Argo CD and Flux apply Namespaces
    first for the same reason)."""
    namespaces = [d for d in docs if d["kind"] == "Namespace"]
    if namespaces:
        apply(cp, namespaces, where="namespaces")
    defined = {d["metadata"]["name"] for d in namespaces}
    wanted = {d["metadata"].get("namespace") for d in docs} - defined - {None, ""}
    for namespace in sorted(wanted):
        if cp.kubectl("get", "namespace", namespace, check=False).returncode != 0:
            cp.kubectl("create", "namespace", namespace)


def retarget(docs: list[dict], namespace: str) -> list[dict]:
    """The documents moved to another namespace (the Namespace object renamed, labels kept)."""
    moved = copy.deepcopy(docs)
    for doc in moved:
        if doc["kind"] == "Namespace":
            doc["metadata"]["name"] = namespace
        elif doc["kind"] not in CLUSTER_SCOPED:
            doc["metadata"]["namespace"] = namespace
    return moved


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.25) -> T:
    """Poll probe() until it returns something truthy; fail naming `what` (and the last value) on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def condition(obj: dict, type_: str) -> dict | None:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c.get("type") == type_), None)


def items(cp: ControlPlane, kind: str, namespace: str, *selector: str) -> list[dict]:
    args = [kind, "-n", namespace, *(("-l", selector[0]) if selector else ())]
    return cp.get_json(*args)["items"]
