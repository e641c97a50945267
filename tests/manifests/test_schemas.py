"""Every overlay and sync entry passes kubeconform -strict against the pinned schemas, and the schemas
really are strict: unknown fields, wrong types and upstream-deprecated fields fail, named."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable

import pytest
from repoctl import schemas
from repoctl.paths import ENVIRONMENTS, ROOT
from repoctl.render import find, load_documents
from repoctl.validate import build_context, run_steps, validate_documents


def test_every_overlay_and_sync_entry_renders_and_validates() -> None:
    ctx = build_context()
    paths = {t.path for t in ctx.targets}
    assert "base/kuberay-operator" in paths
    for env in ENVIRONMENTS:
        assert {f"overlays/{env}", f"clusters/argocd/{env}", f"clusters/flux/{env}"} <= paths
    lines: list[str] = []
    results = run_steps(ctx, ["render", "schemas"], out=lines.append)
    assert results == {"render": [], "schemas": []}, "\n".join(lines)
    for target in ctx.targets:
        assert target.rendered.read_text() == target.text  # reused by other tools


def test_shared_operator_release_is_a_validated_target() -> None:
    # base/kuberay-operator is applied by Flux's kuberay-operator Kustomization, so validate renders it too.
    ctx = build_context(paths=["base/kuberay-operator"])
    (target,) = ctx.targets
    assert {d["kind"] for d in target.docs} == {"HelmRepository", "HelmRelease", "ConfigMap"}
    assert run_steps(ctx, ["schemas"], out=lambda _: None) == {"schemas": []}


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
    from repoctl.render import kustomize_build

    docs = load_documents(kustomize_build(target))
    mutate(find(docs, kind, name))
    assert validate_documents(target, docs) == [f"{target}: {kind} {name}: {field}: additional property not allowed"]


def test_kind_without_schema_is_an_error_not_a_skip(rendered: dict[str, list[dict]]) -> None:
    docs = [{"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}]
    (line,) = validate_documents("overlays/dev", docs)
    assert line.startswith("overlays/dev: Widget w: no schema for example.com/v1 Widget")


def test_schema_locations_are_local_only() -> None:
    for location in schemas.locations():
        assert location.startswith(str(ROOT / ".cache" / "schemas")), location


def test_deprecated_fields_are_stripped_from_generated_schemas() -> None:
    for field in schemas.DEPRECATED_FIELDS:
        folder = schemas.CRD_SCHEMAS / field.group
        files = sorted(folder.glob(f"{field.kind.lower()}_*.json"))
        assert files, f"no generated schema for {field.kind}"
        parents_seen = 0
        for path in files:
            node = json.loads(path.read_text())
            for name in field.path[:-1]:
                node = node["properties"].get(name, {"properties": {}})
            parents_seen += bool(node["properties"])
            assert field.path[-1] not in node["properties"], f"{path.name}: {'.'.join(field.path)}"
        assert parents_seen, f"no version of {field.kind} has {'.'.join(field.path[:-1])}"


def test_deprecated_list_is_checked_against_the_go_types() -> None:
    root = schemas.module_dir(schemas.DeprecatedField.module, schemas.versions()["KUBERAY_VERSION"])
    for field in schemas.DEPRECATED_FIELDS:
        schemas.verify_deprecated(field, root)  # each still carries its `Deprecated:` comment
    live = schemas.DeprecatedField("ray.io", "RayService", ("spec", "upgradeStrategy"),
                                   "apis/ray/v1/rayservice_types.go", "UpgradeStrategy")
    with pytest.raises(schemas.SchemaError, match="no longer marked Deprecated"):
        schemas.verify_deprecated(live, root)


def test_strict_schema_conversion() -> None:
    source = {
        "type": "object",
        "properties": {
            "open": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {"a": {}}},
            "map": {"type": "object", "additionalProperties": {"type": "string"}},
            "port": {"x-kubernetes-int-or-string": True},
            "maybe": {"type": "string", "nullable": True},
            "items": {"type": "array", "items": {"type": "object", "properties": {"b": {"type": "string"}}}},
        },
    }
    out = schemas.strict_schema(copy.deepcopy(source))
    assert out["additionalProperties"] is False
    assert "additionalProperties" not in out["properties"]["open"]
    assert out["properties"]["map"]["additionalProperties"] == {"type": "string"}
    assert out["properties"]["port"]["anyOf"] == [{"type": "integer"}, {"type": "string"}]
    assert out["properties"]["maybe"]["type"] == ["string", "null"]
    assert out["properties"]["items"]["items"]["additionalProperties"] is False


def test_kubernetes_version_is_one_the_wheel_ships() -> None:
    assert schemas.wheel_schema_dir(schemas.versions()["KUBERNETES_VERSION"]).is_dir()
    with pytest.raises(schemas.SchemaError, match="set KUBERNETES_VERSION"):
        schemas.wheel_schema_dir("1.99.0")
