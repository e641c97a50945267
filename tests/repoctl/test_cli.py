"""repoctl.cli: one convention for commands: each command module has both register(subparsers) and run(args)."""

from __future__ import annotations

import importlib
import inspect

from repoctl.cli import COMMAND_MODULES, build_parser


def test_every_command_module_registers_and_runs_in_one_file() -> None:
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        assert callable(getattr(module, "register", None)), f"{name}: no register(subparsers)"
        assert callable(getattr(module, "run", None)), f"{name}: no run(args) beside its register()"
        assert list(inspect.signature(module.run).parameters) == ["args"], name


def test_every_subcommand_runs_its_own_modules_run() -> None:
    parser = build_parser()
    subcommands = next(a for a in parser._actions if a.dest == "command").choices
    for command, subparser in subcommands.items():
        func = subparser.get_default("func")
        assert func.__name__ == "run" and func.__module__ in COMMAND_MODULES, (command, func)
    assert {"validate", "render", "diff", "serve-config", "promote", "schemas", "policy", "run"} <= set(subcommands)
