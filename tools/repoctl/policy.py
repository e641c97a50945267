"""Policy-as-code: run the Rego policies in policies/ over a rendered overlay with the pinned conftest.

The policies need every document of one overlay at once (`--combine`) and query every package
(`--all-namespaces`). They learn the environment from the overlay's app.kubernetes.io/environment
label and, as a cross-check, from `--data` written here (so a label copied from another overlay is
caught). See docs/policies.md for the rules.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from repoctl.paths import ENVIRONMENTS, ROOT, tool
from repoctl.render import RenderError, kustomize_build

POLICY_DIR = ROOT / "policies"


def conftest_command(rendered_file: Path, data_file: Path, policy_dir: Path = POLICY_DIR) -> list[str]:
    return [
        tool("conftest"),
        "test",
        "--combine",
        "--all-namespaces",
        "--no-color",
        "--output",
        "json",
        "--policy",
        str(policy_dir),
        "--data",
        str(data_file),
        str(rendered_file),
    ]


def run_conftest(rendered_file: Path, env: str, policy_dir: Path = POLICY_DIR) -> tuple[bool, list[str]]:
    """Check one overlay's rendered YAML (all documents in one file) against the policies.

    Returns (ok, lines): ok is False when any rule denies or conftest itself fails; warnings do not
    fail. Each line is "FAIL overlays/<env>: [rule-id] Kind/name: field: problem; fix: ..." or
    "WARN ..." (or "ERROR ..." when conftest could not run the policies).
    """
    where = f"overlays/{env}"
    with tempfile.TemporaryDirectory(prefix="repoctl-policy-") as tmp:
        data_file = Path(tmp) / "environment.json"
        data_file.write_text(json.dumps({"support_assistant": {"environment": env}}))
        result = subprocess.run(
            conftest_command(Path(rendered_file), data_file, policy_dir),
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
    try:
        reports = json.loads(result.stdout)
    except json.JSONDecodeError:
        # conftest prints a human error (Rego compile error, unreadable file) instead of JSON.
        detail = (result.stderr.strip() or result.stdout.strip() or f"exit {result.returncode}").splitlines()
        return False, [f"ERROR {where}: conftest failed: {line}" for line in detail]
    return parse_report(reports, where)


def parse_report(reports: list[dict], where: str) -> tuple[bool, list[str]]:
    failures = sorted(f["msg"] for report in reports for f in report.get("failures") or [])
    warnings = sorted(w["msg"] for report in reports for w in report.get("warnings") or [])
    lines = [f"FAIL {where}: {msg}" for msg in failures] + [f"WARN {where}: {msg}" for msg in warnings]
    return not failures, lines


def verify_policies(policy_dir: Path = POLICY_DIR) -> tuple[bool, list[str]]:
    """The policies' own unit tests (*_test.rego), with builtin errors shown so a typo cannot pass."""
    result = subprocess.run(
        [tool("conftest"), "verify", "--no-color", "--show-builtin-errors", "--policy", str(policy_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    return result.returncode == 0, (result.stdout + result.stderr).strip().splitlines()


def check_overlay(env: str) -> tuple[bool, list[str]]:
    """Render overlays/<env> with the pinned kustomize and run the policies on it."""
    try:
        rendered = kustomize_build(Path("overlays") / env)
    except RenderError as exc:
        return False, [f"ERROR overlays/{env}: {exc}"]
    with tempfile.TemporaryDirectory(prefix="repoctl-policy-") as tmp:
        rendered_file = Path(tmp) / f"{env}.yaml"
        rendered_file.write_text(rendered)
        return run_conftest(rendered_file, env)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "policy", help="run the conftest policies (policies/) on rendered overlays (default: all)"
    )
    # No argparse `choices`: with nargs="*" Python 3.11 checks the default list against them and fails.
    parser.add_argument("envs", nargs="*", default=list(ENVIRONMENTS), help=f"any of {', '.join(ENVIRONMENTS)}")
    parser.add_argument("--verify", action="store_true", help="also run the policies' unit tests")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    unknown = [env for env in args.envs if env not in ENVIRONMENTS]
    if unknown:
        raise SystemExit(f"repoctl policy: no overlay {unknown[0]!r}: use one of {', '.join(ENVIRONMENTS)}")
    all_ok = True
    if args.verify:
        ok, lines = verify_policies()
        all_ok &= ok
        if not ok:
            print("\n".join(lines))
    for env in args.envs:
        ok, lines = check_overlay(env)
        all_ok &= ok
        print("\n".join(lines) if lines else f"PASS overlays/{env}")
    return 0 if all_ok else 1
