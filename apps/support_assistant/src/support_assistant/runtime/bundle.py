"""Reading a model bundle: what it contains (manifest.json), and proof that it is intact.

The bundle builder (support_assistant.bundler) writes bundles in this format; serving code only reads
and verifies them, so everything a replica needs about the format lives here.

A bundle is a directory with `manifest.json`, `reranker/`, optionally `generator/`, `index/` and
`embeddings/` (a bi-encoder's passage and sentence vectors, see support_assistant.runtime.embeddings).
The manifest lists the sha256 of every other file; `bundle_version` is derived from that list,
so two bundles with the same content have the same version and promotion can compare them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
PROFILES = ("local", "production", "test")
MODEL_ROLES = ("reranker", "generator")
_MODEL_FIELDS = ("name", "revision", "kind", "source", "path")


class BundleError(Exception):
    """A bundle is missing, malformed or does not match its manifest. The message names the
    file or field at fault."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _walk(root: Path) -> list[str]:
    """Relative posix paths of every file under root except the manifest. Anything that is not a
    regular file or directory (symlinks included) is refused: it could point outside the bundle."""
    found: list[str] = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            raise BundleError(f"{rel}: symbolic links are not allowed in a bundle")
        if path.is_file():
            if rel != MANIFEST_NAME:
                found.append(rel)
        elif not path.is_dir():
            raise BundleError(f"{rel}: not a regular file")
    return found


def hash_tree(root: str | Path) -> dict[str, str]:
    root = Path(root)
    return {rel: sha256_file(root / rel) for rel in _walk(root)}


