"""`repoctl simulate --overlay <env>` (= `make simulate OVERLAY=<env>`): every scenario on one
simulated cluster of the overlay, report in .cache/simulate/<env>/ (report.json, timeline.png)."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

from repoctl.paths import ENVIRONMENTS, ROOT
from repoctl.render import RenderError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("simulate", help="an overlay's worker groups as a multi-node Ray cluster with "
                                                    "Ray's autoscaler: placement, scale up/down, node loss")
    parser.add_argument("--overlay", choices=ENVIRONMENTS, default="dev")
    parser.add_argument("--bundle", type=Path, default=ROOT / ".cache" / "bundle")
    parser.add_argument("--out", type=Path, default=None, help="default: .cache/simulate/<overlay>")
    parser.add_argument("--idle-timeout-s", type=float, default=20.0,
                        help="the autoscaler's idle timeout for this run (the overlay's is minutes)")
    parser.add_argument("--ramp-step-s", type=float, default=15.0, help="seconds at each step of the load ramp")
    parser.add_argument("--ramp-clients", type=_clients, default=(4, 16, 48),
                        help="closed-loop clients at each step of the ramp, comma-separated (default: 4,16,48)")
    parser.add_argument("--no-node-loss", action="store_true")
    parser.add_argument("--no-misconfigurations", action="store_true",
                        help="skip the misconfigured Generator at the end (simulation/misconfigurations.py)")
    parser.add_argument("--language-model", action="store_true",
                        help="keep the overlay's language model in the Generator (default: extractive; seconds of "
                             "decoding per answer on this machine's cores would hide the scaling)")
    parser.set_defaults(func=run)


def _clients(text: str) -> tuple[int, ...]:
    try:
        steps = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not a comma-separated list of client counts") from None
    if not steps or any(n < 1 for n in steps):
        raise argparse.ArgumentTypeError(f"{text!r}: every step needs at least 1 client")
    return steps


def _stop_on_sigterm(*_: Any) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    if not (args.bundle / "manifest.json").is_file():
        raise SystemExit(f"{args.bundle}: no model bundle; build it with `make bundle`")
    from repoctl.simulation import report
    from repoctl.simulation.scenarios import Settings, simulate

    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    out = args.out or ROOT / ".cache" / "simulate" / args.overlay
    settings = Settings(args.overlay, args.bundle, idle_timeout_s=args.idle_timeout_s, ramp_step_s=args.ramp_step_s,
                        ramp_clients=args.ramp_clients, node_loss=not args.no_node_loss,
                        misconfigurations=not args.no_misconfigurations,
                        language_model=args.language_model)
    try:
        result = simulate(settings, on_event=lambda line: print(line, flush=True))
    except RenderError as exc:
        raise SystemExit(str(exc)) from None
    json_path, png_path = report.write(result, out)
    print(f"report: {json_path}\ntimeline: {png_path}")
    if result.error:
        print(f"repoctl simulate: {result.error}", file=sys.stderr)
        return 1
    if result.leftover_pids:
        print(f"repoctl simulate: processes left after stop: {result.leftover_pids}", file=sys.stderr)
        return 1
    return 0
