"""Model replicas lower their own CPU priority below the proxy's and the ingress's: every thread that
exists when the replica starts, and every thread started after (ONNX Runtime's pools)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent("""
    import json, os, threading, time
    from support_assistant.serving.deployments import yield_cpu_to_the_front

    def niceness():
        return {int(t): os.getpriority(os.PRIO_PROCESS, int(t)) for t in os.listdir("/proc/self/task")}

    stop = threading.Event()
    threading.Thread(target=stop.wait).start()
    before = niceness()
    yield_cpu_to_the_front(3)
    threading.Thread(target=stop.wait).start()
    time.sleep(0.05)
    after = niceness()
    stop.set()
    print(json.dumps({"before": list(before.values()), "after": list(after.values())}))
""")


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread niceness is Linux's (/proc/self/task)")
def test_every_thread_before_and_after_runs_at_the_lower_priority():
    # In a child process: a niceness cannot be lowered back without privileges.
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, check=True)
    seen = json.loads(out.stdout)
    start = set(seen["before"])
    assert len(start) == 1, "the child's threads started at different priorities"
    assert len(seen["before"]) >= 2
    assert set(seen["after"]) == {min(19, start.pop() + 3)}
    assert len(seen["after"]) == len(seen["before"]) + 1  # the thread started afterwards is counted too
