"""`repoctl diff [--base REF]`: what a change does to the rendered manifests, per overlay and sync entry.

Renders every target (overlays/<env>, infrastructure[/<add-on>], clusters/<tool>/<env>: repoctl.render's
target_paths) at REF (default: main) and in the working
tree, and prints a unified diff per target under a `== <target>` header, or "no changes". The base
tree is extracted with `git archive` into a temporary folder, so neither the working tree nor the
repository's worktree list is touched. A target missing on one side is shown as added or removed.
"""

from __future__ import annotations

import argparse
import difflib
import io
import subprocess
import tarfile
import tempfile
from pathlib import Path

from repoctl.paths import ROOT
from repoctl.render import RenderError, kustomize_build, target_paths


class DiffError(RuntimeError):
    pass


def resolve_ref(ref: str, root: Path = ROOT) -> str:
    """The commit of REF; falls back to origin/REF (a CI checkout of a pull request has no local main)."""
    for candidate in (ref, f"origin/{ref}"):
        result = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", f"{candidate}^{{commit}}"],
            cwd=root, capture_output=True, text=True, check=False,
        )
        if result.returncode == 0:
            return result.stdout.strip()
    raise DiffError(f"git ref {ref!r} not found (nor origin/{ref}); fetch it or pass --base <ref>")


def extract(commit: str, dest: Path, root: Path = ROOT) -> None:
    """The tree of `commit` into `dest` (git archive, no worktree bookkeeping)."""
    result = subprocess.run(["git", "archive", "--format=tar", commit], cwd=root, capture_output=True, check=False)
    if result.returncode != 0:
        raise DiffError(f"git archive {commit} failed: {result.stderr.decode().strip()}")
    with tarfile.open(fileobj=io.BytesIO(result.stdout)) as tar:
        tar.extractall(dest, filter="data")


def render(path: str, root: Path) -> tuple[str | None, str | None]:
    """(rendered text or None if the target is absent, error or None)."""
    if not (root / path / "kustomization.yaml").is_file():
        return None, None
    try:
        return kustomize_build(path, root), None
    except RenderError as exc:
        return None, str(exc)


def diff_target(path: str, base_root: Path, head_root: Path, base_label: str) -> tuple[list[str], bool]:
    """(lines to print, changed?) for one target."""
    lines = [f"== {path}"]
    base, base_error = render(path, base_root)
    head, head_error = render(path, head_root)
    if head_error:
        raise DiffError(f"{path}: {head_error}")
    if base_error:
        lines.append(f"(does not render at {base_label}: {base_error}; showing everything as added)")
    if base is None and head is None:
        return [*lines, "absent on both sides"], False
    if base is None and not base_error:
        lines.append(f"(new: absent at {base_label})")
    if head is None:
        lines.append("(removed in the working tree)")
    if base == head:
        return [*lines, "no changes"], False
    diff = difflib.unified_diff(
        (base or "").splitlines(keepends=True),
        (head or "").splitlines(keepends=True),
        fromfile=f"{base_label}:{path}",
        tofile=f"working-tree:{path}",
    )
    lines += [line.rstrip("\n") for line in diff]
    return lines, True


def run_diff(base_ref: str, root: Path = ROOT) -> tuple[list[str], int]:
    """(output lines, number of changed targets)."""
    commit = resolve_ref(base_ref, root)
    output, changed = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        base_root = Path(tmp)
        extract(commit, base_root, root)
        paths = sorted(set(target_paths(root)) | set(target_paths(base_root)),
                       key=lambda p: (not p.startswith("overlays/"), p))
        for path in paths:
            lines, was_changed = diff_target(path, base_root, root, base_ref)
            output += lines
            changed += was_changed
    output.append(f"diff: {changed} of {len(paths)} targets changed against {base_ref} ({commit[:12]})")
    return output, changed


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("diff", help="rendered diff of every overlay and sync entry against a git ref")
    parser.add_argument("--base", default="main", help="git ref to compare with (default: main, else origin/main)")
    parser.add_argument("--output", type=Path, help="also write the diff to this file (e.g. for a CI artifact)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        lines, _ = run_diff(args.base)
    except DiffError as exc:
        raise SystemExit(f"diff: {exc}") from None
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
    return 0
