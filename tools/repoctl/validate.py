"""`repoctl validate`: render every target, then run each check step over the output.

The targets are what repoctl.render discovers (target_paths): the overlays, the infrastructure layer and
its add-ons, and the Argo CD and Flux entries. The steps run in order (STEPS) and each returns one line
per failure, naming the target, the object and the field: `overlays/prod: RayService support-assistant:
spec.rayClusterConfig.foo: additional property not allowed`. A step whose inputs are missing (no
policies, no PrometheusRule, a missing tool) fails saying so; nothing is skipped silently. To add a
check, write `def step_x(ctx: Context) -> list[str]` and append ("x", step_x) to STEPS.

Rendered output is kept in .cache/rendered/<name>.yaml (repoctl.render.RENDERED; name: the target path
with "/" -> "-", e.g. overlays-prod.yaml, infrastructure-admission.yaml, clusters-flux-dev.yaml) so that
other tools can reuse it.
"""

from __future__ import annotations

import argparse
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from repoctl import kubeconform, render
from repoctl.paths import ENVIRONMENTS, ROOT, tool, versions
from repoctl.policy import run_conftest
from repoctl.render import INFRASTRUCTURE, SYNC_TOOLS, Target, render_target, target_paths
from repoctl.serve_config import ServeConfigError, generate


@dataclass
class Context:
    root: Path
    targets: list[Target]
    notes: dict[str, str] = field(default_factory=dict)  # step -> what it checked, for the ok line
    warnings: dict[str, list[str]] = field(default_factory=dict)  # step -> lines shown, not failing

    def rendered(self, overlays_only: bool = False) -> list[Target]:
        return [t for t in self.targets if t.ok and (t.is_overlay or not overlays_only)]


def _shown(path: Path, root: Path) -> Path:
    """Repository-relative where possible (promotion tests validate a copy whose cache lives elsewhere)."""
    return path.relative_to(root) if path.is_relative_to(root) else path


# --- steps ----------------------------------------------------------------------------------------------


def step_render(ctx: Context) -> list[str]:
    failures = [f"{target.path}: {target.error}" for target in ctx.targets if not target.ok]
    missing = [
        f"{kind}/{env}"
        for env in ENVIRONMENTS
        for kind in ("overlays", *(f"clusters/{t}" for t in SYNC_TOOLS))
        if f"{kind}/{env}" not in {t.path for t in ctx.targets}
    ]
    failures += [f"{path}: missing (every environment needs an overlay and an Argo CD and a Flux entry)"
                 for path in missing]
    if not (ctx.root / INFRASTRUCTURE / "kustomization.yaml").is_file():
        failures.append(f"{INFRASTRUCTURE}: missing (the cluster add-ons every sync entry applies before the app)")
    ctx.notes["render"] = f"{len(ctx.rendered())} targets -> {_shown(render.RENDERED, ctx.root)}/"
    return failures


def step_serve_config(ctx: Context) -> list[str]:
    try:
        stale = generate(ENVIRONMENTS, check=True, overlays=ctx.root / "overlays")
    except ServeConfigError as exc:
        return [str(exc).replace(f"{ctx.root}/", "")]  # "<overrides file>: <key>: <why>", repo-relative
    ctx.notes["serve-config"] = f"{len(ENVIRONMENTS)} generated serve-config.yaml files match their sources"
    return [
        f"{Path(path).relative_to(ctx.root)}: out of date with base/support-assistant/serve-config.yaml + "
        "serve-overrides.yaml: run `make serve-config`"
        for path in stale
    ]


def step_schemas(ctx: Context) -> list[str]:
    targets = ctx.rendered()
    failures = kubeconform.validate({t.path: t.text for t in targets})
    count = sum(len(t.docs) for t in targets)
    ctx.notes["schemas"] = (
        f"{count} objects in {len(targets)} targets (kubeconform -strict, Kubernetes "
        f"{versions()['KUBERNETES_VERSION']} + pinned CRDs)"
    )
    return failures


def step_policies(ctx: Context) -> list[str]:
    """conftest over each rendered overlay (repoctl.policy.run_conftest: all documents at once so rules
    can relate objects, the environment passed as data)."""
    policy_dir = ctx.root / "policies"
    policies = sorted(policy_dir.rglob("*.rego")) if policy_dir.is_dir() else []
    if not [p for p in policies if not p.name.endswith("_test.rego")]:
        return ["policies: no .rego policies under policies/: conftest has nothing to check the overlays against"]
    failures: list[str] = []
    targets = ctx.rendered(overlays_only=True)
    for target in targets:
        _, lines = run_conftest(target.rendered, target.path.split("/", 1)[1], policy_dir)
        for line in lines:
            level, _, message = line.partition(" ")
            if level == "WARN":
                ctx.warnings.setdefault("policies", []).append(message)
            else:
                failures.append(message)
    warnings = len(ctx.warnings.get("policies", []))
    ctx.notes["policies"] = f"{len(targets)} overlays against {len(policies)} policy files ({warnings} warnings)"
    return failures


