"""Stops a simulation's processes when the process that started it dies without stopping them
(SIGKILL, a crash): `python -m repoctl.simulation.reaper <parent pid> <session> <temp dir>`."""

from __future__ import annotations

import os
import shutil
import sys
import time

from repoctl.simulation.processes import kill_all


def main(parent: int, session: int, temp_dir: str) -> None:
    while True:
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            break
        time.sleep(1)
    kill_all(session, temp_dir)
    shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
