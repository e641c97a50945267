"""repoctl.kubeconform: a failure names the target, the object and the field, and the schemas really are
strict (unknown fields, wrong types and upstream-deprecated fields fail; a kind without a schema is an
error, never a skip)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
from repoctl.kubeconform import field_path, validate_documents
from repoctl.render import find, kustomize_build, load_documents


def _rayservice(docs: list[dict]) -> dict:
    return find(docs, "RayService", "support-assistant")


def _set_unknown(docs: list[dict]) -> None:
    _rayservice(docs)["spec"]["rayClusterConfig"]["foo"] = "bar"


def _set_wrong_type(docs: list[dict]) -> None:
    _rayservice(docs)["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] = "two"


def _set_deprecated(docs: list[dict]) -> None:
    # Still in the KubeRay CRD, marked `Deprecated:` in the Go types: stripped from our schema.
    _rayservice(docs)["spec"]["serviceUnhealthySecondThreshold"] = 900


def _set_metadata_typo(docs: list[dict]) -> None:
    _rayservice(docs)["metadata"]["annotatons"] = {"ray.io/initializing-timeout": "15m"}


def _set_container_typo(docs: list[dict]) -> None:
    _rayservice(docs)["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0][
        "imagePullPolicyy"
    ] = "Always"


def _set_core_unknown(docs: list[dict]) -> None:
    find(docs, "NetworkPolicy")["spec"]["podSelectr"] = {}


MUTATIONS: list[tuple[str, Callable[[list[dict]], None], str]] = [
    ("unknown-field", _set_unknown,
     "overlays/prod: RayService support-assistant: spec.rayClusterConfig.foo: additional property not allowed"),
    ("wrong-type", _set_wrong_type,
     "overlays/prod: RayService support-assistant: spec.rayClusterConfig.workerGroupSpecs[0].replicas: "
     "got string, want integer"),
    ("deprecated-field", _set_deprecated,
     "overlays/prod: RayService support-assistant: spec.serviceUnhealthySecondThreshold: "
     "additional property not allowed"),
    ("metadata-typo", _set_metadata_typo,
     "overlays/prod: RayService support-assistant: metadata.annotatons: additional property not allowed"),
    ("pod-template-typo", _set_container_typo,
     "overlays/prod: RayService support-assistant: spec.rayClusterConfig.headGroupSpec.template.spec."
     "containers[0].imagePullPolicyy: additional property not allowed"),
    ("core-kind", _set_core_unknown,
     "overlays/prod: NetworkPolicy support-assistant-ray: spec.podSelectr: additional property not allowed"),
]


@pytest.mark.parametrize(("mutate", "expected"), [m[1:] for m in MUTATIONS], ids=[m[0] for m in MUTATIONS])
def test_mutated_overlay_fails_naming_the_field(
    rendered: dict[str, list[dict]], mutate: Callable[[list[dict]], None], expected: str
) -> None:
    docs = copy.deepcopy(rendered["prod"])
    assert validate_documents("overlays/prod", docs) == []  # the unmutated overlay passes
    mutate(docs)
    assert validate_documents("overlays/prod", docs) == [expected]


@pytest.mark.parametrize(
    ("target", "kind", "name", "mutate", "field"),
    [
        ("clusters/argocd/prod", "Application", "support-assistant",
         lambda d: d["spec"]["syncPolicy"].update(syncOption=["ServerSideApply=true"]), "spec.syncPolicy.syncOption"),
        ("clusters/flux/prod", "Kustomization", "support-assistant",
         lambda d: d["spec"].update(healthcheck=[]), "spec.healthcheck"),
    ],
)
def test_sync_entries_are_validated_strictly(target: str, kind: str, name: str, mutate, field: str) -> None:
    docs = load_documents(kustomize_build(target))
    mutate(find(docs, kind, name))
    assert validate_documents(target, docs) == [f"{target}: {kind} {name}: {field}: additional property not allowed"]


def test_kind_without_schema_is_an_error_not_a_skip(rendered: dict[str, list[dict]]) -> None:
    docs = [{"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}]
    (line,) = validate_documents("overlays/dev", docs)
    assert line.startswith("overlays/dev: Widget w: no schema for example.com/v1 Widget")


def test_field_paths_are_written_as_people_write_them() -> None:
    assert field_path("/spec/containers/0/image") == "spec.containers[0].image"
    assert field_path("/metadata/annotations/ray.io~1initializing-timeout") == (
        'metadata.annotations["ray.io/initializing-timeout"]')
    assert field_path("") == "(root)"
