"""Alerting and recording rules, as each overlay renders them, checked and unit tested with promtool.

Every PrometheusRule's `spec` in `kustomize build overlays/<env>` is written to one rule file
(`rules.yaml`, the name the *.test.yaml files load), then `promtool check rules` and
`promtool test rules` run on it. The layer test files (tests/rules/*.test.yaml) must pass in every
environment; tests/rules/env/<env>.test.yaml pin behaviour that differs per environment.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from repoctl.paths import ENVIRONMENTS, ROOT, tool
from repoctl.promql import metric_names, rule_groups

HERE = Path(__file__).resolve().parent
RULE_FILE = "rules.yaml"
LAYER_TEST_FILES = sorted(HERE.glob("*.test.yaml"))
RUNBOOKS = ROOT / "docs" / "runbooks"
RUNBOOK_URL = "https://github.com/acme-platform/support-assistant-gitops/blob/main/docs/runbooks/{}.md"
LAYERS = ("kubernetes", "kuberay", "ray", "serve", "application")
SEVERITIES = ("critical", "warning", "info")
DASHBOARD = ROOT / "base" / "monitoring" / "dashboards" / "support-assistant.json"
def alerts(groups: list[dict]) -> dict[str, dict]:
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), *args], cwd=cwd, capture_output=True, text=True, check=False)


def write_rules(groups: list[dict], folder: Path) -> Path:
    path = folder / RULE_FILE
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


# --- promtool ---------------------------------------------------------------------------------


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_promtool_check_rules(env: str, rendered: dict[str, list[dict]], tmp_path: Path) -> None:
    groups = rule_groups(rendered[env])
    assert groups, f"overlays/{env}: no PrometheusRule rendered"
    result = promtool("check", "rules", str(write_rules(groups, tmp_path)), cwd=tmp_path)
    assert result.returncode == 0, f"overlays/{env}: promtool check rules\n{result.stdout}{result.stderr}"


@pytest.fixture(scope="module")
def unit_test_runs(
    rendered: dict[str, list[dict]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[int, str]]:
    """`promtool test rules` for every overlay, started together (each takes seconds of CPU)."""
    running: dict[str, subprocess.Popen[str]] = {}
    for env in ENVIRONMENTS:
        folder = tmp_path_factory.mktemp(f"rules-{env}")
        write_rules(rule_groups(rendered[env]), folder)
        env_file = HERE / "env" / f"{env}.test.yaml"
        if not env_file.exists():
            continue
        names = []
        for src in [*LAYER_TEST_FILES, env_file]:
            name = src.name if src.parent == HERE else f"env-{src.name}"
            shutil.copy(src, folder / name)
            names.append(name)
        running[env] = subprocess.Popen(
            [tool("promtool"), "test", "rules", *names],
            cwd=folder,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    results = {}
    for env, proc in running.items():
        output, _ = proc.communicate()  # reads the pipe while waiting, so a long report cannot block
        results[env] = (proc.returncode, output)
    return results


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_promtool_unit_tests(env: str, unit_test_runs: dict[str, tuple[int, str]]) -> None:
    env_file = HERE / "env" / f"{env}.test.yaml"
    assert env_file.exists(), f"{env_file.relative_to(ROOT)} is missing: pin this environment's thresholds"
    returncode, output = unit_test_runs[env]
    assert returncode == 0, f"overlays/{env}: promtool test rules\n{output}"


# --- coverage of the unit tests ---------------------------------------------------------------


def _cases() -> dict[str, dict[str, list[set[str]]]]:
    """alert -> {"firing": [metric names of the test's input], "silent": [...]} from the layer tests."""
    cases: dict[str, dict[str, list[set[str]]]] = {}
    for path in LAYER_TEST_FILES:
        spec = yaml.safe_load(path.read_text())
        assert spec.get("rule_files") == [RULE_FILE], f"{path.name}: rule_files must be [{RULE_FILE}]"
        for test in spec["tests"]:
            inputs = {re.match(r"[\w:]+", s["series"]).group(0) for s in test.get("input_series", [])}
            for case in test.get("alert_rule_test", []):
                expected = case.get("exp_alerts") or []
                for alert in expected:
                    assert alert.get("exp_labels") and alert.get("exp_annotations"), (
                        f"{path.name} test {test['name']!r}: {case['alertname']} firing case must assert "
                        "exp_labels and exp_annotations"
                    )
                kind = "firing" if expected else "silent"
                cases.setdefault(case["alertname"], {"firing": [], "silent": []})[kind].append(inputs)
    return cases


def test_every_alert_has_a_firing_and_a_silent_case(rendered: dict[str, list[dict]]) -> None:
    defined = alerts(rule_groups(rendered["staging"]))
    cases = _cases()
    problems = []
    for name in sorted(defined):
        got = cases.get(name, {"firing": [], "silent": []})
        if not got["firing"]:
            problems.append(f"{name}: no case where it fires")
        if not any(got["silent"]):
            problems.append(f"{name}: no case with input series where it stays silent")
        # "Similar but healthy": the silent case feeds the same metrics the firing case does.
        elif got["firing"] and not any(s >= f for f in got["firing"] for s in got["silent"]):
            problems.append(f"{name}: no silent case feeds the metrics of a firing case")
    problems += [f"{name}: tested but no such alert" for name in sorted(set(cases) - set(defined))]
    assert not problems, "tests/rules/*.test.yaml:\n" + "\n".join(problems)


# --- rule conventions -------------------------------------------------------------------------


def _keeps_deployment(expr: str) -> bool:
    """Whether an alert's result is per Serve deployment: it aggregates by deployment, or its first
    operand is a `deployment:` recording rule (which keeps the label)."""
    first = expr.strip()
    return bool(re.search(r"\bby\s*\([^)]*\bdeployment\b", expr)) or first.startswith("deployment:")


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_alert_labels_and_annotations(env: str, rendered: dict[str, list[dict]]) -> None:
    problems = []
    for group in rule_groups(rendered[env]):
        group_layer = group["name"].rsplit(".", 1)[-1]
        for rule in group["rules"]:
            if "alert" not in rule:
                continue
            name, labels, notes = rule["alert"], rule.get("labels", {}), rule.get("annotations", {})
            if labels.get("layer") not in LAYERS or labels["layer"] != group_layer:
                problems.append(f"{name}: label layer={labels.get('layer')!r}, group {group['name']}")
            if labels.get("severity") not in SEVERITIES:
                problems.append(f"{name}: label severity={labels.get('severity')!r} not in {SEVERITIES}")
            description = notes.get("description", "")
            if not notes.get("summary"):
                problems.append(f"{name}: annotation summary is missing")
            if "namespace" not in description:
                problems.append(f"{name}: description must name the namespace")
            if "RayService" not in description:
                problems.append(f"{name}: description must name the RayService")
            # Per-deployment alerts (their expression keeps the deployment label) must say which one.
            if _keeps_deployment(rule["expr"]) and "$labels.deployment" not in description:
                problems.append(f"{name}: description must name the deployment ($labels.deployment)")
            if notes.get("runbook_url") != RUNBOOK_URL.format(name):
                problems.append(f"{name}: runbook_url must be {RUNBOOK_URL.format(name)}")
    assert not problems, f"overlays/{env}:\n" + "\n".join(problems)


def test_runbooks_match_alerts(rendered: dict[str, list[dict]]) -> None:
    defined = set(alerts(rule_groups(rendered["staging"])))
    runbooks = {p.stem for p in RUNBOOKS.glob("*.md") if p.name != "README.md"}
    assert not defined - runbooks, f"alerts without docs/runbooks/<alert>.md: {sorted(defined - runbooks)}"
    assert not runbooks - defined, f"runbooks without an alert: {sorted(runbooks - defined)}"
    for name in defined:
        text = (RUNBOOKS / f"{name}.md").read_text()
        sections = set(re.findall(r"^## (.+)$", text, flags=re.M))
        missing = {"Symptom", "Layer", "First checks", "Common fixes", "What not to change first"} - sections
        assert not missing, f"docs/runbooks/{name}.md: missing sections {sorted(missing)}"


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_referenced_recording_rule_is_defined(env: str, rendered: dict[str, list[dict]]) -> None:
    groups = rule_groups(rendered[env])
    recorded = {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}
    problems = []
    for group in groups:
        for rule in group["rules"]:
            for name in metric_names(rule["expr"]):
                if ":" in name and name not in recorded:
                    problems.append(f"{rule.get('alert') or rule.get('record')}: {name} is not recorded")
    assert not problems, "\n".join(problems)


# --- per-environment thresholds ---------------------------------------------------------------


def _knobs(docs: list[dict]) -> dict[str, str]:
    """Thresholds and for-durations of one overlay, keyed by rule."""
    knobs: dict[str, str] = {}
    for group in rule_groups(docs):
        for rule in group["rules"]:
            if "alert" in rule:
                knobs[f"{rule['alert']}.for"] = rule.get("for", "0s")
            elif group["name"] == "support-assistant.thresholds":
                key = rule["record"] + "".join(f"{{{k}={v}}}" for k, v in sorted(rule.get("labels", {}).items()))
                knobs[key] = rule["expr"]
    return knobs


def _number(value: str) -> float:
    match = re.fullmatch(r"vector\(([\d.]+)\)", value)
    if match:
        return float(match.group(1))
    seconds = {"s": 1, "m": 60, "h": 3600}
    return sum(float(n) * seconds[u] for n, u in re.findall(r"(\d+)([smh])", value))


# Bigger value = stricter for these thresholds (alert on a smaller drop); smaller = stricter elsewhere.
_HIGHER_IS_STRICTER = {"support_assistant:threshold:generator_throughput_ratio"}


def test_prod_is_stricter_than_dev_where_the_overlays_patch_it(rendered: dict[str, list[dict]]) -> None:
    dev, staging, prod = (_knobs(rendered[env]) for env in ("dev", "staging", "prod"))
    assert dev.keys() == staging.keys() == prod.keys()
    differing = {k for k in prod if not (dev[k] == staging[k] == prod[k])}
    # These are the knobs overlays/{dev,prod}/monitoring-patch.yaml own; a patch that stops applying
    # (or a kustomization.yaml that drops it) shows up here.
    expected = {
        "RayPodPending.for",
        "RayServiceNotReady.for",
        "RayServiceUpgradeStuck.for",
        "RayClusterNotProvisioned.for",
        "RayClusterPendingNodes.for",
        "ServeReplicasBelowTarget.for",
        "ServeLatencyP99High.for",
        *(
            f"deployment:ray_serve_deployment_latency_slo_ms:p99{{deployment={d}}}"
            for d in ("Ingress", "Retriever", "Reranker", "Generator")
        ),
        *(
            f"support_assistant:threshold:{t}"
            for t in (
                "http_5xx_ratio",
                "deployment_error_ratio",
                "stage_error_ratio",
                "empty_retrieval_ratio",
                "generator_throughput_ratio",
                "node_memory_ratio",
                "serve_queued_queries",
                "serve_replica_starts_15m",
            )
        ),
    }
    assert differing == expected, f"differ: {sorted(differing ^ expected)}"
    for key in sorted(expected):
        d, s, p = (_number(knobs[key]) for knobs in (dev, staging, prod))
        ordered = (d < s < p) if key in _HIGHER_IS_STRICTER else (d > s > p)
        assert ordered, f"{key}: dev={dev[key]} staging={staging[key]} prod={prod[key]} is not dev > staging > prod"


# --- dashboard --------------------------------------------------------------------------------


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_dashboard_configmap_and_queries(env: str, rendered: dict[str, list[dict]]) -> None:
    docs = rendered[env]
    configmaps = [
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
    ]
    assert len(configmaps) == 1, f"overlays/{env}: want one ConfigMap labelled grafana_dashboard=1"
    text = configmaps[0]["data"]["support-assistant.json"]
    assert text == DASHBOARD.read_text(), f"overlays/{env}: dashboard ConfigMap differs from {DASHBOARD.name}"
    dashboard = json.loads(text)
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert [r.split(":")[0].lower() for r in rows] == list(LAYERS), f"one row per layer, got {rows}"
    recorded = {r["record"] for g in rule_groups(docs) for r in g["rules"] if "record" in r}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            unknown = {n for n in metric_names(target["expr"]) if ":" in n} - recorded
            assert not unknown, f"panel {panel['title']!r}: {sorted(unknown)} are not recording rules"


# --- overlay patches --------------------------------------------------------------------------

PATCHED_ENVS = ("dev", "prod")  # staging runs the base values


@pytest.mark.parametrize("env", PATCHED_ENVS)
def test_overlay_applies_its_monitoring_patch(env: str) -> None:
    kustomization = yaml.safe_load((ROOT / "overlays" / env / "kustomization.yaml").read_text())
    wanted = {
        "path": "monitoring-patch.yaml",
        "target": {"group": "monitoring.coreos.com", "kind": "PrometheusRule", "name": "support-assistant-alerts"},
    }
    assert wanted in kustomization.get("patches", []), (
        f"overlays/{env}/kustomization.yaml: add to patches: `- path: monitoring-patch.yaml` with "
        "`target: {group: monitoring.coreos.com, kind: PrometheusRule, name: support-assistant-alerts}`"
    )


@pytest.mark.parametrize("env", PATCHED_ENVS)
def test_every_patched_rule_is_identified_first(env: str) -> None:
    """A JSON patch addresses rules by index; a `test` op on the rule's name must guard each one."""
    ops = yaml.safe_load((ROOT / "overlays" / env / "monitoring-patch.yaml").read_text())
    guarded: set[str] = set()
    for op in ops:
        rule = re.match(r"(/spec/groups/\d+/rules/\d+)/", op["path"])
        if op["op"] == "test" and rule and re.search(r"/(alert|record|labels/deployment)$", op["path"]):
            guarded.add(rule.group(1))
        elif op["op"] != "test":
            assert rule and rule.group(1) in guarded, (
                f"overlays/{env}/monitoring-patch.yaml: {op['op']} {op['path']} has no preceding `test` op on "
                "the rule's alert/record name"
            )
