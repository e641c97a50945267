"""The scenarios, in order, on one simulated cluster: deploy and placement at minimum, scale up
under a bounded load ramp, scale down, a GPU worker lost under load, the cluster scaling in
once the app is gone, and a misconfigured Generator that no worker can hold
(misconfigurations.py). Each records what it measured; report.py writes it down and draws it, and
the tests (tests/simulation) decide what passes.

What is changed from the overlay, and nothing else, is listed in the report's `shortened` and
`local` sections: the waits that would make a CI run last 20 minutes (idle timeout, Serve's
upscale/downscale delays), what one machine needs (loopback, ports, the local bundle), and, unless
`language_model` is set, the Generator answering extractively (EXTRACTIVE below says why).
"""

from __future__ import annotations

import copy
import http.client
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repoctl.local_run import deploy
from repoctl.render import find, ray_serve_env_of, render_overlay, serve_config_of
from repoctl.simulation.cluster import LOOPBACK, SimulatedCluster, SimulationError, derive_autoscaling_config
from repoctl.simulation.load import Load, summarize
from repoctl.simulation.misconfigurations import GENERATOR, REPLICA_SERIES, oversized_generator, series
from repoctl.simulation.observe import MetricsWatch, Sampler, Snapshot, autoscaler_events, scrape
from repoctl.simulation.processes import raylet_of
from repoctl.sockets import is_loopback, listeners

# Serve's worker-node proxies bind this port instead of http_options.port (Ray 2.60
# serve/_private/constants.py RAY_SERVE_WORKER_PROXY_HTTP_PORT): the nodes share one machine, and
# the load goes to the head's proxy, which no scenario kills (a Service in front of the pods'
# proxies would route around a dead one).
WORKER_PROXY_PORT_ENV = "RAY_SERVE_WORKER_PROXY_HTTP_PORT"
GPU_GROUP = "gpu"
# The title Ray gives a Serve replica's worker process (`ray::ServeReplica:<app>:<deployment>`).
REPLICA_TITLE = "ray::ServeReplica:"
# The Generator's user_config in a simulation unless Settings.language_model: the local bundle's
# SmolLM2 decodes for seconds per answer on this machine's cores, which every simulated node shares,
# so a load ramp would measure the decoder, not placement and scaling. The same pin as bench/run.py's
# data-plane sections (EXTRACTIVE) and tests/reliability/live.py. The placement is unchanged: the
# Generator still asks for the overlay's num_gpus and runs on a GPU worker.
EXTRACTIVE = {"use_language_model": False}
# How Ray's autoscaler words a resource request that no node type can hold (v1: autoscaler/_private/
# autoscaler.py, once per 30 s; v2: autoscaler/v2/event_logger.py), in its event's message.
UNFULFILLABLE = "No available node types can fulfill resource request"


@dataclass
class Settings:
    env: str
    bundle_dir: Path
    idle_timeout_s: float = 20.0
    upscale_delay_s: float = 5.0
    downscale_delay_s: float = 10.0
    ramp_clients: tuple[int, ...] = (4, 16, 48)
    ramp_step_s: float = 15.0
    node_loss_clients: int = 8
    # Keep the overlay's language model in the Generator (EXTRACTIVE says why it is off by default).
    language_model: bool = False
    deploy_timeout_s: float = 300.0
    settle_timeout_s: float = 120.0
    node_loss: bool = True
    misconfigurations: bool = True


@dataclass
class Run:
    """Everything one simulation measured (report.py turns it into report.json and timeline.png)."""

    settings: Settings
    overlay: dict[str, Any] = field(default_factory=dict)
    shortened: dict[str, Any] = field(default_factory=dict)
    local: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    scenarios: dict[str, Any] = field(default_factory=dict)
    timeline: list[Snapshot] = field(default_factory=list)
    load: Load | None = None
    error: str | None = None
    seconds: float = 0.0
    leftover_pids: list[int] = field(default_factory=list)


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def simulated_serve_config(config: dict, bundle_dir: Path, port: int, upscale_delay_s: float,
                           downscale_delay_s: float, language_model: bool = False) -> dict:
    """The overlay's serveConfigV2 with its num_gpus kept: the proxy on 127.0.0.1:`port`, the
    local bundle, Serve's autoscaling delays shortened and, unless `language_model`, the Generator
    extractive (EXTRACTIVE); the report lists each change."""
    simulated = copy.deepcopy(config)
    simulated["http_options"] = {**simulated.get("http_options", {}), "host": LOOPBACK, "port": port}
    for app in simulated["applications"]:
        app["args"] = {**app.get("args", {}), "bundle_dir": str(Path(bundle_dir).resolve())}
        for deployment in app.get("deployments", []):
            autoscaling = deployment.get("autoscaling_config")
            if autoscaling is not None:
                autoscaling["upscale_delay_s"] = upscale_delay_s
                autoscaling["downscale_delay_s"] = downscale_delay_s
            if deployment["name"] == "Generator" and not language_model:
                deployment["user_config"] = {**deployment.get("user_config", {}), **EXTRACTIVE}
    return simulated


