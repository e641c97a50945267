"""`repoctl serve-config [--check]`: regenerate (or check) overlays/<env>/serve-config.yaml."""

from __future__ import annotations

import argparse

from repoctl.paths import ENVIRONMENTS
from repoctl.serve_config import ServeConfigError, generate


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve-config", help="merge base Serve config with each overlay's overrides")
    parser.add_argument("--check", action="store_true", help="fail if a generated file is out of date")
    parser.add_argument("envs", nargs="*", default=list(ENVIRONMENTS))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        stale = generate(tuple(args.envs), check=args.check)
    except ServeConfigError as exc:
        raise SystemExit(f"serve-config: {exc}") from None
    if args.check and stale:
        for path in stale:
            print(f"{path}: out of date with base/support-assistant/serve-config.yaml + serve-overrides.yaml")
        print("run `make serve-config` and commit the result")
        return 1
    for path in stale:
        print(f"wrote {path}")
    return 0
