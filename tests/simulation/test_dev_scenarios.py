"""The dev overlay in motion: its worker groups as a multi-node Ray cluster with Ray's own autoscaler
(one run for the module, tests/simulation/conftest.py), the overlay's serveConfigV2 deployed on it
with its num_gpus kept. Each test reads one scenario of that run's report.

Times are printed (and in the report), not asserted: they are figures of a shared 2-core machine
(docs/scaling.md). The only time-like checks are the run's own waits, which fail a scenario that
never gets where it should.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from promtest import NAMESPACE, alert_fires_on, selector
from repoctl.promql import metric_names, rule_groups
from repoctl.simulation.observe import CLUSTER_SERIES
from repoctl.simulation.processes import living
from repoctl.simulation.scenarios import UNFULFILLABLE

# Above the fixture's own limit on the run (conftest.RUN_LIMIT_S) and the child's teardown.
pytestmark = [pytest.mark.simulation, pytest.mark.timeout(900)]

GPU_STAGES = ("Reranker", "Generator")
# The stages the ingress names in its JSON errors (serving/ingress.py).
STAGES = {"ingress", "normalizer", "retriever", "reranker", "generator"}


def test_the_run_completes_and_leaves_no_process(dev_simulation) -> None:
    report = dev_simulation.report
    assert report["error"] is None, dev_simulation.log[-4000:]
    assert dev_simulation.returncode == 0, dev_simulation.log[-4000:]
    assert report["leftover_pids"] == []
    # Nothing that names the simulation's temp dir (every raylet, worker, GCS, autoscaler of it) lives on.
    marker = report["local"]["temp_dir"].encode()
    survivors = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline_has(p, marker)]
    assert living(survivors) == []
    assert report["local"]["http"].startswith("127.0.0.1:") and report["local"]["gcs"].startswith("127.0.0.1:")


def test_every_process_of_the_cluster_listens_on_loopback_only(dev_simulation) -> None:
    listening = dev_simulation.report["local"]["listening"]
    assert set(listening) == {"at min_replicas", "after node loss"}
    deployments = dev_simulation.report["overlay"]["deployments"]
    for when, sockets in listening.items():
        assert sockets["sockets"] > 0 and sockets["not_loopback"] == [], (when, sockets)
        # The one exception (Serve binds each replica's gRPC server to [::] in code): one per replica, no more.
        assert len(sockets["replica_grpc_any_address"]) <= sum(d["max"] for d in deployments.values()), sockets


def test_every_deployment_reaches_its_min_replicas_with_the_gpu_stages_on_gpu_workers(dev_simulation) -> None:
    placed = dev_simulation.scenario("placement")
    deployments = dev_simulation.report["overlay"]["deployments"]
    assert {d: placed["replicas"][d]["running"] for d in deployments} == {d: s["min"] for d, s in deployments.items()}
    for stage in GPU_STAGES:
        assert deployments[stage]["num_gpus"] > 0  # the simulation kept the overlay's GPUs
        assert set(placed["replicas"][stage]["on"]) == {"gpu"}, placed["placement"]
    print(f"\nplacement: deployed in {placed['deploy_s']} s, first GPU worker "
          f"{placed['first_gpu_worker_after_demand_s']} s after the demand; nodes {placed['nodes']}")


def test_nothing_runs_on_the_head_and_gpu_shares_fit_each_worker(dev_simulation) -> None:
    placed = dev_simulation.scenario("placement")
    assert dev_simulation.report["overlay"]["head_resources"]["CPU"] == 0  # the overlay keeps replicas off the head
    assert all(node["group"] != "head" for node in placed["placement"]), placed["placement"]
    for node in placed["placement"]:
        assert node["gpus_given"] <= node["gpus_on_node"], node
    generator_nodes = [n for n in placed["placement"] if "Generator" in n["replicas"]]
    # A Generator takes a whole GPU: no Reranker shares its worker.
    assert generator_nodes and all("Reranker" not in n["replicas"] for n in generator_nodes), placed["placement"]


def test_no_group_ever_has_more_workers_than_its_max_replicas(dev_simulation) -> None:
    groups = dev_simulation.report["overlay"]["groups"]
    timeline = dev_simulation.report["timeline"]
    assert timeline
    peak = {g: max(s["nodes"].get(g, 0) for s in timeline) for g in groups}
    assert all(peak[g] <= spec["max"] for g, spec in groups.items()), (peak, groups)
    assert peak["gpu"] >= 1  # the GPU workers (min 0 in dev) came for the GPU stages' demand


def test_a_gpu_worker_lost_under_load_gets_only_retryable_503s_and_its_replicas_back(dev_simulation) -> None:
    lost = dev_simulation.scenario("node_loss")
    requests = lost["requests"]
    assert requests["requests"] > 0 and requests["answered"] > 0
    assert requests["not_retryable"] == 0, requests["not_retryable_examples"]
    assert set(requests["statuses"]) <= {"200", "503"}, requests["statuses"]
    assert set(requests["retryable_503_by_stage"]) <= STAGES, requests["retryable_503_by_stage"]
    assert "Generator" in lost["replicas_lost"]
    deployments = dev_simulation.report["overlay"]["deployments"]
    assert {d: lost["replicas"][d]["running"] for d in deployments} == {d: s["min"] for d, s in deployments.items()}
    for stage in GPU_STAGES:
        assert set(lost["replicas"][stage]["on"]) == {"gpu"}, lost["placement"]
    assert lost["node"] not in {n["node_id"] for n in lost["placement"]}
    # Answers again after the recovery: the load kept running for a while once the replicas were back.
    back = next(e["t"] for e in dev_simulation.report["events"] if e["event"] == "replicas back after node loss")
    assert any(s["t"] >= back and s["answers_per_s"] > 0 for s in dev_simulation.report["load"])
    print(f"\nnode loss: replicas {lost['replicas_lost']} back after {lost['replicas_back_after_s']} s, "
          f"replacement GPU worker after {lost['replacement_gpu_worker_after_s']} s, recovery {lost['recovery_s']} s; "
          f"statuses {requests['statuses']}, 503 by stage {requests['retryable_503_by_stage']}")


def test_after_the_load_replicas_and_workers_fall_back_to_their_minimums(dev_simulation) -> None:
    down = dev_simulation.scenario("scale_down")
    deployments = dev_simulation.report["overlay"]["deployments"]
    assert {d: down["replicas"][d]["running"] for d in deployments} == {d: s["min"] for d, s in deployments.items()}
    scale_in = dev_simulation.scenario("scale_in")
    groups = dev_simulation.report["overlay"]["groups"]
    # With the app gone the GPU workers are idle: the autoscaler removes them down to the group's minimum.
    assert all(scale_in["nodes"].get(g, 0) <= spec["min"] for g, spec in groups.items()), scale_in["nodes"]
    assert scale_in["nodes"].get("gpu", 0) == groups["gpu"]["min"]
    shortened = dev_simulation.report["shortened"]["idle_timeout_s"]
    assert shortened["simulation"] < shortened["overlay"]  # the report says the idle timeout was shortened
    print(f"\nscale down: replicas at min {down['replicas_at_min_after_load_s']} s after the load; idle workers "
          f"removed {scale_in['idle_workers_removed_after_s']} s after the app was deleted "
          f"(idle timeout {shortened['simulation']} s, overlay {shortened['overlay']} s)")


def test_a_generator_no_worker_can_hold_stays_pending_and_readyz_the_autoscaler_and_its_alert_say_so(
        dev_simulation, rendered, tmp_path: Path) -> None:
    stuck = dev_simulation.scenario("oversized_generator")
    change, groups = stuck["change"], dev_simulation.report["overlay"]["groups"]
    assert change["to"] > change["gpus_per_worker"] == groups["gpu"]["resources"]["GPU"]
    generator = stuck["replicas"]["Generator"]
    assert generator["running"] == 0 and generator["pending"] >= 1, stuck["replicas"]
    deployments = dev_simulation.report["overlay"]["deployments"]
    assert all(stuck["replicas"][d]["running"] >= spec["min"] for d, spec in deployments.items() if d != "Generator")
    # The autoscaler names the demand no node type can meet, and launches nothing for it.
    assert any(f"'GPU': {float(change['to'])}" in e["message"] and UNFULFILLABLE in e["message"]
               for e in stuck["autoscaler_events"]) or any(
        d["resources"].get("GPU") == change["to"] for d in stuck["infeasible_demands"]), stuck
    demands = stuck["pending_demands"] + stuck["infeasible_demands"]
    assert any(d["resources"].get("GPU") == change["to"] for d in demands), demands
    assert "gpu" not in stuck["pending_launches"], stuck["pending_launches"]
    assert all(n <= groups[g]["max"] for g, n in stuck["nodes"].items() if g != "head"), stuck["nodes"]
    readyz = stuck["readyz"]
    assert readyz["status"] == 503 and readyz["retry_after"], readyz
    assert readyz["body"]["status"] == "not_ready" and readyz["body"]["stages"]["generator"]["running_replicas"] == 0
    assert stuck["app_status"] == "DEPLOYING" and stuck["generator_status"]["replica_states"].get("RUNNING", 0) == 0

    # The series Serve's controller exported for the Generator, as scraped from the head, into promtool.
    exported = stuck["series"]
    target = [x for x in exported if x["name"] == "ray_serve_autoscaling_target_replicas"]
    assert target and target[0]["value"] == deployments["Generator"]["min"], exported
    assert all(x["value"] == 0 for x in exported if x["name"] == "ray_serve_deployment_replica_healthy"), exported
    scraped = {"namespace": NAMESPACE, "ray_io_cluster": "support-assistant-simulated"}
    # Held for an hour as scraped: dev's rule waits 30 minutes (`for`, overlays/dev) before it fires.
    input_series = [{"series": selector(x["name"], {**x["labels"], **scraped}), "values": f"{x['value']:g}x60"}
                    for x in exported]
    result = alert_fires_on(rendered["dev"], input_series, "ServeReplicasBelowTarget", "45m", [{
        "exp_labels": {"namespace": NAMESPACE, "ray_io_cluster": "support-assistant-simulated",
                       "application": "support-assistant", "deployment": "Generator", "layer": "serve",
                       "severity": "warning"},
        "exp_annotations": {
            "summary": "Serve deployment support-assistant/Generator has fewer healthy replicas than its target of 1.",
            "description": "Deployment Generator of application support-assistant (RayService support-assistant, "
                           "namespace support-assistant, RayCluster support-assistant-simulated) has stayed below "
                           "its target of 1 healthy replicas; replicas are unhealthy, starting or unplaceable.",
            "runbook_url": "https://github.com/acme-platform/support-assistant-gitops/blob/main/docs/runbooks/"
                           "ServeReplicasBelowTarget.md",
        },
    }], tmp_path)
    assert result.returncode == 0, f"{input_series}\n{result.stdout}{result.stderr}"
    print(f"\nmisconfigured Generator ({change['field']} {change['from']} -> {change['to']} on "
          f"{change['gpus_per_worker']}-GPU workers): stuck after {stuck['stuck_after_s']} s; "
          f"autoscaler: {[e['message'] for e in stuck['autoscaler_events'][:1]] or stuck['infeasible_demands']}; "
          f"/readyz {readyz['status']}; ServeReplicasBelowTarget fires on {[x['name'] for x in exported]}")


def test_the_pending_nodes_series_the_alerts_read_comes_from_this_run(dev_simulation, rendered) -> None:
    """ray_cluster_pending_nodes (RayClusterPendingNodes) exists only where an autoscaler runs: `make run`
    cannot export it (tests/e2e), this cluster does, by node type as the alert groups it.
    ray_cluster_failed_nodes is read by RayClusterFailedNodes but not asserted: Ray 2.60's autoscaler
    lists a node as failed only when it vanishes without the autoscaler terminating it, and here the
    autoscaler's liveness check terminates the node whose raylet was killed (docs/scaling.md)."""
    watched = dev_simulation.report["local"]["head_metrics"]
    read = {name for group in rule_groups(rendered["dev"]) for rule in group["rules"]
            for name in metric_names(rule["expr"]) if name in CLUSTER_SERIES}
    assert read == {"ray_cluster_pending_nodes", "ray_cluster_failed_nodes"}
    assert watched["scrapes"] > 10 and "ray_cluster_pending_nodes" in watched["names"], sorted(watched["names"])
    peaks = watched["cluster_series_peaks"]
    # GPU workers were launched for the GPU stages' demand, pending until they joined.
    assert peaks["ray_cluster_pending_nodes"].get("gpu", 0) >= 1, peaks
    assert peaks["ray_cluster_active_nodes"].get("gpu", 0) <= dev_simulation.report["overlay"]["groups"]["gpu"]["max"]
    print(f"\nhead metrics: {watched['scrapes']} scrapes, {len(watched['names'])} names; peaks {peaks}")


def _cmdline_has(proc: Path, marker: bytes) -> bool:
    try:
        return marker in (proc / "cmdline").read_bytes()
    except OSError:
        return False
