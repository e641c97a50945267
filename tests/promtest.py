"""promtool on series a live run exported: the alert rules of a rendered overlay, evaluated by `promtool test
rules` on exactly the labels and values the run scraped (plus what the cluster's scrape adds), so that an alert
is shown to fire on the metric Ray really exports, not on a hand-written one. Shared by tests/reliability and
tests/simulation."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from repoctl.paths import tool
from repoctl.promql import rule_groups

# What the PodMonitor's scrape adds to every series in a cluster (base/support-assistant/podmonitor.yaml:
# prometheus-operator's namespace label, the ray_io_cluster relabeling).
NAMESPACE = "support-assistant"


def selector(name: str, labels: dict[str, str]) -> str:
    return f"{name}{{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def alert_fires_on(rendered: list[dict], input_series: list[dict[str, str]], alertname: str, eval_time: str,
                   exp_alerts: list[dict], folder: Path) -> subprocess.CompletedProcess[str]:
    """Runs `promtool test rules` with `rendered`'s rules on `input_series` ([{series, values}]) and one
    alert_rule_test; returns promtool's result (returncode 0: the alert fired exactly as expected)."""
    (folder / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups(rendered)}, sort_keys=False))
    (folder / "live.test.yaml").write_text(yaml.safe_dump({
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": input_series,
                   "alert_rule_test": [{"eval_time": eval_time, "alertname": alertname, "exp_alerts": exp_alerts}]}],
    }, sort_keys=False))
    return subprocess.run([tool("promtool"), "test", "rules", "live.test.yaml"], cwd=folder, capture_output=True,
                          text=True, check=False)
