"""`repoctl validate`: render every overlay and sync entry, then run each check step over the output.

The steps run in order (STEPS) and each returns one line per failure, naming the target, the object and
the field: `overlays/prod: RayService support-assistant: spec.rayClusterConfig.foo: additional property
not allowed`. A step whose inputs are missing (no policies, no PrometheusRule, a missing tool) fails
saying so; nothing is skipped silently. To add a check, write `def step_x(ctx: Context) -> list[str]`
and append ("x", step_x) to STEPS.

Rendered output is kept in .cache/rendered/<name>.yaml (name: the target path with "/" -> "-", e.g.
overlays-prod.yaml, clusters-flux-dev.yaml) so that other tools can reuse it.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from repoctl import schemas
from repoctl.paths import CACHE, ENVIRONMENTS, ROOT, tool, versions
from repoctl.policy import run_conftest
from repoctl.render import RenderError, kustomize_build, load_documents
from repoctl.serve_config import ServeConfigError, generate

RENDERED = CACHE / "rendered"
SYNC_TOOLS = ("argocd", "flux")
NOT_TARGETS = {"base", "components"}  # shared parts under clusters/<tool>/, never synced on their own
# Folders outside overlays/ that a sync entry applies on their own (clusters/flux/base/kuberay-operator.yaml).
SYNCED_FOLDERS = ("base/kuberay-operator",)


@dataclass
class Target:
    """One kustomization that something syncs: an overlay or a clusters/<tool>/<env> entry."""

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


@dataclass
class Context:
    root: Path
    targets: list[Target]
    notes: dict[str, str] = field(default_factory=dict)  # step -> what it checked, for the ok line
    warnings: dict[str, list[str]] = field(default_factory=dict)  # step -> lines shown, not failing

    def rendered(self, overlays_only: bool = False) -> list[Target]:
        return [t for t in self.targets if t.ok and (t.is_overlay or not overlays_only)]


def target_paths(root: Path = ROOT) -> list[str]:
    """overlays/*, SYNCED_FOLDERS and clusters/<tool>/<env>: every kustomization that something syncs."""
    found = [
        f"overlays/{p.name}" for p in sorted((root / "overlays").iterdir()) if (p / "kustomization.yaml").is_file()
    ]
    found += [path for path in SYNCED_FOLDERS if (root / path / "kustomization.yaml").is_file()]
    for sync_tool in SYNC_TOOLS:
        folder = root / "clusters" / sync_tool
        if folder.is_dir():
            found += [
                f"clusters/{sync_tool}/{p.name}"
                for p in sorted(folder.iterdir())
                if p.name not in NOT_TARGETS and (p / "kustomization.yaml").is_file()
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
    ctx.notes["render"] = f"{len(ctx.rendered())} targets -> {_shown(RENDERED, ctx.root)}/"
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
    failures = kubeconform({t.path: t.text for t in targets})
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
    rules_dir = RENDERED / "rules"
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


# --- kubeconform ----------------------------------------------------------------------------------------

_CAUSE = re.compile(r"- at '(?P<path>[^']*)': (?P<msg>.*?)(?=\s+- at '|$)")
_ADDITIONAL = re.compile(r"additional propert(?:y|ies) (?P<names>'.*') not allowed")


def field_path(pointer: str) -> str:
    """JSON pointer -> the dotted form people write: /spec/containers/0/image -> spec.containers[0].image."""
    out = ""
    for part in pointer.strip("/").split("/") if pointer.strip("/") else []:
        part = part.replace("~1", "/").replace("~0", "~")
        if part.isdigit():
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_$][\w$-]*", part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out or "(root)"


def _explain(message: str) -> list[str]:
    """kubeconform's nested message -> 'field: problem' for every leaf cause."""
    causes = [(m["path"], m["msg"].strip()) for m in _CAUSE.finditer(message)]
    lines = []
    for pointer, msg in causes:
        if msg == "validation failed":
            continue  # a parent of more specific causes
        extra = _ADDITIONAL.search(msg)
        if extra:
            for name in re.findall(r"'([^']*)'", extra["names"]):
                child = field_path(f"{pointer}/{name.replace('~', '~0').replace('/', '~1')}")
                lines.append(f"{child}: additional property not allowed")
        else:
            lines.append(f"{field_path(pointer)}: {msg}")
    return lines or [message]


def kubeconform(texts: dict[str, str]) -> list[str]:
    """Validate rendered YAML streams ({label: text}) strictly against the local schemas."""
    if not texts:
        return []
    try:
        locations = schemas.locations()
    except schemas.SchemaError as exc:
        return [f"schemas: {exc}"]
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for i, (label, text) in enumerate(texts.items()):
            path = Path(tmp) / f"{i}.yaml"
            path.write_text(text)
            files[str(path)] = label
        args = [tool("kubeconform"), "-strict", "-summary", "-output", "json",
                "-kubernetes-version", versions()["KUBERNETES_VERSION"]]
        for location in locations:
            args += ["-schema-location", location]
        result = subprocess.run([*args, *files], capture_output=True, text=True, check=False)
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        return [f"schemas: kubeconform failed: {(result.stderr or result.stdout).strip()}"]
    failures = []
    for res in report.get("resources") or []:
        label = files.get(res.get("filename", ""), res.get("filename", "?"))
        what = f"{label}: {res.get('kind', '?')} {res.get('name') or '(unnamed)'}"
        msg = res.get("msg", "")
        if res.get("status") == "statusError" and "could not find schema" in msg:
            failures.append(f"{what}: no schema for {res.get('version')} {res.get('kind')}: add its CRD source "
                            "to CRD_SOURCES in tools/repoctl/schemas.py")
        elif res.get("status") in ("statusInvalid", "statusError"):
            failures += [f"{what}: {line}" for line in _explain(msg)]
    if result.returncode != 0 and not failures:
        failures.append(f"schemas: kubeconform exited {result.returncode}: {result.stderr.strip()}")
    return failures


def validate_documents(label: str, docs: Iterable[dict]) -> list[str]:
    """kubeconform failures for in-memory documents (what tests use to check a mutated overlay)."""
    return kubeconform({label: yaml.safe_dump_all(list(docs), sort_keys=False)})


# --- running --------------------------------------------------------------------------------------------


def build_context(root: Path = ROOT, paths: list[str] | None = None) -> Context:
    paths = paths if paths is not None else target_paths(root)
    with ThreadPoolExecutor(max_workers=4) as pool:
        targets = list(pool.map(lambda p: render_target(p, root), paths))
    RENDERED.mkdir(parents=True, exist_ok=True)
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
        "validate", help="render overlays and sync entries; serve-config drift, kubeconform, conftest, promtool"
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
