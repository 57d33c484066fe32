"""The state of a grid cell's folder, how a dead owner is detected, and what a killed
attempt leaves behind.

A cell (one (experiment, seed) of a grid, :class:`workbench.experiments.running.cell.Cell`)
is in one of :data:`STATES`, read from its folder alone by :func:`cell_state`:

* ``done``: :func:`workbench.experiments.running.runs.is_complete` (the completion rule);
* ``running``: ``status.json`` says so and its owner process is alive, or runs on
  another host and cannot be checked;
* ``interrupted``: ``status.json`` says ``running`` but its owner process is gone, or
  :func:`refresh_state` already rewrote it as ``interrupted``;
* ``failed``: the notebook raised (recorded by the grid);
* ``incomplete``: any other existing folder;
* ``pending``: no folder yet.

**Dead owner.** The process that runs a cell records itself in ``status.json``
(:func:`owner_record`: host, pid and the process start time in clock ticks since boot,
from ``/proc/<pid>/stat``). On the same host its owner is dead when the pid no longer
exists, is a zombie (killed, not yet reaped: containers often have no init), or belongs
to another process (a recycled pid: another start time). On another host, or without a
recorded pid, it cannot be told and the cell reads as running.

**Leftovers.** :func:`clean_cell` removes what a killed attempt left (temporary files of
atomic writes and papermill, the kernel's connection files in
:data:`~workbench.experiments.running.runs.KERNEL_RUNTIME_DIR`, a records file that is not
complete) and keeps the checkpoints, so the cell resumes. Every file name comes from
:mod:`workbench.experiments.running.runs`.
"""

from __future__ import annotations

import calendar
import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from workbench.core import io, processes
from workbench.core.heartbeat import eta_seconds
from workbench.experiments.running import runs

#: Cell states (see :func:`cell_state`).
STATES = ("done", "running", "interrupted", "failed", "incomplete", "pending")


def cell_state(directory: str | os.PathLike) -> str:
    """State of a cell folder (pure: reads, never writes; see :func:`refresh_state`).

    ``done`` iff :func:`workbench.experiments.running.runs.is_complete`; otherwise from
    ``status.json``: ``failed`` (the notebook raised), ``interrupted`` (marked so after
    its process died), ``running`` (its process is alive, or on another host and cannot
    be checked); a "running" record whose process is gone reads as ``interrupted``;
    ``incomplete`` for any other existing folder; ``pending`` if there is no folder.
    """
    d = Path(directory)
    if runs.is_complete(d):
        return "done"
    if not d.is_dir():
        return "pending"
    st = runs.read_status(d)
    state = st.get("status")
    if state == "running":
        return "running" if _owner_alive(st) is not False else "interrupted"
    if state in ("failed", "interrupted"):
        return state
    return "incomplete"


def refresh_state(directory: str | os.PathLike) -> str:
    """:func:`cell_state`, and a stale "running" ``status.json`` rewritten as interrupted.

    The record keeps its fields and gains ``status="interrupted"`` and
    ``interrupted_found`` (UTC time of this check).
    """
    state = cell_state(directory)
    st = runs.read_status(directory)
    if state == "interrupted" and st.get("status") == "running":
        io.write_json(Path(directory) / runs.STATUS,
                      {**st, "status": "interrupted", "interrupted_found": utc_now()})
    return state


def read_status(directory: str | os.PathLike) -> dict[str, Any]:
    """The cell's ``status.json`` as a dict (empty when missing or unreadable)."""
    return runs.read_status(directory)


