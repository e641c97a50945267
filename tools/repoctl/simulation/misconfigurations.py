"""The seed's misconfigurations, applied to the overlay's own serveConfigV2 for the simulation to run:
what each one changes, and the series of Serve's that show it (read from the cluster's metrics agent).

`oversized_generator`: the Generator asks for one GPU more than any worker group's pods have (two on
dev's one-GPU workers). Ray cannot place its replica anywhere, the autoscaler reports the demand as
infeasible, /readyz says not ready, and ServeReplicasBelowTarget's series are exported; the `gpu-fit`
policy refuses the same change before merge (tests/simulation checks both, side by side).
"""

from __future__ import annotations

import copy
import re
from typing import Any

GENERATOR = "Generator"
# Serve's own controller metrics (ray/serve/_private/deployment_state.py), as Ray exports them, with
# the ray_ prefix: what ServeReplicasBelowTarget's recording rules read (base/monitoring).
REPLICA_SERIES = ("ray_serve_autoscaling_target_replicas", "ray_serve_deployment_replica_healthy")


def gpus_per_worker(groups: dict[str, dict[str, Any]]) -> float:
    """The most GPUs any worker group's node has (the groups as groups_of derived them)."""
    return max((g["resources"].get("GPU", 0) for g in groups.values()), default=0)


def oversized_generator(config: dict, groups: dict[str, dict[str, Any]]) -> tuple[dict, dict[str, Any]]:
    """`config` with the Generator's num_gpus one more than the largest worker's GPUs, and what changed."""
    mutated = copy.deepcopy(config)
    wanted = gpus_per_worker(groups) + 1
    found = False
    for app in mutated["applications"]:
        for deployment in app.get("deployments", []):
            if deployment["name"] == GENERATOR:
                options = deployment.setdefault("ray_actor_options", {})
                before = options.get("num_gpus", 0)
                options["num_gpus"] = wanted
                found = True
    if not found:
        raise ValueError(f"the serve config has no {GENERATOR} deployment to misconfigure")
    return mutated, {"deployment": GENERATOR, "field": "ray_actor_options.num_gpus", "from": before, "to": wanted,
                     "gpus_per_worker": gpus_per_worker(groups)}


def series(text: str, names: tuple[str, ...] = REPLICA_SERIES) -> list[dict[str, Any]]:
    """The samples of `names` in a Prometheus exposition: [{name, labels, value}]."""
    out = []
    for name in names:
        for labels, value in re.findall(rf"^{name}\{{([^}}]*)\}} (\S+)$", text, re.M):
            out.append({"name": name, "labels": dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels)),
                        "value": float(value)})
    return out
