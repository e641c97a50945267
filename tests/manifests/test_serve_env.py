"""Serve's data-plane settings (RAY_SERVE_* on the Ray containers): every Serve process reads them at
import, so a proxy, controller or replica on a node that disagreed would run another data plane."""

from __future__ import annotations

import pytest
from repoctl.paths import ENVIRONMENTS
from repoctl.render import find, ray_serve_env_of


def ray_containers(docs: list[dict]) -> dict[str, dict]:
    cluster = find(docs, "RayService")["spec"]["rayClusterConfig"]
    groups = {"head": cluster["headGroupSpec"]}
    groups.update({g["groupName"]: g for g in cluster["workerGroupSpecs"]})
    return {name: group["template"]["spec"]["containers"][0] for name, group in groups.items()}


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_ray_container_sets_the_same_serve_settings(rendered, env):
    wanted = ray_serve_env_of(rendered[env])
    assert wanted, "the RayService sets no RAY_SERVE_* variable"
    for name, container in ray_containers(rendered[env]).items():
        serve_env = {e["name"]: e.get("value") for e in container.get("env", []) if e["name"].startswith("RAY_SERVE_")}
        assert serve_env == wanted, f"{env}: {name} group's Serve settings differ from the head's"


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_throughput_optimized_keeps_the_proxy(rendered, env):
    # RAY_SERVE_THROUGHPUT_OPTIMIZED turns direct ingress on unless it is switched off: no proxy on
    # port 8000, and the ingress replicas on ports 30000-31000 that no Service routes to.
    serve_env = ray_serve_env_of(rendered[env])
    assert serve_env.get("RAY_SERVE_THROUGHPUT_OPTIMIZED") == "1"
    assert serve_env.get("RAY_SERVE_ENABLE_DIRECT_INGRESS") == "0"
    assert serve_env.get("RAY_SERVE_ENABLE_HA_PROXY", "0") == "0"
