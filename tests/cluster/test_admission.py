"""The repository's ValidatingAdmissionPolicies, enforced by the real API server (installed by conftest.py).

Each bad-manifest fixture in tests/policies/fixtures whose rule the policies mirror (pod-security and
exposure) is sent to the server as a dry run into an enforced namespace: the server must refuse it, and
its message must be the one conftest prints for the same fixture (conftest names worker groups by index,
CEL by groupName; nothing else may differ). The real overlays are admitted by the same server in
test_apply.py.
"""

from __future__ import annotations

import copy
import re
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from kube import ENFORCE_LABEL, PROBE_NAMESPACE, admission_path, apply, load_module, retarget, wait_for
from repoctl.cluster import ControlPlane
from repoctl.paths import ROOT
from repoctl.policy import run_conftest
from repoctl.render import kustomize_build, load_documents

FIXTURES = ROOT / "tests" / "policies" / "fixtures"
RULE_ID = re.compile(r"^\[([a-z0-9-]+)\] ")
DENIED = re.compile(r"ValidatingAdmissionPolicy '([^']+)' with binding '[^']+' denied request: (.+)$", re.MULTILINE)


def policy_tests() -> ModuleType:
    """tests/policies/test_policies.py, for its fixture patcher (apply_fixture)."""
    return load_module(ROOT / "tests" / "policies" / "test_policies.py", "cluster_policy_tests")


@cache
def mirrored_rules() -> frozenset[str]:
    """The conftest rule ids the admission policies carry in their messages."""
    rules = set()
    for doc in load_documents(kustomize_build(admission_path())):
        if doc["kind"] == "ValidatingAdmissionPolicy":
            for validation in doc["spec"]["validations"]:
                match = RULE_ID.match(validation.get("message", ""))
                assert match, f"{doc['metadata']['name']}: validation message without a [rule] prefix"
                rules.add(match.group(1))
    return frozenset(rules)


def mirrored_fixtures() -> list[Path]:
    return [f for f in sorted(FIXTURES.glob("*.yaml")) if yaml.safe_load(f.read_text())["rule"] in mirrored_rules()]


def with_worker_indexes(message: str, docs: list[dict]) -> str:
    """conftest names worker groups by index, the CEL policies (no indexed map) by groupName."""
    for doc in docs:
        spec = doc.get("spec") or {}
        cluster = spec.get("rayClusterConfig", spec) if isinstance(spec, dict) else {}
        for i, group in enumerate(cluster.get("workerGroupSpecs", []) if isinstance(cluster, dict) else []):
            message = message.replace(f"workerGroupSpecs[groupName={group['groupName']}]", f"workerGroupSpecs[{i}]")
    return message


def test_the_policies_mirror_the_pod_security_and_exposure_rules() -> None:
    assert mirrored_rules() == {"pod-resources", "pod-security-context", "exposure-service", "exposure-ingress"}
    assert {yaml.safe_load(f.read_text())["rule"] for f in mirrored_fixtures()} == mirrored_rules()


@pytest.mark.parametrize("fixture_file", mirrored_fixtures(), ids=lambda f: f.stem)
def test_the_server_refuses_what_conftest_refuses_with_the_same_message(
    fixture_file: Path, cluster: ControlPlane, rendered: dict[str, list[dict]], tmp_path: Path
) -> None:
    fixture = yaml.safe_load(fixture_file.read_text())
    original = rendered[fixture["overlay"]]
    docs = policy_tests().apply_fixture(original, fixture)
    changed = [d for d in docs if d not in original]
    assert changed, f"{fixture_file.name} changes nothing"

    path = tmp_path / "overlay.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    ok, lines = run_conftest(path, fixture["overlay"])
    conftest_messages = {line.split(": ", 1)[1] for line in lines if line.startswith("FAIL ")}
    assert not ok and conftest_messages

    refused, stderr, _ = apply(cluster, retarget(copy.deepcopy(changed), PROBE_NAMESPACE),
                               where=fixture_file.name, dry_run=True, check=False)  # fmt: skip
    assert not refused, f"{fixture_file.name}: the API server admitted what conftest refuses: {conftest_messages}"
    denials = DENIED.findall(stderr)
    assert denials, f"{fixture_file.name}: refused, but not by an admission policy:\n{stderr}"
    for _, message in denials:
        assert with_worker_indexes(message, changed) in conftest_messages, (
            f"{fixture_file.name}: the server said\n  {message}\nconftest said\n  " + "\n  ".join(conftest_messages)
        )
    # conftest lists every finding, the server stops at a policy's first failing validation.
    assert {RULE_ID.match(message).group(1) for _, message in denials} == {fixture["rule"]}


# --- every case of tests/admission, on the real server ------------------------------------------------
# tests/admission/test_admission_policy.py defines one mutation per validation (DENIED, with the whole
# expected message) and the near misses the rules allow (ADMITTED); conftest is checked against the same
# cases there. Here the API server itself decides, on CREATE and, for RayService mutations, on UPDATE.