def deployments_of(config: dict) -> dict[str, dict[str, Any]]:
    """deployment -> {min, max, num_gpus} from the overlay's serveConfigV2."""
    out = {}
    for app in config["applications"]:
        for d in app.get("deployments", []):
            autoscaling = d.get("autoscaling_config") or {}
            fixed = d.get("num_replicas", 1)
            out[d["name"]] = {"min": autoscaling.get("min_replicas", fixed),
                              "max": autoscaling.get("max_replicas", fixed),
                              "num_gpus": d.get("ray_actor_options", {}).get("num_gpus", 0)}
    return out


def groups_of(autoscaling_config: dict) -> dict[str, dict[str, Any]]:
    """worker group -> {min, max, resources} as Ray's KubeRay translation derived them."""
    head = autoscaling_config["head_node_type"]
    return {name: {"min": t["min_workers"], "max": t["max_workers"], "resources": t["resources"]}
            for name, t in autoscaling_config["available_node_types"].items() if name != head}


def _wait(what: str, until: Callable[[], Any], timeout_s: float, period_s: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = until()
        if found:
            return found
        time.sleep(period_s)
    raise SimulationError(f"{what}: not reached within {timeout_s:g}s")


def _running(snap: Snapshot, deployment: str) -> int:
    return snap.replicas_by_deployment().get(deployment, {}).get("running", 0)


def _at_min(snap: Snapshot, deployments: dict[str, dict[str, Any]]) -> bool:
    by = snap.replicas_by_deployment()
    return all(by.get(d, {}).get("running", 0) == spec["min"] and by.get(d, {}).get("pending", 0) == 0
               for d, spec in deployments.items())


def placement(snap: Snapshot, deployments: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Where each replica runs, and the GPUs each node's replicas were given (`placement`, one entry
    per node that runs a replica; the scenarios' `nodes` is nodes per group)."""
    nodes: dict[str, dict[str, Any]] = {}
    for replica in snap.replicas:
        if replica.state != "ALIVE":
            continue
        node = nodes.setdefault(replica.node_id or "?", {"group": snap.group_of(replica.node_id) or "unknown",
                                                          "replicas": [], "gpus_given": 0.0})
        node["replicas"].append(replica.deployment)
        node["gpus_given"] += deployments.get(replica.deployment, {}).get("num_gpus", 0)
    gpus = {n.node_id: n.resources.get("GPU", 0.0) for n in snap.nodes if n.alive}
    ordered = sorted(nodes.items(), key=lambda kv: (kv[1]["group"], kv[0]))
    return {"placement": [{**v, "replicas": sorted(v["replicas"]), "gpus_on_node": gpus.get(k, 0.0), "node_id": k[-8:]}
                          for k, v in ordered],
            "replicas": snap.replicas_by_deployment()}


def simulate(settings: Settings, on_event: Callable[[str], None] = print) -> Run:
    """Runs every scenario on one simulated cluster of `settings.env`; the cluster is stopped at
    the end whatever happens (and by the reaper if this process dies first)."""
    run = Run(settings)
    docs = render_overlay(settings.env)
    rayservice = find(docs, "RayService")
    config = serve_config_of(docs)
    derived = derive_autoscaling_config(rayservice)
    deployments = deployments_of(config)
    run.overlay = {"env": settings.env, "groups": groups_of(derived), "deployments": deployments,
                   "head_resources": derived["available_node_types"][derived["head_node_type"]]["resources"]}
    run.shortened = {
        "idle_timeout_s": {"overlay": derived["idle_timeout_minutes"] * 60, "simulation": settings.idle_timeout_s},
        "upscale_delay_s": {"overlay": "Serve default 30", "simulation": settings.upscale_delay_s},
        "downscale_delay_s": {"overlay": "Serve default 600", "simulation": settings.downscale_delay_s},
    }
    http_port, worker_proxy_port = _free_port(), _free_port()
    simulated = simulated_serve_config(config, settings.bundle_dir, http_port, settings.upscale_delay_s,
                                       settings.downscale_delay_s, settings.language_model)
    run.local = {"http": f"{LOOPBACK}:{http_port}", "worker_proxies_port": worker_proxy_port,
                 "bundle_dir": str(settings.bundle_dir),
                 "generator": "the overlay's language model" if settings.language_model
                 else f"extractive (Generator.user_config {EXTRACTIVE})"}
    extra_env = {**ray_serve_env_of(docs), WORKER_PROXY_PORT_ENV: str(worker_proxy_port)}
    cluster = SimulatedCluster(rayservice, settings.idle_timeout_s, extra_env)
    started = time.monotonic()
    sampler: Sampler | None = None
    metrics: MetricsWatch | None = None

    def event(what: str, **details: Any) -> float:
        t = round(time.monotonic() - started, 2)
        run.events.append({"t": t, "event": what, **details})
        on_event(f"[{t:7.1f}s] {what}" + (f" {details}" if details else ""))
        return t

    try:
        cluster.start()
        run.local["gcs"] = cluster.gcs_address
        # Every process of the simulation names this dir on its command line: a test checks none is left.
        run.local["temp_dir"] = str(cluster.temp_dir)
        run.local["autoscaler"] = cluster.version
        event("cluster started", gcs=cluster.gcs_address, autoscaler=cluster.version)
        cluster.connect()
        # ray.init replaced the SIGTERM handler with one that aborts: put back the one that lets the
        # `finally` below stop the cluster.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _interrupt)
        sampler = Sampler(cluster.gcs_address, started)
        metrics = MetricsWatch(cluster.metrics_ports["head"])
        _placement(run, simulated, deployments, sampler, event)
        _listening(run, cluster, "at min_replicas")
        _scale_up_and_down(run, http_port, deployments, sampler, started, event)
        if settings.node_loss:
            _node_loss(run, cluster, deployments, sampler, started, event)
            _listening(run, cluster, "after node loss")
        _scale_in(run, sampler, event)
        if settings.misconfigurations:
            _oversized_generator(run, simulated, cluster, http_port, deployments, sampler, event)
    except (SimulationError, RuntimeError, TimeoutError) as exc:
        run.error = f"{type(exc).__name__}: {exc}"
        event("failed", error=run.error)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (_interrupt): stop the cluster and report what was measured
        run.error = "interrupted (SIGINT or SIGTERM) before the scenarios finished"
        event("interrupted")
    finally:
        if run.load is not None:
            run.load.stop()
        if sampler is not None:
            sampler.stop()
            run.timeline = sampler.snapshots
        if metrics is not None:
            run.local["head_metrics"] = metrics.stop()
        run.leftover_pids = cluster.stop(keep_logs=run.error is not None)
        if run.error:
            run.local["logs"] = str(cluster.temp_dir)
        run.seconds = round(time.monotonic() - started, 1)
        event("cluster stopped", leftover_pids=run.leftover_pids)
    return run


def _listening(run: Run, cluster: SimulatedCluster, when: str) -> None:
    """Every TCP socket the simulation's processes listen on, recorded while every node of the moment
    runs: `not_loopback` should be empty. Serve 2.60 binds each replica's inter-deployment gRPC server
    to [::]:0 in code (ray/serve/_private/replica.py; no option changes it), so those are listed apart,
    as tests/reliability/test_exposure.py allows them on `make run`'s Ray (token auth refuses callers)."""
    found = sorted({(_title(pid), address, port) for pid, address, port in listeners(cluster.pids())})
    exposed = [(title, f"{a}:{p}") for title, a, p in found if not is_loopback(a)]
    run.local.setdefault("listening", {})[when] = {
        "sockets": len(found),
        "replica_grpc_any_address": sorted(title for title, _ in exposed if title.startswith(REPLICA_TITLE)),
        "not_loopback": [f"{title} {address}" for title, address in exposed if not title.startswith(REPLICA_TITLE)]}


def _title(pid: int) -> str:
    """A process's title (Ray sets `ray::<actor class>` on its workers), '' once it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


def _placement(run: Run, simulated: dict, deployments: dict, sampler: Sampler, event: Callable[..., float]) -> None:
    t_demand = event("deploy")
    deploy(simulated, timeout_s=run.settings.deploy_timeout_s)
    t_running = event("app RUNNING")
    snap = _wait("every deployment at min_replicas", lambda: (s := sampler.latest()) and _at_min(s, deployments) and s,
                 run.settings.settle_timeout_s)
    first_gpu = next((s.t for s in sampler.snapshots if s.t >= t_demand and s.groups().get(GPU_GROUP, 0) > 0), None)
    run.scenarios["placement"] = {
        "deploy_s": round(t_running - t_demand, 1),
        "first_gpu_worker_after_demand_s": None if first_gpu is None else round(first_gpu - t_demand, 1),
        "nodes": snap.groups(), **placement(snap, deployments)}


def _scale_up_and_down(run: Run, port: int, deployments: dict, sampler: Sampler, started: float,
                       event: Callable[..., float]) -> None:
    settings = run.settings
    run.load = load = Load(port, started, max((*settings.ramp_clients, settings.node_loss_clients)), deadline_s=900)
    t0 = event("load ramp", clients=list(settings.ramp_clients), step_s=settings.ramp_step_s)
    steps = []
    for clients in settings.ramp_clients:
        load.set_clients(clients)
        begin = load.now()
        time.sleep(settings.ramp_step_s)
        steps.append({"clients": clients, **summarize(load.between(begin, load.now()), load.now() - begin)})
    load.set_clients(0)
    t1 = event("load stopped")
    time.sleep(1)
    window = [s for s in sampler.snapshots if t0 <= s.t <= t1 + 1]
    peak = {d: max((_running(s, d) for s in window), default=0) for d in deployments}
    run.scenarios["scale_up"] = {"steps": steps, "all": summarize(load.between(t0, t1), t1 - t0),
                                 "peak_replicas": peak, "peak_nodes": _peak_nodes(window)}
    snap = _wait("replicas back at min_replicas", lambda: (s := sampler.latest()) and _at_min(s, deployments) and s,
                 settings.downscale_delay_s + settings.settle_timeout_s)
    t_min = event("replicas at min_replicas")
    run.scenarios["scale_down"] = {"replicas_at_min_after_load_s": round(t_min - t1, 1), "nodes": snap.groups(),
                                   "replicas": snap.replicas_by_deployment()}


def _peak_nodes(snapshots: list[Snapshot]) -> dict[str, int]:
    peak: dict[str, int] = {}
    for s in snapshots:
        for group, n in s.groups().items():
            peak[group] = max(peak.get(group, 0), n)
    return peak


def _node_loss(run: Run, cluster: SimulatedCluster, deployments: dict, sampler: Sampler, started: float,
               event: Callable[..., float]) -> None:
    """SIGKILL the raylet of the GPU worker that runs the Generator, under load."""
    assert run.load is not None
    load = run.load
    snap = sampler.latest()
    victim = next((r.node_id for r in snap.replicas if r.deployment == "Generator" and r.state == "ALIVE"
                   and snap.group_of(r.node_id) == GPU_GROUP), None)
    if victim is None:
        raise SimulationError("node loss: no running Generator replica on a GPU worker")
    lost = sorted(r.deployment for r in snap.replicas if r.node_id == victim and r.state == "ALIVE")
    pid = raylet_of(victim, cluster.session or 0, str(cluster.temp_dir))
    if pid is None:
        raise SimulationError(f"node loss: no raylet found for node {victim}")
    load.set_clients(run.settings.node_loss_clients)
    time.sleep(5)
    t_kill = event("raylet killed", node=victim[-8:], pid=pid, replicas=lost)
    os.kill(pid, signal.SIGKILL)

    def recovered() -> Snapshot | None:
        s = sampler.latest()
        gone = victim not in {n.node_id for n in s.nodes if n.alive}
        return s if s.t > t_kill and gone and _at_min(s, deployments) else None

    snap = _wait("replicas rescheduled after the node loss", recovered, run.settings.settle_timeout_s)
    t_back = event("replicas back after node loss")
    time.sleep(5)  # answers after the recovery, to see that every request succeeds again
    load.set_clients(0)
    t_end = load.now()
    outcomes = load.between(t_kill - 5, t_end)
    failures = [o for o in outcomes if o.status != 200 and o.sent >= t_kill - 5]
    last_failure = max((o.sent + o.seconds for o in failures), default=t_kill)
    new_nodes = _new_gpu_node_time(sampler.snapshots, t_kill, victim)
    run.scenarios["node_loss"] = {
        "node": victim[-8:], "replicas_lost": lost, "load_clients": run.settings.node_loss_clients,
        "replacement_gpu_worker_after_s": None if new_nodes is None else round(new_nodes - t_kill, 1),
        "replicas_back_after_s": round(t_back - t_kill, 1),
        "last_failed_request_after_s": round(last_failure - t_kill, 1),
        "recovery_s": round(max(t_back, last_failure) - t_kill, 1),
        "requests": summarize(outcomes, t_end - (t_kill - 5)),
        "nodes": snap.groups(), **placement(snap, deployments)}


def _new_gpu_node_time(snapshots: list[Snapshot], t_kill: float, victim: str) -> float | None:
    before = {n.node_id for s in snapshots if s.t <= t_kill for n in s.nodes}
    for s in snapshots:
        if s.t > t_kill and any(n.alive and n.group == GPU_GROUP and n.node_id not in before and n.node_id != victim
                                for n in s.nodes):
            return s.t
    return None


def _scale_in(run: Run, sampler: Sampler, event: Callable[..., float]) -> None:
    """Delete the app: its GPU workers go idle and the autoscaler removes them after the (shortened)
    idle timeout, down to the groups' minimums."""
    from ray import serve

    groups = run.overlay["groups"]
    t_delete = event("app deleted")
    serve.delete("support-assistant")
    _wait("idle workers removed", lambda: all(sampler.latest().groups().get(g, 0) <= spec["min"]
                                              for g, spec in groups.items()),
          run.settings.idle_timeout_s + run.settings.settle_timeout_s)
    t_in = event("idle workers removed")
    run.scenarios["scale_in"] = {"idle_workers_removed_after_s": round(t_in - t_delete, 1),
                                 "idle_timeout_s": run.settings.idle_timeout_s, "nodes": sampler.latest().groups()}


def _oversized_generator(run: Run, simulated: dict, cluster: SimulatedCluster, port: int, deployments: dict,
                         sampler: Sampler, event: Callable[..., float]) -> None:
    """Deploy the app again with a Generator that asks for more GPUs than any worker has: every other
    stage reaches its minimum, the Generator's replica stays pending, and the autoscaler says that no
    node type can hold it. Records what /readyz, Serve's status and the head's metrics say then."""
    from ray import serve

    mutated, change = oversized_generator(simulated, run.overlay["groups"])
    t0, wall_t0 = event("misconfigured deploy", **change), time.time()
    deploy(mutated, wait=False)

    def refusals() -> list[dict[str, Any]]:
        # Autoscaler v1 names a demand no node type can hold in an event (v2 also lists it as infeasible).
        return [e for e in autoscaler_events(cluster.temp_dir, UNFULFILLABLE) if f"'GPU': {float(change['to'])}"
                in e["message"] and e["t"] >= wall_t0 - 1]

    def stuck() -> Snapshot | None:
        s = sampler.latest()
        by = s.replicas_by_deployment()
        others = all(by.get(d, {}).get("running", 0) >= spec["min"]
                     for d, spec in deployments.items() if d != GENERATOR)
        generator = by.get(GENERATOR, {})
        said = refusals() or any(d["resources"].get("GPU", 0) >= change["to"] for d in s.infeasible_demands)
        return s if others and said and generator.get("running", 0) == 0 and generator.get("pending", 0) else None

    snap = _wait("every stage but the Generator running, the autoscaler saying no node type fits it", stuck,
                 run.settings.deploy_timeout_s)
    t_stuck = event("Generator unplaceable")
    # The series come from the Serve controller through the head's metrics agent, every few seconds.
    head_port = cluster.metrics_ports["head"]

    def exported() -> list[dict[str, Any]]:
        found = [x for x in series(_scrape_or_empty(head_port)) if x["labels"].get("deployment") == GENERATOR]
        return found if {x["name"] for x in found} >= {REPLICA_SERIES[0]} else []

    generator_series = _wait("Serve's replica series for the Generator on the head's metrics", exported, 60, 2)
    status = serve.status().applications.get("support-assistant")
    generator_status = status.deployments.get(GENERATOR) if status else None
    readyz = _http_get(port, "/readyz")
    run.scenarios["oversized_generator"] = {
        "change": change, "stuck_after_s": round(t_stuck - t0, 1),
        "replicas": snap.replicas_by_deployment(), "nodes": snap.groups(),
        "pending_demands": snap.pending_demands, "infeasible_demands": snap.infeasible_demands,
        "pending_launches": snap.pending_launches, "autoscaler_events": refusals()[:3],
        "app_status": status.status if status else None,
        "generator_status": {"status": generator_status.status, "message": generator_status.message,
                             "replica_states": dict(generator_status.replica_states)} if generator_status else None,
        "readyz": readyz, "series": generator_series}
    serve.delete("support-assistant")
    event("misconfigured app deleted")


def _scrape_or_empty(port: int) -> str:
    try:
        return scrape(port)
    except OSError:
        return ""


def _http_get(port: int, path: str) -> dict[str, Any]:
    """{status, body} of GET 127.0.0.1:port/path (body parsed as JSON where it is)."""
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        raw = response.read().decode(errors="replace")
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw[:2000]
        return {"status": response.status, "retry_after": response.getheader("Retry-After"), "body": body}
    except OSError as exc:
        return {"status": None, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        connection.close()
