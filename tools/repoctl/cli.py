"""`repoctl`: one entry point for the repository's commands (the Makefile calls these).

One convention for every command: its module (listed in COMMAND_MODULES) defines both
`register(subparsers)`, which adds the subcommand and sets `func=run`, and `run(args) -> int`, next to
the library code the command drives (e.g. serve_config.py: the merge, then `repoctl serve-config`).
Modules that are libraries only (paths, kubeconform, release, promql) register nothing. Errors
meant for a person are raised as SystemExit with a one-line message (file, field, fix), never a
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# module name -> registers one or more subcommands
COMMAND_MODULES = (
    "repoctl.serve_config",
    "repoctl.render",
    "repoctl.local_run",
    "repoctl.policy",
    "repoctl.schemas",
    "repoctl.validate",
    "repoctl.diff",
    "repoctl.promote",
    "repoctl.cluster",
    "repoctl.image",
    "repoctl.simulation.command",
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
