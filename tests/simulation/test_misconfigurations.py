"""The misconfiguration the simulation runs (tools/repoctl/simulation/misconfigurations.py), checked without
Ray: it changes one field of the overlay's own serveConfigV2, and the policies refuse that same change
before merge (the run itself is in test_dev_scenarios.py)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from repoctl.policy import run_conftest
from repoctl.render import find, serve_config_of
from repoctl.simulation.cluster import derive_autoscaling_config
from repoctl.simulation.misconfigurations import GENERATOR, REPLICA_SERIES, oversized_generator, series
from repoctl.simulation.scenarios import deployments_of, groups_of

ENVS = ("dev", "staging", "prod")


def mutated(docs: list[dict]) -> tuple[dict, dict]:
    groups = groups_of(derive_autoscaling_config(find(docs, "RayService")))
    return oversized_generator(serve_config_of(docs), groups)


@pytest.mark.parametrize("env", ENVS)
def test_the_generator_asks_for_one_gpu_more_than_any_worker_has_and_nothing_else_changes(rendered, env) -> None:
    config = serve_config_of(rendered[env])
    changed, change = mutated(rendered[env])
    assert change == {"deployment": GENERATOR, "field": "ray_actor_options.num_gpus",
                      "from": deployments_of(config)[GENERATOR]["num_gpus"], "to": 2, "gpus_per_worker": 1}
    assert deployments_of(changed)[GENERATOR]["num_gpus"] == 2
    restored = copy.deepcopy(changed)
    for app in restored["applications"]:
        for d in app["deployments"]:
            if d["name"] == GENERATOR:
                d["ray_actor_options"]["num_gpus"] = change["from"]
    assert restored == config
    assert deployments_of(serve_config_of(rendered[env]))[GENERATOR]["num_gpus"] == change["from"]  # left alone


def test_a_config_without_a_generator_is_refused_by_name(rendered) -> None:
    config = serve_config_of(rendered["dev"])
    for app in config["applications"]:
        app["deployments"] = [d for d in app["deployments"] if d["name"] != GENERATOR]
    with pytest.raises(ValueError, match="no Generator deployment"):
        oversized_generator(config, {"gpu": {"resources": {"GPU": 1}}})


@pytest.mark.parametrize("env", ENVS)
def test_the_same_change_is_refused_before_merge_by_gpu_fit(rendered, env, tmp_path: Path) -> None:
    docs = copy.deepcopy(rendered[env])
    changed, _ = mutated(docs)
    find(docs, "RayService")["spec"]["serveConfigV2"] = yaml.safe_dump(changed, sort_keys=False)
    path = tmp_path / f"{env}.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    ok, lines = run_conftest(path, env)
    failures = [line for line in lines if line.startswith("FAIL")]
    assert not ok
    assert any("[gpu-fit]" in line and f"deployments[{GENERATOR}].ray_actor_options.num_gpus=2 but no worker group "
               "has that many GPUs per pod" in line for line in failures), lines
    print(f"\n{env}: the misconfigured Generator, refused before merge:\n" + "\n".join(failures))


def test_the_replica_series_are_read_with_their_labels() -> None:
    text = ("# HELP ray_serve_autoscaling_target_replicas The target number of replicas.\n"
            'ray_serve_autoscaling_target_replicas{application="support-assistant",deployment="Generator",'
            'SessionName="s"} 1.0\n'
            'ray_serve_deployment_replica_healthy{application="support-assistant",deployment="Reranker",'
            'replica="r1"} 1.0\n'
            'ray_serve_deployment_replica_healthy_total{deployment="Generator"} 9.0\n')
    found = series(text)
    assert [(x["name"], x["labels"]["deployment"], x["value"]) for x in found] == [
        (REPLICA_SERIES[0], "Generator", 1.0), (REPLICA_SERIES[1], "Reranker", 1.0)]
    assert found[0]["labels"] == {"application": "support-assistant", "deployment": "Generator", "SessionName": "s"}
