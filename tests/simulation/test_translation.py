"""The simulation's cluster and Serve config, checked without starting Ray: the node types come
from Ray's own KubeRay translation of the rendered overlay, and only what the fake multi-node
provider needs is changed (tools/repoctl/simulation/cluster.py, scenarios.py)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from repoctl.render import find, serve_config_of
from repoctl.simulation.cluster import autoscaler_version, derive_autoscaling_config, fake_provider
from repoctl.simulation.scenarios import deployments_of, groups_of, simulated_serve_config
from support_assistant.runtime.session import SIMULATED_GPUS_ENV, gpus_simulated

# What the overlays' patches say (overlays/<env>/rayservice-patch.yaml), per worker group.
BOUNDS = {"dev": {"cpu": (1, 2), "gpu": (0, 2)}, "staging": {"cpu": (1, 4), "gpu": (1, 2)},
          "prod": {"cpu": (2, 6), "gpu": (2, 4)}}


@pytest.mark.parametrize("env", sorted(BOUNDS))
def test_rays_kuberay_translation_yields_each_overlays_worker_groups(rendered, env: str) -> None:
    derived = derive_autoscaling_config(find(rendered[env], "RayService"))
    groups = groups_of(derived)
    assert {g: (s["min"], s["max"]) for g, s in groups.items()} == BOUNDS[env]
    assert groups["gpu"]["resources"]["GPU"] == 1 and "GPU" not in groups["cpu"]["resources"]
    assert derived["available_node_types"][derived["head_node_type"]]["resources"]["CPU"] == 0
    assert derived["idle_timeout_minutes"] == 5


def test_only_the_provider_and_what_it_needs_change(rendered) -> None:
    rayservice = find(rendered["dev"], "RayService")
    derived = derive_autoscaling_config(rayservice)
    fake = fake_provider(copy.deepcopy(derived), "127.0.0.1:1234", autoscaler_version(rayservice))
    assert fake["provider"]["type"] == "fake_multinode" and fake["provider"]["gcs_address"] == "127.0.0.1:1234"
    assert fake["idle_timeout_minutes"] == derived["idle_timeout_minutes"]
    assert fake["upscaling_speed"] == derived["upscaling_speed"]
    for name in ("cpu", "gpu"):
        ours, rays = fake["available_node_types"][name], derived["available_node_types"][name]
        assert (ours["min_workers"], ours["max_workers"]) == (rays["min_workers"], rays["max_workers"])
        expected = {k: v for k, v in rays["resources"].items() if k != "memory"}
        assert {k: v for k, v in ours["resources"].items() if k != "object_store_memory"} == expected


def test_the_simulated_serve_config_keeps_the_gpus_and_lists_what_it_shortens(rendered) -> None:
    config = serve_config_of(rendered["dev"])
    simulated = simulated_serve_config(config, Path("/b"), 4321, upscale_delay_s=5, downscale_delay_s=10)
    assert simulated["http_options"]["host"] == "127.0.0.1" and simulated["http_options"]["port"] == 4321
    assert deployments_of(simulated) == deployments_of(config)
    gpus = {name: d["num_gpus"] for name, d in deployments_of(config).items()}
    assert gpus["Generator"] == 1 and gpus["Reranker"] == 0.5
    for app in simulated["applications"]:
        for d in app["deployments"]:
            assert d["autoscaling_config"]["upscale_delay_s"] == 5
    assert config["http_options"]["host"] == "0.0.0.0"  # the rendered config is left alone


def test_the_simulated_generator_answers_extractively_unless_asked_to_keep_the_language_model(rendered) -> None:
    config = serve_config_of(rendered["dev"])
    assert deployments_of_user_config(config)["Generator"]["use_language_model"] is True
    pinned = simulated_serve_config(config, Path("/b"), 4321, upscale_delay_s=5, downscale_delay_s=10)
    kept = simulated_serve_config(config, Path("/b"), 4321, upscale_delay_s=5, downscale_delay_s=10,
                                  language_model=True)
    assert deployments_of_user_config(pinned)["Generator"]["use_language_model"] is False
    assert deployments_of_user_config(kept)["Generator"] == deployments_of_user_config(config)["Generator"]
    # Only the Generator's switch changes; every other user_config is the overlay's.
    others = {k: v for k, v in deployments_of_user_config(pinned).items() if k != "Generator"}
    assert others == {k: v for k, v in deployments_of_user_config(config).items() if k != "Generator"}


def deployments_of_user_config(config: dict) -> dict[str, dict]:
    return {d["name"]: d.get("user_config", {}) for app in config["applications"] for d in app["deployments"]}


def test_only_a_node_marked_simulated_lets_a_gpu_replica_run_on_the_cpu() -> None:
    assert gpus_simulated({SIMULATED_GPUS_ENV: "1"}) and not gpus_simulated({}) and not gpus_simulated(
        {SIMULATED_GPUS_ENV: "0"})
    with pytest.raises(ValueError, match=SIMULATED_GPUS_ENV):
        gpus_simulated({SIMULATED_GPUS_ENV: "yes"})
