"""What /proc says about the processes a test started (Ray's, a container's): shared by tests/reliability and
tests/images, which find a server's processes and check who they run as."""

from __future__ import annotations

import os
from pathlib import Path


def descendants(root: int | None = None) -> set[int]:
    """`root` (default: this process) and every process it started, as /proc shows them now."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            # The command name in parentheses may hold spaces and ')': the fields after the last ')' are safe.
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    todo, seen = [root or os.getpid()], set()
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo.extend(children.get(pid, []))
    return seen


def cmdline(pid: int) -> str:
    """The process's command line, space-joined; empty once it has exited."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def uid(pid: int) -> int | None:
    """The process's real uid, or None once it has exited."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None
