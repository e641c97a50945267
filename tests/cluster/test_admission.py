"""The repository's ValidatingAdmissionPolicies, enforced by the real API server (installed by conftest.py).

Each bad-manifest fixture in tests/policies/fixtures whose rule the policies mirror (pod-security and
exposure) is sent to the server as a dry run into an enforced namespace: the server must refuse it, and
its message must be the one conftest prints for the same fixture (conftest names worker groups by index,
CEL by groupName; nothing else may differ). The real overlays are admitted by the same server in
test_apply.py.
"""

from __future__ import annotations

import copy
import importlib.util
import re
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from kube import PROBE_NAMESPACE, admission_path, apply, retarget
from repoctl.cluster import ControlPlane
from repoctl.paths import ROOT
from repoctl.policy import run_conftest
from repoctl.render import kustomize_build, load_documents

FIXTURES = ROOT / "tests" / "policies" / "fixtures"
RULE_ID = re.compile(r"^\[([a-z0-9-]+)\] ")
DENIED = re.compile(r"ValidatingAdmissionPolicy '([^']+)' with binding '[^']+' denied request: (.+)$", re.MULTILINE)


@cache
def policy_tests() -> ModuleType:
    """tests/policies/test_policies.py, for its fixture patcher (apply_fixture)."""
    spec = importlib.util.spec_from_file_location("policy_tests", ROOT / "tests" / "policies" / "test_policies.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
