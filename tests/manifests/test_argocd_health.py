"""The Argo CD health checks (Lua, run here with Lua 5.1 like Argo CD's gopher-lua) behave."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lupa import lua51
from repoctl.paths import ROOT

HEALTH = ROOT / "clusters/argocd/base/health"


def health(script: Path, obj: dict[str, Any]) -> tuple[str, str]:
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)  # Argo CD sets the live object as `obj`
    result = lua.execute(script.read_text())
    return result["status"], result["message"]


def rayservice(*conditions: dict[str, str], generation: int = 2, observed: int | None = 2) -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": list(conditions)}
    if observed is not None:
        status["observedGeneration"] = observed
    return {"apiVersion": "ray.io/v1", "kind": "RayService",
            "metadata": {"name": "support-assistant", "generation": generation}, "status": status}


def ready(status: str, reason: str, message: str = "") -> dict[str, str]:
    return {"type": "Ready", "status": status, "reason": reason, "message": message or reason}


UPGRADING = {"type": "UpgradeInProgress", "status": "False", "reason": "NoPendingCluster"}

CASES = [
    ("ready", rayservice(UPGRADING, ready("True", "NonZeroServeEndpoints")), "Healthy"),
    ("initializing", rayservice(ready("False", "Initializing")), "Progressing"),
    ("not-ready-zero-endpoints", rayservice(ready("False", "ZeroServeEndpoints")), "Progressing"),
    ("initializing-timeout", rayservice(ready("False", "InitializingTimeout", "not ready within 15m")), "Degraded"),
    ("validation-failed", rayservice(ready("False", "ValidationFailed")), "Degraded"),
    ("unknown", rayservice(ready("Unknown", "Initializing")), "Progressing"),
    ("no-ready-condition", rayservice(UPGRADING), "Progressing"),
    ("no-status", {"kind": "RayService", "metadata": {"name": "x", "generation": 1}}, "Progressing"),
    ("stale-generation", rayservice(ready("True", "NonZeroServeEndpoints"), generation=3, observed=2), "Progressing"),
]


@pytest.mark.parametrize(("obj", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rayservice_health(obj: dict[str, Any], expected: str) -> None:
    status, _ = health(HEALTH / "ray.io_RayService.lua", obj)
    assert status == expected


def test_rayservice_health_message_carries_the_reason() -> None:
    message = "RayService failed to become ready within 15m0s"
    obj = rayservice(ready("False", "InitializingTimeout", message))
    assert health(HEALTH / "ray.io_RayService.lua", obj) == ("Degraded", message)


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"status": {"health": {"status": "Healthy"}}}, ("Healthy", "")),
        ({"status": {"health": {"status": "Degraded", "message": "boom"}}}, ("Degraded", "boom")),
        ({"status": {}}, ("Progressing", "")),
        ({}, ("Progressing", "")),
    ],
)
def test_application_health(obj: dict[str, Any], expected: tuple[str, str]) -> None:
    assert health(HEALTH / "argoproj.io_Application.lua", obj) == expected
