"""Render overlays and sync manifests with the pinned kustomize, and read what they contain."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import yaml

from repoctl.paths import ENVIRONMENTS, ROOT, tool


class RenderError(RuntimeError):
    pass


def kustomize_build(path: Path | str, root: Path = ROOT) -> str:
    """`kustomize build` output for a folder (relative to the repository root)."""
    result = subprocess.run(
        [tool("kustomize"), "build", str(path)], cwd=root, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RenderError(f"kustomize build {path} failed: {result.stderr.strip()}")
    return result.stdout


def load_documents(text: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def render_overlay(env: str, root: Path = ROOT) -> list[dict]:
    return load_documents(kustomize_build(Path("overlays") / env, root))


def find(docs: list[dict], kind: str, name: str | None = None) -> dict:
    for doc in docs:
        if doc.get("kind") == kind and (name is None or doc["metadata"]["name"] == name):
            return doc
    raise RenderError(f"no {kind}{'/' + name if name else ''} in the rendered output")


def serve_config_of(docs: list[dict]) -> dict:
    """The RayService's serveConfigV2, parsed (it is a YAML string in the manifest)."""
    rayservice = find(docs, "RayService")
    return yaml.safe_load(rayservice["spec"]["serveConfigV2"])


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("render", help="kustomize build an overlay (default: all) to stdout or a folder")
    parser.add_argument("envs", nargs="*", default=list(ENVIRONMENTS))
    parser.add_argument("--out", type=Path, help="write <out>/<env>.yaml instead of printing")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for env in args.envs:
        try:
            text = kustomize_build(Path("overlays") / env)
        except RenderError as exc:
            raise SystemExit(str(exc)) from None
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"{env}.yaml").write_text(text)
        else:
            print(f"---\n# overlays/{env}\n{text}", end="")
    return 0
