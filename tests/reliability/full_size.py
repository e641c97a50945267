"""The full-size load run (`make reliability`): starts a local Ray as `make run` does, deploys the
dev overlay's serveConfigV2, and prints counts and percentiles at concurrency 8 and 64.

    .venv/bin/python tests/reliability/full_size.py [--requests 5000] [--baseline 1000]

A measurement, not a test: it prints and checks the acceptance figures of issue 11 (every request
a 200 or a 503 with Retry-After, refused p99 < 100 ms, goodput at 64 >= 90% of goodput at 8) and
exits 1 when one does not hold. Loopback only, bounded in count, stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import percentile, run_load
from repoctl.local_run import deploy, local_overlay, logical_cpus_needed, start_ray
from repoctl.paths import ROOT

FIRST_WAVE_S = 0.1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / ".cache" / "bundle")
    parser.add_argument("--requests", type=int, default=5000, help="requests at concurrency 64")
    parser.add_argument("--baseline", type=int, default=1000, help="requests at concurrency 8")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--max-wait", type=float, default=5.0,
                        help="longest Retry-After a client honours, in seconds (0: clients that ignore it)")
    args = parser.parse_args()
    if not (args.bundle / "manifest.json").is_file():
        raise SystemExit(f"{args.bundle}: no model bundle; build it with `make bundle`")
    overlay = local_overlay("dev", args.bundle, args.port)
    import ray
    from ray import serve

    start_ray(logical_cpus_needed(overlay.config), token_file=Path(tempfile.mkdtemp()) / "auth_token",
              serve_env=overlay.serve_env)
    try:
        deploy(overlay.config)
        url = f"http://127.0.0.1:{args.port}"
        print(f"{os.cpu_count()} CPUs; dev overlay serveConfigV2 on a local Ray", flush=True)
        asyncio.run(run_load(url, 32, 4))  # warm-up, not reported
        time.sleep(2)
        baseline = asyncio.run(run_load(url, args.baseline, 8, max_wait_s=args.max_wait))
        print(baseline.summary(), flush=True)
        overload = asyncio.run(run_load(url, args.requests, 64, max_wait_s=args.max_wait))
        print(overload.summary(), flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    refused = [o for o in overload.outcomes if o.status in (429, 503)]
    checks = {
        "every request a 200 or a 503/429": set(overload.statuses()) <= {200, 429, 503},
        "every refusal has Retry-After": all(o.retry_after for o in refused),
        "refused p99 < 100 ms": percentile(overload.latencies(503), 99) < 0.1,
        "goodput at 64 >= 90% of goodput at 8": overload.goodput >= 0.9 * baseline.goodput,
    }
    ratio = overload.goodput / baseline.goodput if baseline.goodput else 0.0
    print(f"goodput ratio 64/8: {ratio:.2f}")
    # Where the slowest refusals come from: the first wave, all clients' first requests sent in the
    # same millisecond, which Serve's proxy takes in one at a time, against everything after it.
    first = sorted(o.seconds for o in refused if o.sent_at < FIRST_WAVE_S)
    later = sorted(o.seconds for o in refused if o.sent_at >= FIRST_WAVE_S)
    if first:
        print(f"refusals of the first wave (sent in the first {FIRST_WAVE_S * 1000:.0f} ms): n={len(first)} "
              f"min={first[0] * 1000:.0f}ms max={first[-1] * 1000:.0f}ms")
    if later:
        print(f"refusals after it: n={len(later)} p50={percentile(later, 50) * 1000:.0f}ms "
              f"p99={percentile(later, 99) * 1000:.0f}ms max={later[-1] * 1000:.0f}ms")
    for name, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
