"""repoctl.schemas: the kubeconform schemas are generated locally from the pinned upstream sources, strict,
and without the fields upstream deprecated."""

from __future__ import annotations

import copy
import json

import pytest
from repoctl import schemas
from repoctl.paths import ROOT


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
