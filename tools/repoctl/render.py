"""Render with the pinned kustomize, and know what there is to render.

Target discovery lives here (target_paths, render_target): every command that needs "everything
something syncs" (validate, diff, promote) asks this module, never another command.

A target is one kustomization that a sync engine applies:
- `overlays/<env>`: the app, one per environment;
- `infrastructure` and `infrastructure/<add-on>`: the cluster add-ons synced before the app (Flux applies
  the whole layer, Argo CD the add-ons that are plain manifests). `infrastructure/argocd` is not one: it
  is Argo CD's Applications for the layer, rendered as part of each clusters/argocd/<env>;
- `clusters/<tool>/<env>`: the Argo CD and Flux entries themselves.
"""

from __future__ import annotations

import argparse
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from repoctl.paths import CACHE, ENVIRONMENTS, ROOT, tool

# Where rendered targets are kept for other tools (.cache/rendered/<target name>.yaml).
RENDERED = CACHE / "rendered"
SYNC_TOOLS = ("argocd", "flux")
# The cluster add-ons' layer: the folder itself and each add-on folder under it are targets.
INFRASTRUCTURE = "infrastructure"
NOT_TARGETS = {"base", "components"}  # shared parts under clusters/<tool>/, never synced on their own


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


def ray_containers(rayservice: dict) -> list[tuple[str, dict]]:
    """(group, container) for every container of the RayService's Ray pods, the head ("head") first."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    groups = [("head", cluster["headGroupSpec"]), *((g["groupName"], g) for g in cluster.get("workerGroupSpecs", []))]
    return [(name, c) for name, group in groups for c in group["template"]["spec"].get("containers", [])]


# Variables read by the Serve processes themselves: Serve's data-plane settings (every Serve process
# reads them at import) and the proxy gate's (serving/proxy_gate.py, read in each proxy at start).
SERVE_ENV_PREFIXES = ("RAY_SERVE_", "SUPPORT_ASSISTANT_PROXY_")


def serve_env_of_container(container: dict) -> dict[str, str]:
    """A container's Serve settings (SERVE_ENV_PREFIXES), as the local run must set them before Ray
    starts."""
    return {e["name"]: e.get("value") for e in container.get("env", []) if e["name"].startswith(SERVE_ENV_PREFIXES)}


def ray_serve_env_of(docs: list[dict]) -> dict[str, str]:
    """The Serve settings the RayService sets on its Ray containers, read from the head's.
    The same on every container: a test checks it."""
    _, head = ray_containers(find(docs, "RayService"))[0]
    return serve_env_of_container(head)


# --- targets --------------------------------------------------------------------------------------------


@dataclass
class Target:
    """One kustomization that something syncs: an overlay, the infrastructure layer or one of its add-ons,
    or a clusters/<tool>/<env> entry."""

    path: str  # relative to the repository root, e.g. "overlays/prod"
    text: str = ""
    docs: list[dict] = field(default_factory=list)
    error: str | None = None

    @property
    def name(self) -> str:
        return self.path.replace("/", "-")

    @property
    def rendered(self) -> Path:
        return RENDERED / f"{self.name}.yaml"

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def is_overlay(self) -> bool:
        return self.path.startswith("overlays/")


def _kustomizations(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.iterdir()) if (p / "kustomization.yaml").is_file()] if folder.is_dir() else []


def target_paths(root: Path = ROOT) -> list[str]:
    """overlays/*, infrastructure (+ infrastructure/*) and clusters/<tool>/<env>: every kustomization that
    something syncs, in that order."""
    found = [f"overlays/{p.name}" for p in _kustomizations(root / "overlays")]
    if (root / INFRASTRUCTURE / "kustomization.yaml").is_file():
        found.append(INFRASTRUCTURE)
    found += [f"{INFRASTRUCTURE}/{p.name}" for p in _kustomizations(root / INFRASTRUCTURE) if p.name not in SYNC_TOOLS]
    for sync_tool in SYNC_TOOLS:
        found += [
            f"clusters/{sync_tool}/{p.name}"
            for p in _kustomizations(root / "clusters" / sync_tool)
            if p.name not in NOT_TARGETS
        ]
    return found


def render_target(path: str, root: Path = ROOT) -> Target:
    target = Target(path)
    try:
        target.text = kustomize_build(path, root)
        target.docs = load_documents(target.text)
    except RenderError as exc:
        target.error = str(exc).replace("\n", " ")
    except yaml.YAMLError as exc:
        target.error = f"kustomize output is not YAML: {exc}"
    return target


# --- command --------------------------------------------------------------------------------------------


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
