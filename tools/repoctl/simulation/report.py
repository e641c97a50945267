"""A simulation's report: `report.json` (what the cluster looked like over time, what the load got,
each scenario's figures) and `timeline.png`, the same timeline drawn (nodes per group, running
replicas per deployment, answers/s with p99 latency and failed requests), events marked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ray

from repoctl.simulation.load import Load, summarize
from repoctl.simulation.scenarios import Run


def load_per_second(load: Load | None, seconds: float) -> list[dict[str, Any]]:
    """Each second from the first request to the last answer, by when the answers came: a second in
    which requests waited and none came back shows as 0 answers/s (binned by the time a request was
    sent, a stall would show as a gap, and a line drawn across it)."""
    if load is None or not load.outcomes:
        return []
    first = int(min(o.sent for o in load.outcomes))
    last = int(max(o.sent + o.seconds for o in load.outcomes))
    out = []
    for t in range(first, min(last, int(seconds)) + 1):
        s = summarize(load.ended_between(t, t + 1), 1.0)
        out.append({"t": t, "ended": s["requests"], "answers_per_s": s["answers_per_s"], "p50_ms": s["p50_ms"],
                    "p99_ms": s["p99_ms"], "failed": s["requests"] - s["answered"],
                    "not_retryable": s["not_retryable"]})
    return out


def as_dict(run: Run) -> dict[str, Any]:
    return {
        "overlay": run.overlay, "ray": ray.__version__, "shortened": run.shortened, "local": run.local,
        "error": run.error, "seconds": run.seconds, "leftover_pids": run.leftover_pids,
        "events": run.events, "scenarios": run.scenarios,
        "timeline": [s.as_dict() for s in run.timeline],
        "load": load_per_second(run.load, run.seconds),
    }


def write(run: Run, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    report = as_dict(run)
    json_path = out_dir / "report.json"
    json_path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    png_path = out_dir / "timeline.png"
    draw(report, png_path)
    return json_path, png_path


def draw(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timeline, load = report["timeline"], report["load"]
    fig, (ax_nodes, ax_replicas, ax_load) = plt.subplots(3, 1, figsize=(9, 7), sharex=True, dpi=80)
    ts = [s["t"] for s in timeline]
    groups = sorted({g for s in timeline for g in s["nodes"]})
    for group in groups:
        ax_nodes.step(ts, [s["nodes"].get(group, 0) for s in timeline], where="post", label=group)
    for spec in report["overlay"].get("groups", {}).values():
        ax_nodes.axhline(spec["max"], linestyle=":", linewidth=0.8, color="grey")
    ax_nodes.set_ylabel("nodes")
    ax_nodes.legend(loc="upper left", fontsize=8)
    deployments = sorted({d for s in timeline for d in s["replicas"]})
    for d in deployments:
        ax_replicas.step(ts, [s["replicas"].get(d, {}).get("running", 0) for s in timeline], where="post", label=d)
    pending = [sum(x["count"] for x in s["pending_demands"] if x["resources"].get("GPU")) for s in timeline]
    ax_replicas.step(ts, pending, where="post", linestyle="--", color="black", label="pending GPU demands")
    ax_replicas.set_ylabel("running replicas")
    ax_replicas.legend(loc="upper left", fontsize=8)
    lt = [x["t"] for x in load]
    ax_load.plot(lt, [x["answers_per_s"] for x in load], label="answers/s")
    ax_load.bar(lt, [x["failed"] for x in load], color="tab:red", alpha=0.6, label="refused (503) per s")
    ax_load.set_ylabel("per second")
    ax_load.set_xlabel(f"seconds since the cluster started (overlays/{report['overlay']['env']}, Ray {report['ray']})")
    latency = ax_load.twinx()
    latency.plot(lt, [x["p99_ms"] for x in load], color="tab:grey", linewidth=0.8, label="p99 ms")
    latency.set_ylabel("p99 ms")
    ax_load.legend(loc="upper left", fontsize=8)
    for ax in (ax_nodes, ax_replicas, ax_load):
        for e in report["events"]:
            ax.axvline(e["t"], color="grey", linewidth=0.5, alpha=0.6)
    for e in report["events"]:
        ax_nodes.annotate(e["event"], (e["t"], ax_nodes.get_ylim()[1]), rotation=90, fontsize=6, va="top", ha="right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