def utc_now() -> str:
    """The current UTC time as ``YYYY-MM-DDTHH:MM:SSZ`` (the times of status records)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# The owner record and its liveness check live in the core layer (also used for the
# interrupted dequantisation folders of workbench.core.models).
owner_record = processes.owner_record
_owner_alive = processes.owner_alive


def clean_cell(directory: str | os.PathLike, *, restart: bool = False) -> list[Path]:
    """Remove what a killed attempt left in a cell folder, keeping its checkpoints.

    Removed: temporary files of atomic writes and papermill
    (:func:`workbench.experiments.running.runs.temporary_files`), the folder of Jupyter kernel
    connection files, and a records file that does not satisfy the completion rule.
    With ``restart`` (a failed cell) the ``checkpoints/`` folder goes too, so the cell
    starts again from round 0.

    Returns:
        The paths removed.
    """
    d = Path(directory)
    gone = runs.temporary_files(d) + [d / runs.KERNEL_RUNTIME_DIR]
    if not runs.is_complete(d):
        gone.append(d / runs.RECORDS)
    if restart:
        gone.append(d / runs.CHECKPOINTS)
    removed = []
    for p in gone:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink(missing_ok=True)
        else:
            continue
        removed.append(p)
    return removed


@contextlib.contextmanager
def kernel_files_in(directory: str | os.PathLike) -> Iterator[Path]:
    """Put the Jupyter connection file of the cell's kernel in the cell's
    :data:`~workbench.experiments.running.runs.KERNEL_RUNTIME_DIR` (removed at the end,
    and by :func:`clean_cell` after a kill): jupyter_client writes it with
    :func:`tempfile.mkstemp` (``/tmp/tmp*.json``) or under ``JUPYTER_RUNTIME_DIR``; both
    point into the cell folder while the notebook runs."""
    folder = Path(directory) / runs.KERNEL_RUNTIME_DIR
    folder.mkdir(parents=True, exist_ok=True)
    previous_env, previous_tmp = os.environ.get("JUPYTER_RUNTIME_DIR"), tempfile.tempdir
    os.environ["JUPYTER_RUNTIME_DIR"] = str(folder)
    tempfile.tempdir = str(folder)
    try:
        yield folder
    finally:
        tempfile.tempdir = previous_tmp
        if previous_env is None:
            os.environ.pop("JUPYTER_RUNTIME_DIR", None)
        else:
            os.environ["JUPYTER_RUNTIME_DIR"] = previous_env
        shutil.rmtree(folder, ignore_errors=True)


def read_heartbeat(directory: str | os.PathLike) -> dict[str, Any]:
    """The cell's last heartbeat record (:mod:`workbench.core.heartbeat`), ``{}`` if none."""
    return runs.read_json(Path(directory) / runs.HEARTBEAT)


def progress_fields(directory: str | os.PathLike, now: float | None = None) -> dict[str, Any]:
    """What ``grid status`` shows of a cell's work: ``round`` (``"2/5"``), ``step``
    (``"40/100"``), ``elapsed`` (seconds since the attempt started, from ``status.json``),
    ``heartbeat`` (seconds since the kernel's last beat) and ``doing`` (the beat's item,
    tokens/s and ETA as text). Missing values are ``None``."""
    now = time.time() if now is None else now
    st, hb = read_status(directory), read_heartbeat(directory)
    started = _parse_utc(st.get("started"))
    out: dict[str, Any] = {"round": None, "step": None, "elapsed": None, "heartbeat": None,
                           "doing": None}
    if st.get("status") == "running" and started is not None:
        out["elapsed"] = round(now - started)
    if not hb or (started is not None and float(hb.get("time", 0)) < started - 1):
        return out  # no beat yet in this attempt
    if hb.get("round") is not None:
        out["round"] = f"{hb['round']}/{hb.get('n_rounds', '?')}"
    if hb.get("step") is not None:
        out["step"] = f"{hb['step']}/{hb.get('steps', '?')}"
    elif hb.get("done") is not None and hb.get("total"):
        out["step"] = f"{hb['done']}/{hb['total']} {hb.get('unit') or ''}".strip()
    if hb.get("time"):
        out["heartbeat"] = round(now - float(hb["time"]))
    doing = [str(hb.get("item") or hb.get("task") or "")]
    if hb.get("tokens_per_s"):
        doing.append(f"{hb['tokens_per_s']:,.0f} tok/s")
    eta = eta_seconds(hb, now) if st.get("status") == "running" else None
    if eta is not None:
        doing.append(f"ETA {eta / 60:.1f} min")
    out["doing"] = ", ".join(d for d in doing if d) or None
    return out


def _parse_utc(text: Any) -> float | None:
    """Unix time of a ``YYYY-MM-DDTHH:MM:SSZ`` string (:func:`utc_now`), else ``None``."""
    try:
        return float(calendar.timegm(time.strptime(str(text), "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return None