UPDATE_NAMESPACE = "admission-update"
DELETING_NAMESPACE = "admission-deleting"


def admission_cases() -> ModuleType:
    return load_module(ROOT / "tests" / "admission" / "test_admission_policy.py", "cluster_admission_cases")


def denials(stderr: str) -> list[tuple[str, str]]:
    return DENIED.findall(stderr)


@pytest.fixture(scope="module")
def update_namespace(cluster: ControlPlane, rendered: dict[str, list[dict]]) -> str:
    """An enforced namespace holding the compliant prod RayService, so that a mutation is an UPDATE."""
    namespace = {"apiVersion": "v1", "kind": "Namespace",
                 "metadata": {"name": UPDATE_NAMESPACE, "labels": {ENFORCE_LABEL: "true"}}}  # fmt: skip
    rs = retarget([admission_cases().rayservice(rendered, "prod")], UPDATE_NAMESPACE)
    apply(cluster, [namespace], where=UPDATE_NAMESPACE)
    apply(cluster, rs, where=f"compliant prod RayService in {UPDATE_NAMESPACE}")
    return UPDATE_NAMESPACE


@pytest.mark.parametrize("env", ["dev", "staging", "prod"])
def test_what_kuberay_creates_from_the_overlay_is_admitted(
    env: str, cluster: ControlPlane, rendered: dict[str, list[dict]]
) -> None:
    """The overlays are admitted in test_apply.py; these are the objects the operator makes from them."""
    cases = admission_cases()
    rs = cases.rayservice(rendered, env)
    made = retarget([cases.raycluster_of(rs), *cases.kuberay_services(rs)], PROBE_NAMESPACE)
    ok, stderr, _ = apply(cluster, made, where=f"{env}: RayCluster and Services", dry_run=True, check=False)
    assert ok, stderr


def _case_ids(cases: list) -> list[str]:
    return [c.id for c in cases]


@pytest.mark.parametrize("case_id", _case_ids(admission_cases().DENIED))
def test_violation_is_denied_by_its_rule(
    case_id: str, cluster: ControlPlane, rendered: dict[str, list[dict]], update_namespace: str
) -> None:
    cases = admission_cases()
    case = next(c for c in cases.DENIED if c.id == case_id)
    obj, _ = cases.build(case, rendered)
    namespaces = [PROBE_NAMESPACE] + ([update_namespace] if case.mutate else [])
    for namespace in namespaces:  # CREATE, then UPDATE of the compliant RayService
        ok, stderr, _ = apply(cluster, retarget([obj], namespace), where=case.id, dry_run=True, check=False)
        assert not ok, f"{case.id}: admitted in {namespace}"
        assert denials(stderr) == [(case.policy, case.expect)], stderr


@pytest.mark.parametrize("case_id", _case_ids(admission_cases().ADMITTED))
def test_allowed_variant_is_admitted(case_id: str, cluster: ControlPlane, rendered: dict[str, list[dict]]) -> None:
    cases = admission_cases()
    case = next(c for c in cases.ADMITTED if c.id == case_id)
    obj, _ = cases.build(case, rendered)
    ok, stderr, _ = apply(cluster, retarget([obj], PROBE_NAMESPACE), where=case.id, dry_run=True, check=False)
    assert ok, stderr


def test_an_object_being_deleted_can_still_lose_its_finalizer(
    cluster: ControlPlane, rendered: dict[str, list[dict]]
) -> None:
    """KubeRay removes its finalizer with an UPDATE: a RayService from before the policy must still go."""
    cases = admission_cases()
    rs = cases.rayservice(rendered, "prod")
    cases.delete(cases.container(rs, "head")["resources"], "limits")
    rs["metadata"]["finalizers"] = ["ray.io/test-hold"]
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": DELETING_NAMESPACE}}
    apply(cluster, [namespace], where=DELETING_NAMESPACE)
    apply(cluster, retarget([rs], DELETING_NAMESPACE), where="RayService from before the policy")
    cluster.kubectl("label", "namespace", DELETING_NAMESPACE, f"{ENFORCE_LABEL}=true")
    target = ["rayservice", "support-assistant", "-n", DELETING_NAMESPACE]

    def refused() -> str | None:
        result = cluster.kubectl("label", *target, "touched=yes", "--overwrite", check=False)
        return result.stderr if result.returncode else None

    assert "[pod-resources]" in wait_for("the policy to cover the labelled namespace", refused, timeout=30)
    cluster.kubectl("delete", *target, "--wait=false")
    cluster.kubectl("patch", *target, "--type=json", "-p", '[{"op": "remove", "path": "/metadata/finalizers"}]')
    wait_for("the RayService to be gone", lambda: cluster.kubectl("get", *target, check=False).returncode != 0)
