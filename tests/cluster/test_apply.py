"""Every overlay and every sync entry, applied to the real API server the way Argo CD and Flux apply it.

Per target: `kubectl apply --server-side --dry-run=server`, then for real, then once more, which must
change nothing (same resourceVersion for every object: no drift from server defaulting, no field-manager
conflict). The admission policies are enforced while this runs (conftest.py), so each overlay is also
admitted by them. A mutated overlay fails with the server's message naming the object and the rule.
"""

from __future__ import annotations

import copy

import pytest
from kube import apply, ensure_namespaces, target_paths
from repoctl.cluster import ControlPlane
from repoctl.render import find, kustomize_build, load_documents

TARGETS = target_paths()


def _apply_target(cluster: ControlPlane, path: str, docs: list[dict]) -> dict[tuple, dict]:
    ensure_namespaces(cluster, docs)
    _, _, dry = apply(cluster, docs, where=f"{path} (--dry-run=server)", dry_run=True)
    _, _, first = apply(cluster, docs, where=path)
    assert set(dry) == set(first) == {(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"])
                                      for d in docs}  # fmt: skip
    return first


def _content(obj: dict) -> dict:
    """The object without what every write changes (resourceVersion, managedFields timestamps)."""
    obj = copy.deepcopy(obj)
    obj["metadata"].pop("resourceVersion", None)
    obj["metadata"].pop("managedFields", None)
    return obj


@pytest.mark.parametrize("path", TARGETS)
def test_target_applies_server_side_and_reapplies_as_a_no_op(cluster: ControlPlane, path: str) -> None:
    docs = load_documents(kustomize_build(path))
    assert docs, f"{path} renders nothing"
    first = _apply_target(cluster, path, docs)
    _, _, second = apply(cluster, docs, where=f"{path} (second apply)")
    drift = [f"{k[0]}/{k[2]}" for k, obj in second.items() if _content(obj) != _content(first[k])]
    assert drift == [], f"{path}: the second apply changed these objects (drift or a competing field manager)"
    # A write without a change: the server persisting a default of its own. Flux's CRDs default
    # status.observedGeneration to -1, which the first update after the create stores once. After that,
    # applying again must not write at all.
    rewritten = [k for k, obj in second.items()
                 if obj["metadata"]["resourceVersion"] != first[k]["metadata"]["resourceVersion"]]  # fmt: skip
    if rewritten:
        _, _, third = apply(cluster, docs, where=f"{path} (third apply)")
        still = [f"{k[0]}/{k[2]}" for k in rewritten
                 if third[k]["metadata"]["resourceVersion"] != second[k]["metadata"]["resourceVersion"]]  # fmt: skip
        assert still == [], f"{path}: every apply writes these objects again"


def test_every_environment_and_sync_tool_is_a_target() -> None:
    for prefix in ("overlays", "clusters/argocd", "clusters/flux"):
        assert {f"{prefix}/{env}" for env in ("dev", "staging", "prod")} <= set(TARGETS), TARGETS


def test_server_defaults_what_git_leaves_out(cluster: ControlPlane, rendered: dict[str, list[dict]]) -> None:
    """What kubeconform cannot see: the server fills in CRD defaults before validating (and a re-apply
    does not fight them, see above)."""
    rs = copy.deepcopy(find(rendered["dev"], "RayService"))
    for group in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        group.pop("minReplicas"), group.pop("maxReplicas")
    _, _, out = apply(cluster, [rs], where="dev RayService without worker bounds", dry_run=True)
    (served,) = out.values()
    bounds = [(g["minReplicas"], g["maxReplicas"]) for g in served["spec"]["rayClusterConfig"]["workerGroupSpecs"]]
    assert bounds == [(0, 2147483647)] * len(bounds)


# --- a broken overlay fails naming the object and the rule ---------------------------------------------


def _mutated_dev(rendered: dict[str, list[dict]], mutate) -> list[dict]:
    docs = copy.deepcopy(rendered["dev"])
    mutate(find(docs, "RayService"))
    return docs


def test_a_crd_validation_rule_failure_names_the_object_and_the_rule(
    cluster: ControlPlane, rendered: dict[str, list[dict]]
) -> None:
    """spec.rayClusterConfig.managedBy has an x-kubernetes-validations rule in KubeRay's CRD, which the
    kubeconform schemas cannot express: only the API server refuses this."""
    docs = _mutated_dev(rendered, lambda rs: rs["spec"]["rayClusterConfig"].update(managedBy="argocd.argoproj.io"))
    ensure_namespaces(cluster, docs)
    with pytest.raises(AssertionError) as failure:
        apply(cluster, docs, where="overlays/dev", dry_run=True)
    message = str(failure.value)
    assert message.startswith("overlays/dev: kubectl apply")
    assert 'The RayService "support-assistant" is invalid' in message
    assert "spec.rayClusterConfig.managedBy" in message
    assert "the managedBy field value must be either 'ray.io/kuberay-operator'" in message


def test_an_admission_policy_refusal_names_the_object_the_policy_and_the_rule(
    cluster: ControlPlane, rendered: dict[str, list[dict]]
) -> None:
    def escalate(rs: dict) -> None:
        gpu = next(g for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"] if g["groupName"] == "gpu")
        gpu["template"]["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True

    docs = _mutated_dev(rendered, escalate)
    ensure_namespaces(cluster, docs)
    with pytest.raises(AssertionError) as failure:
        apply(cluster, docs, where="overlays/dev", dry_run=True)
    message = str(failure.value)
    assert 'rayservices.ray.io "support-assistant" is forbidden' in message
    assert "ValidatingAdmissionPolicy 'support-assistant-pod-security'" in message
    assert ("[pod-security-context] RayService/support-assistant: spec.rayClusterConfig.workerGroupSpecs"
            "[groupName=gpu].template.spec.containers[ray-worker].securityContext.allowPrivilegeEscalation "
            "is not false") in message  # fmt: skip
