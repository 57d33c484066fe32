"""Who owns a piece of work, and whether that process is still alive.

A process that starts long work (a grid cell, the first dequantisation of a model)
records itself with :func:`owner_record`: host, pid and the process start time in clock
ticks since boot (field 22 of ``/proc/<pid>/stat``, proc(5)). :func:`owner_alive` reads
such a record back: on the same host the owner is dead when the pid no longer exists, is
a zombie (killed, not yet reaped: containers often have no init), or belongs to another
process (a recycled pid: another start time). On another host, or without a recorded
pid, it cannot be told (``None``).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Mapping


def owner_record() -> dict[str, Any]:
    """``{"host", "pid", "pid_start"}`` of this process."""
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "pid_start": process_start(os.getpid())}


def process_start(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot (Linux ``/proc``), else ``None``."""
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return None
    return stat[stat.rindex(")") + 2:].split()[19]  # field 22 of proc(5)


def process_state(pid: int) -> str | None:
    """State letter of ``pid`` from ``/proc/<pid>/stat`` (``Z``: zombie), else ``None``."""
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return None
    return stat[stat.rindex(")") + 2:].split()[0]


def owner_alive(record: Mapping[str, Any]) -> bool | None:
    """Is the process named in an :func:`owner_record` alive? ``None`` when it cannot be
    told (another host, no pid recorded). A recycled pid is told apart by its start time."""
    pid, host = record.get("pid"), record.get("host")
    if not isinstance(pid, int) or host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if process_state(pid) in ("Z", "X"):  # killed, not yet reaped (no init in containers)
        return False
    started = record.get("pid_start")
    return started is None or process_start(pid) in (None, started)


__all__ = ["owner_record", "owner_alive", "process_start", "process_state"]
