"""`repoctl`: one entry point for the repository's commands (the Makefile calls these).

Each subcommand lives in its own module exposing `register(subparsers)`; errors meant for a
person are raised as SystemExit with a one-line message (file, field, fix), never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# module name -> registers one or more subcommands
COMMAND_MODULES = (
    "repoctl.serve_config_cmd",
    "repoctl.render",
    "repoctl.local_run",
    "repoctl.policy",
    "repoctl.schemas",
    "repoctl.validate",
    "repoctl.diff",
    "repoctl.promote",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="repoctl", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
