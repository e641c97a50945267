"""One simulated dev cluster for the whole test run: `repoctl simulate --overlay dev` (the code `make
simulate` runs) in a child process, with a shorter load ramp and idle timeout than the make target's.
Its report.json is what the scenario tests read.

A child process, not the simulation in this one: the simulation's Ray driver connects to its own
cluster, and the test session's driver may already be connected to the shared local Ray
(tests/liveray.py). Teardown is the child's: it stops every process it started in a `finally`, its
reaper does it if the child is killed, and this fixture ends the child (SIGTERM, then SIGKILL) if the
run outlives its budget or the session is interrupted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# A bounded run: two short load steps, and the idle timeout the GPU workers wait for before the
# autoscaler removes them (the overlay's is 5 minutes; the report records both).
ARGS = ("--ramp-clients", "4,12", "--ramp-step-s", "6", "--idle-timeout-s", "15")
# The whole run's ceiling, far above what it takes (about 2-3 minutes on 2 shared cores): a hang fails
# the tests instead of holding CI.
RUN_LIMIT_S = 600


@dataclass(frozen=True)
class Simulation:
    report: dict[str, Any]
    returncode: int
    log: str  # the child's output: the events it printed as they happened

    def scenario(self, name: str) -> dict[str, Any]:
        """A scenario's figures; fails with the run's error and output when it never got there."""
        found = self.report.get("scenarios", {}).get(name)
        if found is None:
            pytest.fail(f"the simulation recorded no {name!r} scenario (error: {self.report.get('error')}):\n"
                        f"{self.log[-4000:]}")
        return found


@pytest.fixture(scope="session")
def dev_simulation(tmp_path_factory: pytest.TempPathFactory, local_bundle_dir: Path) -> Iterator[Simulation]:
    out = tmp_path_factory.mktemp("simulate-dev")
    argv = [str(Path(sys.executable).with_name("repoctl")), "simulate", "--overlay", "dev",
            "--bundle", str(local_bundle_dir), "--out", str(out), *ARGS]
    # The session's own Ray settings (tests/liveray.py sets the token path, an address may be set)
    # must not leak into the simulated cluster, which has its own token and address.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    log_path = out / "simulate.log"
    with log_path.open("wb") as log:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            returncode = child.wait(timeout=RUN_LIMIT_S)
        except BaseException:  # over the limit, or the session interrupted: the child stops its cluster
            child.terminate()
            try:
                child.wait(timeout=120)
            except subprocess.TimeoutExpired:
                child.kill()  # its reaper stops the cluster
                child.wait()
            raise
    text = log_path.read_text(errors="replace")
    print(f"\nrepoctl simulate --overlay dev {' '.join(ARGS)} (rc {returncode}):\n{text}")
    report_path = out / "report.json"
    if not report_path.is_file():
        pytest.fail(f"repoctl simulate wrote no report (rc {returncode}):\n{text[-4000:]}")
    yield Simulation(json.loads(report_path.read_text()), returncode, text)
