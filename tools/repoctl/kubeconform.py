"""kubeconform, strict, against the schemas that repoctl.schemas generates: one line per failure.

A failure reads `<label>: <Kind> <name>: <field>: <problem>`, e.g. `overlays/prod: RayService
support-assistant: spec.rayClusterConfig.foo: additional property not allowed`: kubeconform's nested
JSON-schema messages are reduced to their leaf causes, and JSON pointers to the dotted form people write.
A kind without a schema is a failure, never a skip (no -ignore-missing-schemas).
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

import yaml

from repoctl import schemas
from repoctl.paths import tool, versions

_CAUSE = re.compile(r"- at '(?P<path>[^']*)': (?P<msg>.*?)(?=\s+- at '|$)")
_ADDITIONAL = re.compile(r"additional propert(?:y|ies) (?P<names>'.*') not allowed")


def field_path(pointer: str) -> str:
    """JSON pointer -> the dotted form people write: /spec/containers/0/image -> spec.containers[0].image."""
    out = ""
    for part in pointer.strip("/").split("/") if pointer.strip("/") else []:
        part = part.replace("~1", "/").replace("~0", "~")
        if part.isdigit():
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_$][\w$-]*", part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out or "(root)"


def _explain(message: str) -> list[str]:
    """kubeconform's nested message -> 'field: problem' for every leaf cause."""
    causes = [(m["path"], m["msg"].strip()) for m in _CAUSE.finditer(message)]
    lines = []
    for pointer, msg in causes:
        if msg == "validation failed":
            continue  # a parent of more specific causes
        extra = _ADDITIONAL.search(msg)
        if extra:
            for name in re.findall(r"'([^']*)'", extra["names"]):
                child = field_path(f"{pointer}/{name.replace('~', '~0').replace('/', '~1')}")
                lines.append(f"{child}: additional property not allowed")
        else:
            lines.append(f"{field_path(pointer)}: {msg}")
    return lines or [message]


def validate(texts: dict[str, str]) -> list[str]:
    """Validate rendered YAML streams ({label: text}) strictly against the local schemas."""
    if not texts:
        return []
    try:
        locations = schemas.locations()
    except schemas.SchemaError as exc:
        return [f"schemas: {exc}"]
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for i, (label, text) in enumerate(texts.items()):
            path = Path(tmp) / f"{i}.yaml"
            path.write_text(text)
            files[str(path)] = label
        args = [tool("kubeconform"), "-strict", "-summary", "-output", "json",
                "-kubernetes-version", versions()["KUBERNETES_VERSION"]]
        for location in locations:
            args += ["-schema-location", location]
        result = subprocess.run([*args, *files], capture_output=True, text=True, check=False)
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        return [f"schemas: kubeconform failed: {(result.stderr or result.stdout).strip()}"]
    failures = []
    for res in report.get("resources") or []:
        label = files.get(res.get("filename", ""), res.get("filename", "?"))
        what = f"{label}: {res.get('kind', '?')} {res.get('name') or '(unnamed)'}"
        msg = res.get("msg", "")
        if res.get("status") == "statusError" and "could not find schema" in msg:
            failures.append(f"{what}: no schema for {res.get('version')} {res.get('kind')}: add its CRD source "
                            "to CRD_SOURCES in tools/repoctl/schemas.py")
        elif res.get("status") in ("statusInvalid", "statusError"):
            failures += [f"{what}: {line}" for line in _explain(msg)]
    if result.returncode != 0 and not failures:
        failures.append(f"schemas: kubeconform exited {result.returncode}: {result.stderr.strip()}")
    return failures


def validate_documents(label: str, docs: Iterable[dict]) -> list[str]:
    """kubeconform failures for in-memory documents (what tests use to check a mutated overlay)."""
    return validate({label: yaml.safe_dump_all(list(docs), sort_keys=False)})
