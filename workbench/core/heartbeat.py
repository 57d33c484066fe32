"""Heartbeat: a small JSON file that long work inside a notebook kernel rewrites, so the
process that runs the notebook can show what happens *inside* a cell.

Papermill's cell bar only moves when a cell ends; a one-shot sweep or an IMP run is one
cell of many minutes. The driver (:func:`workbench.experiments.running.notebooks.run_notebook`)
puts the path of a heartbeat file into the kernel's environment (:data:`ENV`); the work in
the kernel calls :func:`beat` with what it is doing, and the driver polls the file and
draws it (tqdm on the terminal; ``workbench grid status`` reads it too, see
:func:`workbench.experiments.running.cell_state.read_heartbeat`).

Why a file and not the kernel's output stream: the file is read by any process at any
time (the grid driver, ``grid status`` from another shell, a SLURM job's owner), survives
the kernel, costs no notebook output, and needs no parsing of tqdm's text.

Fields (all optional; :func:`beat` merges them into the current record):

``task``            what runs (``"one-shot sweep"``, ``"IMP"``)
``item``            the current piece of work (``"wanda uniform 50% seed 1"``)
``done, total``     units finished / planned in this task (ETA: :func:`eta_seconds`)
``unit``            what ``done`` counts (``"model"``, ``"step"``)
``round, n_rounds`` IMP round (0 = dense training) and the last round
``step, steps``     optimizer step within the round (1-based) and steps per round
``tokens_per_s``    training tokens per second in the current round
``task_started``    Unix time the task started; ``done0``: ``done`` at that time (a
                    resumed run starts above 0, the ETA uses the rate since the start)
``time``            Unix time of this beat; ``pid``: the writing process

Without :data:`ENV` set, :func:`beat` returns at once (a dictionary lookup).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

#: Environment variable holding the heartbeat file's path (set by the notebook driver).
ENV = "WORKBENCH_HEARTBEAT"
#: Minimum seconds between two writes (a beat in between only updates the record).
MIN_INTERVAL = 1.0

_record: dict[str, Any] = {}
_last_write = 0.0


def enabled() -> bool:
    """Is a heartbeat file configured for this process?"""
    return bool(os.environ.get(ENV))


def start(task: str, *, total: int | None = None, done: int = 0, unit: str = "",
          **fields: Any) -> None:
    """Begin a task: clears the previous task's fields and writes at once."""
    if not enabled():
        return
    _record.clear()
    now = time.time()
    beat(force=True, task=task, total=total, done=done, done0=done, unit=unit,
         task_started=now, **fields)


def beat(*, force: bool = False, **fields: Any) -> None:
    """Merge ``fields`` into the record and write it (at most every :data:`MIN_INTERVAL`
    seconds unless ``force``). Atomic: the file is written next to itself and renamed."""
    global _last_write
    path = os.environ.get(ENV)
    if not path:
        return
    now = time.time()
    _record.update(fields)
    _record.update(time=now, pid=os.getpid())
    _record.setdefault("task_started", now)
    if not force and now - _last_write < MIN_INTERVAL:
        return
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(_record, f, default=str)
        os.replace(tmp, path)
    except OSError:  # progress display must never break the work
        return
    _last_write = now


def eta_seconds(record: dict[str, Any], now: float | None = None) -> float | None:
    """Seconds left at the rate since the task started, or ``None`` when unknown."""
    done, total, started = record.get("done"), record.get("total"), record.get("task_started")
    done0 = record.get("done0") or 0
    if not (isinstance(done, (int, float)) and isinstance(total, (int, float)) and started):
        return None
    now = time.time() if now is None else now
    beat_time = float(record.get("time") or now)
    rate = (done - done0) / max(beat_time - float(started), 1e-9)  # units per second
    if done >= total:
        return 0.0
    return None if rate <= 0 else max(0.0, (total - done) / rate - (now - beat_time))
