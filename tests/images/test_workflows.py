"""Every GitHub Actions workflow passes the pinned actionlint; the promote workflow runs `make promote`."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from repoctl.paths import ROOT, tool

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))


def test_there_are_workflows() -> None:
    assert any(path.name == "promote.yaml" for path in WORKFLOWS)


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[path.name for path in WORKFLOWS])
def test_actionlint(workflow: Path) -> None:
    result = subprocess.run([tool("actionlint"), "-no-color", str(workflow.relative_to(ROOT))], cwd=ROOT,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_is_a_working_linter(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    steps:\n"
                   "      - run: echo ${{ inputs.nope }\n")
    result = subprocess.run([tool("actionlint"), "-no-color", str(bad)], capture_output=True, text=True, check=False)
    assert result.returncode != 0


def test_promote_workflow_runs_make_promote_safely() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "promote.yaml").read_text())
    # PyYAML reads the key `on` as True (YAML 1.1).
    inputs = workflow[True]["workflow_dispatch"]["inputs"]
    assert {"from", "to"} <= inputs.keys()
    assert inputs["to"]["options"] == ["dev", "staging", "prod"]
    steps = workflow["jobs"]["promote"]["steps"]
    runs = [step["run"] for step in steps if "run" in step]
    assert any('make promote FROM="$FROM" TO="$TO"' in run for run in runs)
    # Inputs reach scripts through env only: `${{ }}` inside a script is a shell-injection hole.
    assert not any("${{" in run for run in runs)
    for step in steps:
        if "uses" in step:
            assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", step["uses"]), f"pin {step['uses']} to a commit"
    pull_request = next(step for step in steps if step.get("uses", "").startswith("peter-evans/create-pull-request@"))
    assert pull_request["with"]["add-paths"] == "overlays/${{ inputs.to }}/kustomization.yaml"
