"""repoctl.validate: the steps report what is missing or broken, one line per failure naming the target.
(That the real tree passes: tests/manifests/test_targets_validate.py.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from repoctl import validate
from repoctl.paths import ENVIRONMENTS, ROOT
from repoctl.render import render_target


def test_render_step_names_every_missing_entry_and_the_infrastructure(tmp_path: Path) -> None:
    failures = validate.step_render(validate.Context(tmp_path, []))
    expected = {f"{kind}/{env}" for env in ENVIRONMENTS for kind in ("overlays", "clusters/argocd", "clusters/flux")}
    assert {line.split(":", 1)[0] for line in failures} == {*expected, "infrastructure"}
    assert "infrastructure: missing (the cluster add-ons every sync entry applies before the app)" in failures


def test_render_step_reports_a_target_that_does_not_render(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "infrastructure", tmp_path / "infrastructure")
    (tmp_path / "infrastructure/admission/kustomization.yaml").write_text("resources: [gone.yaml]\n")
    broken = render_target("infrastructure/admission", tmp_path)
    ctx = validate.Context(tmp_path, [broken])
    (line,) = [f for f in validate.step_render(ctx) if f.startswith("infrastructure")]
    assert line.startswith("infrastructure/admission: kustomize build infrastructure/admission failed")
    assert ctx.rendered() == []  # later steps skip what did not render (render already failed it)


def test_unknown_step_is_refused() -> None:
    with pytest.raises(SystemExit, match="unknown step"):
        validate.run_steps(validate.Context(ROOT, []), ["kubeconfrom"], out=lambda _: None)


def test_steps_are_in_order() -> None:
    assert [name for name, _ in validate.STEPS] == ["render", "serve-config", "schemas", "policies", "rules"]
