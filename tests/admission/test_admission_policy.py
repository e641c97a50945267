"""The ValidatingAdmissionPolicies in infrastructure/admission: their shape, and the cases they must decide.

The API server itself evaluates them in tests/cluster/test_admission.py (kube-apiserver built by `make
setup`, the policies installed and enforced): every overlay and what KubeRay makes from it admitted, each
DENIED case refused with exactly its message (CREATE, and UPDATE for RayService mutations), each ADMITTED
near miss admitted. What needs no server stays here: one Deny binding per policy scoped to enforced
namespaces, kubeconform, a conftest rule id in every message, and conftest refusing the same mutations with
the same messages, so "the cluster refuses what CI would" is checked rather than assumed.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from repoctl.kubeconform import validate_documents
from repoctl.policy import POLICY_DIR, run_conftest
from repoctl.render import find, kustomize_build, load_documents

ADMISSION = "infrastructure/admission"
ENFORCE_LABEL = "support-assistant.acme.dev/enforce"
POLICY_KIND = "ValidatingAdmissionPolicy"
BINDING_KIND = "ValidatingAdmissionPolicyBinding"
RULE_ID = re.compile(r"^\[([a-z0-9-]+)\] ")
# The conftest rules these policies mirror (policies/podsecurity.rego, policies/exposure.rego).
MIRRORED_RULES = {"pod-resources", "pod-security-context", "exposure-service", "exposure-ingress"}


@functools.cache
def admission_docs() -> tuple[dict, ...]:
    return tuple(load_documents(kustomize_build(ADMISSION)))


def policies() -> list[dict]:
    return [d for d in admission_docs() if d["kind"] == POLICY_KIND]


def bindings() -> list[dict]:
    return [d for d in admission_docs() if d["kind"] == BINDING_KIND]


# --- objects ------------------------------------------------------------------------------------


def rayservice(rendered: dict[str, list[dict]], env: str) -> dict:
    return copy.deepcopy(find(rendered[env], "RayService"))


def raycluster_of(rs: dict) -> dict:
    """The RayCluster KubeRay creates for a RayService: its spec is spec.rayClusterConfig."""
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": f"{rs['metadata']['name']}-raycluster-abcde", "namespace": rs["metadata"]["namespace"]},
        "spec": copy.deepcopy(rs["spec"]["rayClusterConfig"]),
    }


def kuberay_services(rs: dict) -> list[dict]:
    """The Services KubeRay creates for a RayService (ray-operator common/service.go): the head Service
    with every head container port, GCS/dashboard/client included, and the Serve Service; both ClusterIP."""
    head = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    ports = [{"name": p["name"], "port": p["containerPort"], "targetPort": p["containerPort"], "protocol": "TCP"}
             for p in head["ports"]]
    meta = {"namespace": rs["metadata"]["namespace"]}
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {**meta, "name": f"{rs['metadata']['name']}-head-svc"},
         "spec": {"type": "ClusterIP", "ports": ports}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {**meta, "name": f"{rs['metadata']['name']}-serve-svc"},
         "spec": {"type": "ClusterIP", "ports": [{"name": "serve", "port": 8000, "targetPort": 8000}]}},
    ]


def service(name: str, type_: str, *ports: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "support-assistant"},
            "spec": {"type": type_, "selector": {"ray.io/node-type": "head"}, "ports": list(ports)}}


def ingress(name: str, spec: dict) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": name, "namespace": "support-assistant"}, "spec": spec}


def rule_backend(service_name: str, port: dict) -> dict:
    return {"rules": [{"host": "ray.example.com", "http": {"paths": [
        {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": service_name, "port": port}}}]}}]}


def cluster(rs: dict) -> dict:
    return rs["spec"]["rayClusterConfig"] if rs["kind"] == "RayService" else rs["spec"]


def group(rs: dict, name: str) -> dict:
    c = cluster(rs)
    if name == "head":
        return c["headGroupSpec"]
    return next(g for g in c["workerGroupSpecs"] if g["groupName"] == name)


def pod(rs: dict, name: str) -> dict:
    return group(rs, name)["template"]["spec"]


def container(rs: dict, name: str) -> dict:
    return pod(rs, name)["containers"][0]


# --- cases: one mutation per rule, each breaking exactly one validation -----------------------------

Mutate = Callable[[dict], None]


@dataclass(frozen=True)
class Case:
    id: str
    policy: str  # the policy expected to deny (by exactly one validation)
    expect: str  # the whole message
    mutate: Mutate | None = None  # applied to the overlay's RayService
    make: Callable[[dict], dict] | None = None  # builds the object from the overlay's RayService instead
    env: str = "prod"
    conftest: bool = True  # the object is part of what conftest sees (a RayCluster is not: KubeRay makes it)


def on_raycluster(mutate: Mutate) -> Callable[[dict], dict]:
    def make(rs: dict) -> dict:
        rc = raycluster_of(rs)
        mutate(rc)
        return rc

    return make


def delete(mapping: dict, key: str) -> None:
    del mapping[key]


RS = "RayService/support-assistant"
RC = "RayCluster/support-assistant-raycluster-abcde"
HEAD = "spec.rayClusterConfig.headGroupSpec.template.spec.containers[ray-head]"
CPU = "spec.rayClusterConfig.workerGroupSpecs[groupName=cpu].template.spec.containers[ray-worker]"
GPU = "spec.rayClusterConfig.workerGroupSpecs[groupName=gpu].template.spec.containers[ray-worker]"
RESOURCES_FIX = "(requests for scheduling, limits so one replica cannot starve the node)"
NON_ROOT = ": runAsNonRoot is not true (container or pod securityContext); fix: set securityContext.runAsNonRoot: true"
NO_ESCALATION = ".securityContext.allowPrivilegeEscalation is not false; fix: set allowPrivilegeEscalation: false"
DROP_ALL = ".securityContext.capabilities.drop does not contain ALL; fix: set capabilities: {drop: [ALL]}"
SECCOMP = (": seccompProfile.type is not RuntimeDefault (container or pod securityContext); "
           "fix: set securityContext.seccompProfile: {type: RuntimeDefault}")
SERVICE_FIX = ("the Ray dashboard/GCS/client must stay cluster-internal; fix: expose only the Serve port 8000, "
               "or use ClusterIP and kubectl port-forward")
HEAD_SERVICE = ("the head Service would be {type} (spec.rayClusterConfig.headGroupSpec.serviceType / "
                "headService.spec.type), and KubeRay always puts ports 6379, 8265 and 10001 on it; fix: leave it "
                "ClusterIP and expose Serve through spec.serveService or an Ingress to port 8000")


def add_init_container(rs: dict) -> None:
    """A compliant init container but for its resources (same image, so image-digest stays quiet)."""
    pod(rs, "cpu")["initContainers"] = [{
        "name": "fetch-bundle",
        "image": container(rs, "cpu")["image"],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }]


DENIED = [
    Case("resources-head-limit-cpu", "support-assistant-pod-security",
         f"[pod-resources] {RS}: {HEAD}.resources.limits.cpu is not set; fix: set limits cpu {RESOURCES_FIX}",
         mutate=lambda rs: delete(container(rs, "head")["resources"]["limits"], "cpu")),
    Case("resources-worker-requests", "support-assistant-pod-security",
         f"[pod-resources] {RS}: {GPU}.resources.requests.memory is not set; fix: set requests memory {RESOURCES_FIX}",
         mutate=lambda rs: delete(container(rs, "gpu")["resources"]["requests"], "memory"), env="dev"),
    Case("resources-init-container", "support-assistant-pod-security",
         f"[pod-resources] {RS}: spec.rayClusterConfig.workerGroupSpecs[groupName=cpu].template.spec"
         f".initContainers[fetch-bundle].resources.requests.cpu is not set; fix: set requests cpu {RESOURCES_FIX}",
         mutate=add_init_container),
    Case("resources-autoscaler", "support-assistant-pod-security",
         f"[pod-resources] {RS}: spec.rayClusterConfig.autoscalerOptions.resources.limits.cpu is not set; "
         f"fix: set limits cpu {RESOURCES_FIX}",
         mutate=lambda rs: delete(cluster(rs)["autoscalerOptions"]["resources"], "limits"), env="staging"),
    Case("non-root-pod", "support-assistant-pod-security",
         f"[pod-security-context] {RS}: {CPU}{NON_ROOT}",
         mutate=lambda rs: delete(pod(rs, "cpu")["securityContext"], "runAsNonRoot")),
    Case("non-root-container-overrides-pod", "support-assistant-pod-security",
         f"[pod-security-context] {RS}: {HEAD}{NON_ROOT}",
         mutate=lambda rs: container(rs, "head")["securityContext"].update(runAsNonRoot=False)),
    Case("privilege-escalation", "support-assistant-pod-security",
         f"[pod-security-context] {RS}: {GPU}{NO_ESCALATION}",
         mutate=lambda rs: container(rs, "gpu")["securityContext"].update(allowPrivilegeEscalation=True)),
    Case("privilege-escalation-autoscaler", "support-assistant-pod-security",
         f"[pod-security-context] {RS}: spec.rayClusterConfig.autoscalerOptions{NO_ESCALATION}",
         mutate=lambda rs: delete(cluster(rs)["autoscalerOptions"]["securityContext"], "allowPrivilegeEscalation")),
    Case("capabilities", "support-assistant-pod-security",
         f"[pod-security-context] {RS}: {HEAD}{DROP_ALL}",
         mutate=lambda rs: container(rs, "head")["securityContext"].update(capabilities={"drop": ["NET_RAW"]})),
    Case("seccomp-pod", "support-assistant-pod-security",
         f"[pod-security-context] {RS}: {GPU}{SECCOMP}",
         mutate=lambda rs: delete(pod(rs, "gpu")["securityContext"], "seccompProfile"), env="dev"),
    Case("seccomp-container-overrides-pod", "support-assistant-pod-security",
         f"[pod-security-context] {RS}: {CPU}{SECCOMP}",
         mutate=lambda rs: container(rs, "cpu")["securityContext"].update(seccompProfile={"type": "Unconfined"})),
    Case("raycluster-privilege-escalation", "support-assistant-pod-security",
         f"[pod-security-context] {RC}: spec.workerGroupSpecs[groupName=cpu].template.spec"
         f".containers[ray-worker]{NO_ESCALATION}",
         make=on_raycluster(lambda rc: container(rc, "cpu")["securityContext"].update(allowPrivilegeEscalation=True)),
         conftest=False),
    Case("raycluster-resources", "support-assistant-pod-security",
         f"[pod-resources] {RC}: spec.headGroupSpec.template.spec.containers[ray-head].resources.requests.cpu "
         f"is not set; fix: set requests cpu {RESOURCES_FIX}",
         make=on_raycluster(lambda rc: delete(container(rc, "head")["resources"]["requests"], "cpu")),
         conftest=False),
    Case("serve-service-port", "support-assistant-ray-exposure",
         f"[exposure-service] {RS}: spec.serveService is LoadBalancer and lists port 8265; "
         "fix: list only the Serve port 8000",
         mutate=lambda rs: rs["spec"].update(serveService={"spec": {"type": "LoadBalancer", "ports": [
             {"name": "serve", "port": 8000}, {"name": "ui", "port": 8265}]}})),
    Case("serve-service-target-port-name", "support-assistant-ray-exposure",
         f"[exposure-service] {RS}: spec.serveService is NodePort and lists port 80; "
         "fix: list only the Serve port 8000",
         mutate=lambda rs: rs["spec"].update(serveService={"spec": {"type": "NodePort", "ports": [
             {"name": "http", "port": 80, "targetPort": "dashboard"}]}})),
    Case("head-service-type", "support-assistant-ray-exposure",
         f"[exposure-service] {RS}: " + HEAD_SERVICE.format(type="NodePort"),
         mutate=lambda rs: group(rs, "head").update(serviceType="NodePort")),
    Case("head-service-custom", "support-assistant-ray-exposure",
         f"[exposure-service] {RS}: " + HEAD_SERVICE.format(type="LoadBalancer"),
         mutate=lambda rs: group(rs, "head").update(
             serviceType="ClusterIP", headService={"spec": {"type": "LoadBalancer"}})),
    Case("enable-ingress", "support-assistant-ray-exposure",
         f"[exposure-ingress] {RS}: spec.rayClusterConfig.headGroupSpec.enableIngress is true, which makes KubeRay "
         "publish the dashboard (8265); fix: remove it and use kubectl port-forward",
         mutate=lambda rs: group(rs, "head").update(enableIngress=True), env="dev"),
    Case("raycluster-enable-ingress", "support-assistant-ray-exposure",
         f"[exposure-ingress] {RC}: spec.headGroupSpec.enableIngress is true, which makes KubeRay "
         "publish the dashboard (8265); fix: remove it and use kubectl port-forward",
         make=on_raycluster(lambda rc: group(rc, "head").update(enableIngress=True)), conftest=False),
    Case("service-target-port", "support-assistant-service-exposure",
         f"[exposure-service] Service/ray-dashboard: spec.type LoadBalancer exposes port 80 (targetPort 8265); "
         f"{SERVICE_FIX}",
         make=lambda rs: service("ray-dashboard", "LoadBalancer", {"name": "http", "port": 80, "targetPort": 8265})),
    Case("service-port-name", "support-assistant-service-exposure",
         f"[exposure-service] Service/ray-client: spec.type NodePort exposes port 30001 (targetPort 30001); "
         f"{SERVICE_FIX}",
         make=lambda rs: service("ray-client", "NodePort", {"name": "serve", "port": 8000},
                                 {"name": "client", "port": 30001})),
    Case("service-port", "support-assistant-service-exposure",
         f"[exposure-service] Service/ray-gcs: spec.type LoadBalancer exposes port 6379 (targetPort gcs-server); "
         f"{SERVICE_FIX}",
         make=lambda rs: service("ray-gcs", "LoadBalancer",
                                 {"name": "redis", "port": 6379, "targetPort": "gcs-server"})),
    Case("ingress-port-name", "support-assistant-ingress-exposure",
         "[exposure-ingress] Ingress/ray: backend support-assistant-head-svc port gcs-server is a Ray control port; "
         "fix: route only to the Serve port 8000",
         make=lambda rs: ingress("ray", rule_backend("support-assistant-head-svc", {"name": "gcs-server"}))),
    Case("ingress-default-backend", "support-assistant-ingress-exposure",
         "[exposure-ingress] Ingress/ray: backend support-assistant-head-svc port 10001 is a Ray control port; "
         "fix: route only to the Serve port 8000",
         make=lambda rs: ingress("ray", {
             "defaultBackend": {"service": {"name": "support-assistant-head-svc", "port": {"number": 10001}}},
             **rule_backend("support-assistant-serve-svc", {"number": 8000})})),
]

# Near misses: what the rules allow (conftest allows them too).
ADMITTED = [
    Case("non-root-on-container-only", "support-assistant-pod-security", "",
         mutate=lambda rs: (delete(pod(rs, "cpu")["securityContext"], "runAsNonRoot"),
                            container(rs, "cpu")["securityContext"].update(runAsNonRoot=True))),
    Case("seccomp-localhost", "support-assistant-pod-security", "",
         mutate=lambda rs: container(rs, "gpu")["securityContext"].update(
             seccompProfile={"type": "Localhost", "localhostProfile": "ray.json"})),
    Case("autoscaler-off-without-options", "support-assistant-pod-security", "",
         mutate=lambda rs: (cluster(rs).update(enableInTreeAutoscaling=False),
                            delete(cluster(rs), "autoscalerOptions"))),
    Case("serve-service-load-balancer-8000", "support-assistant-ray-exposure", "",
         mutate=lambda rs: rs["spec"].update(serveService={"spec": {"type": "LoadBalancer", "ports": [
             {"name": "serve", "port": 8000, "targetPort": 8000}]}})),
    Case("serve-service-cluster-ip-8265", "support-assistant-ray-exposure", "",
         mutate=lambda rs: rs["spec"].update(serveService={"spec": {"ports": [{"name": "dashboard", "port": 8265}]}})),
    Case("enable-ingress-false", "support-assistant-ray-exposure", "",
         mutate=lambda rs: group(rs, "head").update(enableIngress=False)),
    Case("service-cluster-ip-dashboard", "support-assistant-service-exposure", "",
         make=lambda rs: service("ray-dashboard", "ClusterIP", {"name": "dashboard", "port": 8265})),
    Case("service-load-balancer-serve", "support-assistant-service-exposure", "",
         make=lambda rs: service("support-assistant", "LoadBalancer",
                                 {"name": "serve", "port": 80, "targetPort": 8000})),
    Case("ingress-serve", "support-assistant-ingress-exposure", "",
         make=lambda rs: ingress("support-assistant", rule_backend("support-assistant-serve-svc", {"name": "serve"}))),
]


def build(case: Case, rendered: dict[str, list[dict]]) -> tuple[dict, list[dict]]:
    """(the object to admit, the overlay as conftest should see it)."""
    rs = rayservice(rendered, case.env)
    docs = copy.deepcopy(rendered[case.env])
    if case.make:
        obj = case.make(rs)
        return obj, [*docs, obj]
    assert case.mutate
    case.mutate(rs)
    return rs, [rs if d["kind"] == "RayService" else d for d in docs]


def conftest_messages(docs: list[dict], env: str, tmp_path: Path) -> tuple[bool, list[str]]:
    path = tmp_path / f"{env}.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    ok, lines = run_conftest(path, env)
    return ok, [line.split(": ", 1)[1] for line in lines if line.startswith("FAIL ")]


def with_worker_indexes(message: str, obj: dict) -> str:
    """conftest names worker groups by index, CEL (no indexed map) by groupName."""
    for i, worker in enumerate(cluster(obj).get("workerGroupSpecs", [])):
        message = message.replace(f"workerGroupSpecs[groupName={worker['groupName']}]", f"workerGroupSpecs[{i}]")
    return message


# --- tests ------------------------------------------------------------------------------------


def test_every_policy_has_one_deny_binding_scoped_to_enforced_namespaces() -> None:
    names = [p["metadata"]["name"] for p in policies()]
    assert len(names) == 4
    assert sorted(b["spec"]["policyName"] for b in bindings()) == sorted(names)
    for doc in admission_docs():
        assert doc["apiVersion"] == "admissionregistration.k8s.io/v1", doc["metadata"]["name"]
    for binding in bindings():
        assert binding["spec"]["validationActions"] == ["Deny"]
        assert binding["spec"]["matchResources"] == {"namespaceSelector": {"matchLabels": {ENFORCE_LABEL: "true"}}}
    for policy in policies():
        assert policy["spec"]["failurePolicy"] == "Fail"  # an expression error refuses rather than waves through


def test_manifests_pass_kubeconform_strict() -> None:
    """What `repoctl validate` checks on its infrastructure targets (Kubernetes 1.33 schemas)."""
    assert validate_documents(ADMISSION, admission_docs()) == []
    broken = copy.deepcopy(policies()[0])
    broken["spec"]["validations"][0]["messageExpresion"] = "'typo'"
    assert validate_documents(ADMISSION, [broken]) == [
        f"{ADMISSION}: {POLICY_KIND} {broken['metadata']['name']}: spec.validations[0].messageExpresion: "
        "additional property not allowed"
    ]


def test_every_validation_has_a_message_naming_a_conftest_rule() -> None:
    rule_ids = set()
    for policy in policies():
        for validation in policy["spec"]["validations"]:
            assert validation["reason"] in {"Forbidden", "Invalid"}
            assert validation["messageExpression"].strip()
            match = RULE_ID.match(validation["message"])
            assert match, f"{policy['metadata']['name']}: message without a [rule-id] prefix: {validation['message']}"
            rule_ids.add(match.group(1))
    assert rule_ids == MIRRORED_RULES
    conftest_rules = "".join(p.read_text() for p in POLICY_DIR.glob("*.rego"))
    for rule in rule_ids:
        assert f'"[{rule}] ' in conftest_rules, f"[{rule}] is no conftest rule's message prefix"


@pytest.mark.parametrize("case", [c for c in DENIED if c.conftest], ids=lambda c: c.id)
def test_conftest_denies_the_same(case: Case, rendered: dict[str, list[dict]], tmp_path: Path) -> None:
    """The cluster refuses what CI would, with the same message (conftest lists every finding; admission
    the first)."""
    obj, docs = build(case, rendered)
    ok, messages = conftest_messages(docs, case.env, tmp_path)
    assert not ok
    assert with_worker_indexes(case.expect, obj) in messages
    assert {RULE_ID.match(m).group(1) for m in messages} == {RULE_ID.match(case.expect).group(1)}


def test_conftest_admits_the_allowed_variants(rendered: dict[str, list[dict]], tmp_path: Path) -> None:
    for case in ADMITTED:
        _, docs = build(case, rendered)
        ok, messages = conftest_messages(docs, case.env, tmp_path)
        assert ok, f"{case.id}: {messages}"
