"""Serve's data-plane settings (RAY_SERVE_* on the Ray containers): every Serve process reads them at
import, so a proxy, controller or replica on a node that disagreed would run another data plane."""

from __future__ import annotations

import importlib

import pytest
from repoctl.paths import ENVIRONMENTS
from repoctl.render import find, ray_containers, ray_serve_env_of, serve_config_of, serve_env_of_container
from support_assistant.serving import proxy_gate


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_ray_container_sets_the_same_serve_settings(rendered, env):
    wanted = ray_serve_env_of(rendered[env])
    assert wanted, "the RayService sets no RAY_SERVE_* variable"
    containers = ray_containers(find(rendered[env], "RayService"))
    assert len(containers) >= 3  # head + the cpu and gpu worker groups
    for group, container in containers:
        assert serve_env_of_container(container) == wanted, f"{env}: {group} group's Serve settings differ"


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_throughput_optimized_keeps_the_proxy(rendered, env):
    # RAY_SERVE_THROUGHPUT_OPTIMIZED turns direct ingress on unless it is switched off: no proxy on
    # port 8000, and the ingress replicas on ports 30000-31000 that no Service routes to.
    serve_env = ray_serve_env_of(rendered[env])
    assert serve_env.get("RAY_SERVE_THROUGHPUT_OPTIMIZED") == "1"
    assert serve_env.get("RAY_SERVE_ENABLE_DIRECT_INGRESS") == "0"
    # Faster too (docs/benchmarks.md section 3), but Ray 2.60's HAProxy binds its stats and exporter
    # ports to every interface, and a killed ingress replica's requests lose their connection.
    assert serve_env.get("RAY_SERVE_ENABLE_HA_PROXY", "0") == "0"
    # Faster (docs/benchmarks.md section 3), but while a killed ingress replica is being replaced
    # new requests get Serve's plain-text 500 instead of waiting for the replacement.
    assert serve_env.get("RAY_SERVE_PROXY_USE_GRPC", "0") != "1"
    assert serve_env.get("RAY_SERVE_USE_GRPC_BY_DEFAULT", "0") != "1", "turns the proxy's gRPC on too"


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_proxy_runs_the_gate_sized_like_one_ingress_replica(rendered, env):
    serve_env = ray_serve_env_of(rendered[env])
    module, _, name = serve_env["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"].partition(":")
    assert getattr(importlib.import_module(module), name) is proxy_gate.middlewares
    gate = proxy_gate.ProxyGateConfig.from_env(serve_env)
    ingress = next(d for d in serve_config_of(rendered[env])["applications"][0]["deployments"]
                   if d["name"] == "Ingress")["user_config"]
    # A proxy never refuses what one ingress replica would take, and tells clients the same wait.
    assert gate.max_in_flight == ingress["max_in_flight"]
    assert gate.retry_after_s == ingress["retry_after_s"]
