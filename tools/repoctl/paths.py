"""Where things are in the repository, and the pinned versions from versions.env."""

from __future__ import annotations

import functools
import os
from pathlib import Path

ROOT = Path(os.environ.get("REPO_ROOT", Path(__file__).resolve().parents[2]))
BIN = ROOT / "bin"
CACHE = ROOT / ".cache"
OVERLAYS = ROOT / "overlays"
ENVIRONMENTS = ("dev", "staging", "prod")
BASE_SERVE_CONFIG = ROOT / "base" / "support-assistant" / "serve-config.yaml"


@functools.cache
def versions(root: Path = ROOT) -> dict[str, str]:
    """KEY=VALUE pairs of versions.env (comments and blank lines skipped)."""
    pinned: dict[str, str] = {}
    for line in (root / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pinned[key.strip()] = value.strip()
    return pinned


def tool(name: str) -> str:
    """Path of a pinned CLI installed by `make setup` into ./bin."""
    path = BIN / name
    if not path.exists():
        raise SystemExit(f"{path} is missing: run `make setup` first")
    return str(path)
