"""What the simulated cluster looks like right now, read from Ray itself: nodes per worker group
(the label Ray gives a node from its node type), Serve replicas and the node each runs on (the GCS
actor table), the resource demands nobody can place yet, and every node's Prometheus metrics."""

from __future__ import annotations

import contextlib
import json
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID, FAKE_HEAD_NODE_TYPE

# A node's worker group: this label where Ray sets it, else the node type the autoscaler reports
# for the node (cluster_status), the name Ray's KubeRay translation gave the group.
NODE_GROUP_LABEL = "ray.io/node-group"
REPLICA_CLASS_PREFIX = "ServeReplica:"
HEAD = "head"


@dataclass
class Node:
    node_id: str
    group: str
    alive: bool
    resources: dict[str, float]
    metrics_port: int | None


@dataclass
class Replica:
    deployment: str
    actor_id: str
    state: str  # ALIVE, PENDING_CREATION, DEPENDENCIES_UNREADY, RESTARTING, DEAD
    node_id: str | None


@dataclass
class Snapshot:
    t: float
    nodes: list[Node] = field(default_factory=list)
    replicas: list[Replica] = field(default_factory=list)
    pending_demands: list[dict[str, Any]] = field(default_factory=list)
    infeasible_demands: list[dict[str, Any]] = field(default_factory=list)
    pending_launches: dict[str, int] = field(default_factory=dict)

    def groups(self) -> dict[str, int]:
        return dict(Counter(n.group for n in self.nodes if n.alive))

    def group_of(self, node_id: str | None) -> str | None:
        return next((n.group for n in self.nodes if n.node_id == node_id), None)

    def replicas_by_deployment(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for r in self.replicas:
            entry = out.setdefault(r.deployment, {"running": 0, "pending": 0, "on": defaultdict(int)})
            if r.state == "ALIVE":
                entry["running"] += 1
                entry["on"][self.group_of(r.node_id) or "unknown"] += 1
            elif r.state != "DEAD":
                entry["pending"] += 1
        return {d: {**e, "on": dict(e["on"])} for d, e in sorted(out.items())}

    def as_dict(self) -> dict[str, Any]:
        return {"t": round(self.t, 2), "nodes": self.groups(), "replicas": self.replicas_by_deployment(),
                "pending_demands": self.pending_demands, "infeasible_demands": self.infeasible_demands,
                "pending_launches": self.pending_launches}


def _group(node: dict) -> str:
    label = (node.get("Labels") or {}).get(NODE_GROUP_LABEL)
    if label:
        return label
    return HEAD if node["NodeID"] == FAKE_HEAD_NODE_ID else "unknown"


def nodes() -> list[Node]:
    import ray

    return [Node(n["NodeID"], _group(n), bool(n["Alive"]), dict(n.get("Resources") or {}), n.get("MetricsExportPort"))
            for n in ray.nodes()]


def replicas() -> list[Replica]:
    """Serve replica actors with their state and node (the GCS actor table; no dashboard needed)."""
    from ray._private.state import state

    found = []
    for actor_id, info in state.actor_table(None).items():
        cls = info.get("ActorClassName", "") or ""
        if not cls.startswith(REPLICA_CLASS_PREFIX):
            continue
        # ServeReplica:<app>:<deployment>
        deployment = cls.split(":")[-1]
        node_id = (info.get("Address") or {}).get("NodeID") or None
        found.append(Replica(deployment, actor_id, info.get("State", ""), node_id))
    return found


def _demands(entries: Any) -> list[dict[str, Any]]:
    out = []
    for demand in entries or []:
        for bundle in getattr(demand, "bundles_by_count", []) or []:
            out.append({"resources": dict(bundle.bundle), "count": bundle.count})
    return out


def cluster_status(gcs_address: str) -> tuple[list[dict], list[dict], dict[str, int], dict[str, str]]:
    """(pending demands, infeasible demands, pending launches per group, node id -> node type) as
    the GCS and the autoscaler report them (the same call `ray status` makes)."""
    from ray.autoscaler.v2.sdk import get_cluster_status

    status = get_cluster_status(gcs_address)
    demands = status.resource_demands
    pending = _demands(demands.ray_task_actor_demand) + _demands(demands.placement_group_demand)
    launches: dict[str, int] = defaultdict(int)
    for launch in status.pending_launches:
        launches[launch.ray_node_type_name] += launch.count
    infeasible = [{"resources": d["resources"], "count": d["count"]}
                  for d in _demands(getattr(demands, "infeasible_task_actor_demand", None))]
    types = {n.node_id: n.ray_node_type_name for n in [*status.active_nodes, *status.idle_nodes]
             if n.node_id and n.ray_node_type_name}
    return pending, infeasible, dict(launches), types


def snapshot(t: float, gcs_address: str) -> Snapshot:
    snap = Snapshot(t, nodes(), replicas())
    with contextlib.suppress(Exception):
        snap.pending_demands, snap.infeasible_demands, snap.pending_launches, types = cluster_status(gcs_address)
        _node_types.update(types)
    for node in snap.nodes:  # a dead node keeps the group it had while the autoscaler listed it
        if node.group == "unknown" and node.node_id in _node_types:
            node.group = HEAD if _node_types[node.node_id] == FAKE_HEAD_NODE_TYPE else _node_types[node.node_id]
    return snap


_node_types: dict[str, str] = {}


def autoscaler_events(temp_dir: Path, containing: str = "") -> list[dict[str, Any]]:
    """The autoscaler's events (its own log of them, events/event_AUTOSCALER.log in the session's
    logs: what `ray list cluster-events` shows where a dashboard runs), those whose message contains
    `containing`: [{t (seconds since the epoch), message}]."""
    path = temp_dir / "session_latest" / "logs" / "events" / "event_AUTOSCALER.log"
    found = []
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                event = json.loads(line)
                if containing in event["message"]:
                    found.append({"t": int(event["timestamp"]), "message": event["message"]})
    return found


def scrape(port: int, timeout_s: float = 5.0) -> str:
    """One node's Prometheus exposition (its metrics agent on 127.0.0.1)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as response:
        return response.read().decode()


class Sampler:
    """Snapshots the cluster every `period_s` in a background thread, on the simulation's clock."""

    def __init__(self, gcs_address: str, clock_zero: float, period_s: float = 1.0) -> None:
        import threading
        import time

        self._time, self.gcs_address, self.zero, self.period_s = time, gcs_address, clock_zero, period_s
        self.snapshots: list[Snapshot] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def now(self) -> float:
        return self._time.monotonic() - self.zero

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.snapshots.append(snapshot(self.now(), self.gcs_address))
            except Exception:  # a sample lost while a node dies is a gap in the timeline, not a failure
                self.errors += 1
            self._stop.wait(self.period_s)

    def latest(self) -> Snapshot:
        return self.snapshots[-1] if self.snapshots else snapshot(self.now(), self.gcs_address)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


# The cluster-wide series the head's reporter agent exports from the autoscaler's report (Ray 2.60
# dashboard/modules/reporter/reporter_agent.py), which the KubeRay-layer alerts read.
CLUSTER_SERIES = ("ray_cluster_active_nodes", "ray_cluster_pending_nodes", "ray_cluster_failed_nodes")


class MetricsWatch:
    """Scrapes the head's metrics port every `period_s` in a background thread: every metric name it
    ever exported (`names`), and the largest value each CLUSTER_SERIES sample reached, by node type
    (`peaks`: {name: {node_type: value}})."""

    def __init__(self, port: int, period_s: float = 2.0) -> None:
        import threading

        self.port, self.period_s = port, period_s
        self.names: set[str] = set()
        self.peaks: dict[str, dict[str, float]] = {}
        self.scrapes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import re

        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                text = scrape(self.port)
                self.scrapes += 1
                self.names |= set(re.findall(r"^([a-zA-Z_:][\w:]*)[{ ]", text, re.M))
                for name in CLUSTER_SERIES:
                    for labels, value in re.findall(rf"^{name}\{{([^}}]*)\}} (\S+)$", text, re.M):
                        node_type = dict(re.findall(r'(\w+)="([^"]*)"', labels)).get("node_type", "")
                        peak = self.peaks.setdefault(name, {})
                        peak[node_type] = max(peak.get(node_type, 0.0), float(value))
            self._stop.wait(self.period_s)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(30)
        return {"scrapes": self.scrapes, "names": sorted(self.names), "cluster_series_peaks": self.peaks}