def compute_bundle_version(files: Mapping[str, str]) -> str:
    canonical = json.dumps(dict(sorted(files.items())), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def check_manifest(m: Any) -> None:
    if not isinstance(m, dict):
        raise BundleError(f"{MANIFEST_NAME}: must be a JSON object")
    for key, typ in (("bundle_version", str), ("created_by", str), ("profile", str), ("models", dict),
                     ("files", dict)):
        if not isinstance(m.get(key), typ):
            raise BundleError(f"{MANIFEST_NAME}: field {key!r} is missing or not a {typ.__name__}")
    if m["profile"] not in PROFILES:
        raise BundleError(f"{MANIFEST_NAME}: field 'profile' is {m['profile']!r}, not one of {', '.join(PROFILES)}")
    if "reranker" not in m["models"]:
        raise BundleError(f"{MANIFEST_NAME}: field 'models.reranker' is missing")
    for role, entry in m["models"].items():
        if role not in MODEL_ROLES:
            raise BundleError(f"{MANIFEST_NAME}: unknown model role 'models.{role}'")
        for key in _MODEL_FIELDS:
            if not isinstance(entry, dict) or not isinstance(entry.get(key), str):
                raise BundleError(f"{MANIFEST_NAME}: field 'models.{role}.{key}' is missing or not a string")
        if f"{entry['path']}/model.onnx" not in m["files"]:
            raise BundleError(f"{MANIFEST_NAME}: models.{role} has no {entry['path']}/model.onnx in 'files'")
        # Converted models (the local generator) also name the graph they shipped and what it was made from.
        graph_sha = entry.get("graph_sha256")
        if graph_sha is not None and graph_sha != m["files"][f"{entry['path']}/model.onnx"]:
            raise BundleError(f"{MANIFEST_NAME}: models.{role}.graph_sha256 is not the sha256 of "
                              f"{entry['path']}/model.onnx in 'files'")
    for optional in ("index", "embeddings"):
        if optional in m and (not isinstance(m[optional], dict) or not isinstance(m[optional].get("path"), str)):
            raise BundleError(f"{MANIFEST_NAME}: field '{optional}.path' is missing or not a string")
    for rel, digest in m["files"].items():
        if not isinstance(digest, str) or len(digest) != 64:
            raise BundleError(f"{MANIFEST_NAME}: files[{rel!r}] is not a sha256 hex digest")
        parts = Path(rel).parts
        if Path(rel).is_absolute() or ".." in parts or rel == MANIFEST_NAME:
            raise BundleError(f"{MANIFEST_NAME}: files[{rel!r}] is not a path inside the bundle")


@dataclass(frozen=True)
class Bundle:
    root: Path
    bundle_version: str
    created_by: str
    profile: str
    models: dict[str, dict[str, str]]
    index: dict[str, Any] | None
    files: dict[str, str]
    embeddings: dict[str, Any] | None = None

    def model_dir(self, role: str) -> Path | None:
        entry = self.models.get(role)
        return None if entry is None else self.root / entry["path"]

    @property
    def reranker_dir(self) -> Path:
        return self.root / self.models["reranker"]["path"]

    @property
    def generator_dir(self) -> Path | None:
        return self.model_dir("generator")

    @property
    def index_dir(self) -> Path | None:
        return None if self.index is None else self.root / self.index["path"]

    @property
    def embeddings_dir(self) -> Path | None:
        return None if self.embeddings is None else self.root / self.embeddings["path"]

    @property
    def has_generator(self) -> bool:
        return "generator" in self.models

    def models_info(self) -> list[dict[str, str]]:
        """What ran, for API responses: one entry per model, with the hash of its ONNX graph."""
        return [
            {
                "role": role,
                "name": entry["name"],
                "revision": entry["revision"],
                "kind": entry["kind"],
                "sha256": self.files[f"{entry['path']}/model.onnx"],
            }
            for role, entry in sorted(self.models.items(), key=lambda kv: MODEL_ROLES.index(kv[0]))
        ]


def _check_sources(root: Path, models: Mapping[str, Mapping[str, str]]) -> None:
    """A converted model's generation.json must name the same source file (by sha256) as the manifest."""
    for role, entry in models.items():
        if "gguf_sha256" not in entry:
            continue
        rel = f"{entry['path']}/generation.json"
        try:
            declared = json.loads((root / rel).read_text()).get("gguf_sha256")
        except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
            raise BundleError(f"{rel}: unreadable ({exc})") from None
        if declared != entry["gguf_sha256"]:
            raise BundleError(f"{rel}: gguf_sha256 is {declared!r}, but {MANIFEST_NAME} says models.{role} was "
                              f"converted from {entry['gguf_sha256']}")


def load_bundle(bundle_dir: str | Path, *, verify: bool = True) -> Bundle:
    """Read a bundle, and (by default) prove every file matches the manifest: no file missing,
    altered or unlisted. Hashing reads every byte once (about 0.1 s per 100 MB)."""
    root = Path(bundle_dir)
    if not root.is_dir():
        raise BundleError(f"{root}: bundle directory not found")
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleError(f"{root}: no {MANIFEST_NAME} (not a bundle, or an interrupted build)")
    try:
        m = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{MANIFEST_NAME}: not valid JSON ({exc})") from None
    check_manifest(m)
    files: dict[str, str] = m["files"]
    expected_version = compute_bundle_version(files)
    if m["bundle_version"] != expected_version:
        raise BundleError(f"{MANIFEST_NAME}: bundle_version is {m['bundle_version']}, "
                          f"but the files list hashes to {expected_version}")
    if verify:
        present = set(_walk(root))
        for rel in sorted(files):
            if rel not in present:
                raise BundleError(f"{rel}: listed in {MANIFEST_NAME} but missing from the bundle")
        extra = sorted(present - set(files))
        if extra:
            raise BundleError(f"{extra[0]}: present in the bundle but not listed in {MANIFEST_NAME}"
                              + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
        for rel in sorted(files):
            actual = sha256_file(root / rel)
            if actual != files[rel]:
                raise BundleError(f"{rel}: content altered (expected sha256 {files[rel]}, got {actual})")
        _check_sources(root, m["models"])
    return Bundle(
        root=root,
        bundle_version=m["bundle_version"],
        created_by=m["created_by"],
        profile=m["profile"],
        models=m["models"],
        index=m.get("index"),
        files=files,
        embeddings=m.get("embeddings"),
    )
