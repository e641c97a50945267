"""Every overlay, the infrastructure layer and every sync entry render and pass kubeconform -strict against
the pinned schemas. (How failures are reported, and that the schemas are strict: tests/repoctl.)"""

from __future__ import annotations

from repoctl.paths import ENVIRONMENTS
from repoctl.validate import build_context, run_steps


def test_every_overlay_and_sync_entry_renders_and_validates() -> None:
    ctx = build_context()
    paths = {t.path for t in ctx.targets}
    assert {"infrastructure", "infrastructure/kuberay-operator", "infrastructure/admission"} <= paths
    for env in ENVIRONMENTS:
        assert {f"overlays/{env}", f"clusters/argocd/{env}", f"clusters/flux/{env}"} <= paths
    lines: list[str] = []
    results = run_steps(ctx, ["render", "schemas"], out=lines.append)
    assert results == {"render": [], "schemas": []}, "\n".join(lines)
    for target in ctx.targets:
        assert target.rendered.read_text() == target.text  # reused by other tools


def test_infrastructure_is_a_validated_target() -> None:
    # The layer is applied by Flux's `infrastructure` Kustomization and, add-on by add-on, by Argo CD, so
    # validate renders it too.
    ctx = build_context(paths=["infrastructure", "infrastructure/kuberay-operator", "infrastructure/admission"])
    layer, operator, admission = ctx.targets
    assert {d["kind"] for d in operator.docs} == {"HelmRepository", "HelmRelease", "ConfigMap"}
    assert {d["kind"] for d in admission.docs} == {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
    assert sorted(map(str, layer.docs)) == sorted(map(str, operator.docs + admission.docs))
    assert run_steps(ctx, ["schemas"], out=lambda _: None) == {"schemas": []}
