"""The processes of one simulation, found from /proc (no Ray import: the reaper uses this too)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def _session_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[3])
    except (OSError, IndexError, ValueError):
        return None


def processes_of(session: int, temp_dir: str) -> list[int]:
    """PIDs that belong to the simulation: in its session, or naming its temp dir on their command
    line (a Ray process that started a session of its own)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        if _session_of(pid) == session:
            found.append(pid)
            continue
        with contextlib.suppress(OSError):
            if temp_dir.encode() in (entry / "cmdline").read_bytes():
                found.append(pid)
    return found


def kill_all(session: int, temp_dir: str, grace_s: float = 5.0) -> list[int]:
    """SIGTERM, then SIGKILL, every process of the simulation; returns those still alive."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        pids = processes_of(session, temp_dir)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and living(processes_of(session, temp_dir)):
            time.sleep(0.2)
    return living(processes_of(session, temp_dir))


def living(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        with contextlib.suppress(OSError, IndexError):
            if Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] != "Z":
                alive.append(pid)
    return alive


def raylet_of(node_id: str, session: int, temp_dir: str) -> int | None:
    """The PID of the raylet that runs node `node_id` in this simulation."""
    for pid in living(processes_of(session, temp_dir)):
        with contextlib.suppress(OSError):
            argv = (Path(f"/proc/{pid}") / "cmdline").read_bytes().split(b"\0")
            if argv and argv[0].endswith(b"/raylet") and f"--node_id={node_id}".encode() in argv:
                return pid
    return None