def step_rules(ctx: Context) -> list[str]:
    failures, checked = [], 0
    rules_dir = render.RENDERED / "rules"
    for target in ctx.rendered(overlays_only=True):
        rules = [d for d in target.docs if d.get("kind") == "PrometheusRule"]
        if not rules:
            failures.append(
                f"{target.path}: renders no PrometheusRule (alerts and recording rules come from base/monitoring)"
            )
            continue
        for rule in rules:
            name = rule.get("metadata", {}).get("name", "?")
            path = rules_dir / target.name / f"{name}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(rule.get("spec") or {}, sort_keys=False))
            result = subprocess.run(
                [tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True, check=False
            )
            checked += 1
            if result.returncode != 0:
                for line in _promtool_errors(result.stdout + result.stderr, path):
                    failures.append(f"{target.path}: PrometheusRule {name}: {line}")
    ctx.notes["rules"] = f"{checked} PrometheusRules (promtool check rules)"
    return failures


def _promtool_errors(output: str, path: Path) -> list[str]:
    lines = []
    for line in output.splitlines():
        line = line.strip()
        if not line or line.startswith(("Checking ", "FAILED", "SUCCESS")):
            continue
        lines.append(line.replace(f"{path}: ", "").replace(str(path), "spec"))
    return lines or ["promtool check rules failed"]


Step = Callable[[Context], list[str]]
STEPS: list[tuple[str, Step]] = [
    ("render", step_render),
    ("serve-config", step_serve_config),
    ("schemas", step_schemas),
    ("policies", step_policies),
    ("rules", step_rules),
]


# --- running --------------------------------------------------------------------------------------------


def build_context(root: Path = ROOT, paths: list[str] | None = None) -> Context:
    paths = paths if paths is not None else target_paths(root)
    with ThreadPoolExecutor(max_workers=4) as pool:
        targets = list(pool.map(lambda p: render_target(p, root), paths))
    render.RENDERED.mkdir(parents=True, exist_ok=True)
    for target in targets:
        if target.ok:
            target.rendered.write_text(target.text)
        else:
            target.rendered.unlink(missing_ok=True)  # never leave a stale render for other tools to pick up
    return Context(root, targets)


def run_steps(ctx: Context, names: list[str] | None = None, out=print) -> dict[str, list[str]]:
    """Run the named steps (default: all) in STEPS order; return {step: failure lines}."""
    unknown = set(names or []) - {name for name, _ in STEPS}
    if unknown:
        raise SystemExit(f"validate: unknown step(s) {', '.join(sorted(unknown))}; steps: "
                         f"{', '.join(n for n, _ in STEPS)}")
    results: dict[str, list[str]] = {}
    for name, step in STEPS:
        if names and name not in names:
            continue
        started = time.monotonic()
        failures = step(ctx)
        results[name] = failures
        took = f"{time.monotonic() - started:.1f}s"
        if failures:
            out(f"FAIL {name} ({took}): {len(failures)} failure(s)")
            for line in failures:
                out(f"  {line}")
        else:
            out(f"ok   {name} ({took}): {ctx.notes.get(name, '')}")
        for line in ctx.warnings.get(name, []):
            out(f"  warning: {line}")
    return results


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "validate", help="render overlays, infrastructure and sync entries; serve-config drift, kubeconform, "
        "conftest, promtool"
    )
    parser.add_argument("--step", action="append", dest="steps", metavar="NAME",
                        help=f"run only this step (repeatable): {', '.join(n for n, _ in STEPS)}")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    ctx = build_context()
    results = run_steps(ctx, args.steps)
    failed = {name: len(lines) for name, lines in results.items() if lines}
    total = sum(failed.values())
    if total:
        detail = ", ".join(f"{name} {count}" for name, count in failed.items())
        print(f"validate: FAILED: {total} failure(s) ({detail}) in {len(ctx.targets)} targets")
        return 1
    print(f"validate: ok: {len(results)} steps passed for {len(ctx.targets)} targets")
    return 0
