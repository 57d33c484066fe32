"""One cell of a grid: what it is, running its notebook once, recording a lost attempt.

A **cell** is one (experiment, seed) of a spec (:class:`Cell`, built by
:func:`workbench.experiments.running.grid.plan`). :func:`run_cell` runs its notebook
through papermill into the cell's folder (every file name there comes from
:mod:`workbench.experiments.running.runs`) and never raises: the outcome is the cell's
``status.json``. :func:`record_failure` writes that record when the attempt was lost
outside the cell's own process (a dead pool worker, a lost submitit or SLURM job).

Both executors use this module: the local and submitit paths of
:mod:`workbench.experiments.running.grid` and the SLURM jobs of
:mod:`workbench.experiments.running.slurm` (which imports this module, never the grid).

Resuming: an unfinished folder is cleaned, not emptied
(:func:`workbench.experiments.running.cell_state.clean_cell`): its checkpoints stay and the
notebook (``run_imp``) continues after the last finished round; a cell recorded as failed
restarts from round 0 (its checkpoints are removed: a failure may come from the
checkpoint itself). A rank killed by a signal (``RanksInterrupted`` raised in the
notebook) leaves the cell ``interrupted``, any other exception ``failed``.
"""

from __future__ import annotations

import contextlib
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.core import io, paths
from workbench.experiments.running import notebooks, runs
from workbench.experiments.running.cell_state import (cell_state, clean_cell, kernel_files_in,
                                                      owner_record, read_status,
                                                      refresh_state, utc_now)


@dataclass
class Cell:
    """One (experiment, seed) of a grid.

    Attributes:
        experiment: Experiment id.
        seed: Seed.
        notebook: Notebook name or path.
        parameters: Everything injected into the notebook: ``{run_dir, config: {...,
            experiment, seed}}`` for a notebook that takes a config dict (notebook 04),
            else the flat parameters with ``experiment``, ``seed`` and ``output_dir``.
        directory: The cell's folder.
    """

    experiment: str
    seed: int
    notebook: str
    parameters: dict[str, Any] = field(repr=False)
    directory: Path

    @property
    def state(self) -> str:
        """The cell's state (:func:`workbench.experiments.running.cell_state.cell_state`)."""
        return cell_state(self.directory)


def run_cell(cell: Cell, *, kernel_name: str = paths.KERNEL_NAME, threads: int | None = None,
             timeout: int | None = None, nproc: int = 1,
             allow_repeats: bool = False) -> dict[str, Any]:
    """Run one cell in this process (the kernel is a child process); never raises.

    An unfinished folder is cleaned (:func:`clean_cell`), not emptied: its checkpoints
    stay and the notebook resumes after the last finished round; a failed cell restarts
    from round 0. ``status.json`` says ``running`` (with host, pid and the process start
    time) while the notebook runs and ``done`` or ``failed`` (with error, traceback and
    notebook path) afterwards. The kernel's connection files live in the cell's
    ``.jupyter-runtime/`` folder, removed when the cell ends or on the next attempt.

    Args:
        cell: The cell.
        kernel_name: Jupyter kernel.
        threads: Torch/OpenMP threads of the kernel (``None``: leave the default).
        timeout: Per-notebook-cell timeout in seconds.
        nproc: Ranks the cell's kernel launches (:mod:`workbench.lottery.distributed`).
        allow_repeats: Let the cell run a plan over ``max_epochs``.

    Returns:
        The final status record.
    """
    d = Path(cell.directory)
    state = refresh_state(d)
    if state == "done":
        return {**read_status(d), "status": "done", "skipped": True}
    clean_cell(d, restart=state == "failed")
    d.mkdir(parents=True, exist_ok=True)
    if threads is not None:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(threads)
    nb_path = d / runs.NOTEBOOK
    ckdir = d / runs.CHECKPOINTS
    record: dict[str, Any] = {
        "experiment": cell.experiment, "seed": cell.seed, "notebook": str(nb_path),
        "source": str(cell.notebook), **owner_record(), "threads": threads,
        "started": utc_now(), "resumed": ckdir.is_dir() and any(ckdir.iterdir()),
    }
    io.write_json(d / runs.PARAMS, cell.parameters)
    io.write_json(d / runs.STATUS, {**record, "status": "running"})
    if nproc > 1:
        record["nproc"] = nproc
    t0 = time.perf_counter()
    try:
        with kernel_files_in(d), _cell_env(nproc, allow_repeats):
            notebooks.run_notebook(cell.notebook, nb_path, cell.parameters,
                                   kernel_name=kernel_name, timeout=timeout,
                                   heartbeat=d / runs.HEARTBEAT)
        problem = runs.completion_problem(d)
        if problem is not None:
            raise RuntimeError(f"the notebook finished but the run is not complete: {problem}")
        record.update(status="done", error=None)
    except Exception as exc:  # noqa: BLE001 - every failure is recorded, the grid goes on
        # A rank killed by a signal is an interruption (resume), not a failure (restart).
        lost = getattr(exc, "ename", None) == "RanksInterrupted"
        record.update(status="interrupted" if lost else "failed",
                      error=f"{type(exc).__name__}: {_short(exc)}",
                      traceback=traceback.format_exc(limit=5))
        if lost:
            record["interrupted_found"] = utc_now()
    record["seconds"] = round(time.perf_counter() - t0, 2)
    record["finished"] = utc_now()
    io.write_json(d / runs.STATUS, record)
    return record


def record_failure(cell: Cell, exc: BaseException) -> dict[str, Any]:
    """Record a cell whose attempt was lost outside :func:`run_cell` (its worker process
    died, its job was lost) as failed.

    The record is the cell's ``status.json`` with ``status="failed"``, the error, the
    experiment, the seed and the executed notebook's path; it is written into the cell's
    folder when the folder exists (never created here).

    Returns:
        The record.
    """
    record = {**read_status(cell.directory), "status": "failed",
              "error": f"{type(exc).__name__}: {exc}", "experiment": cell.experiment,
              "seed": cell.seed, "notebook": str(Path(cell.directory) / runs.NOTEBOOK)}
    if Path(cell.directory).is_dir():
        io.write_json(Path(cell.directory) / runs.STATUS, record)
    return record


@contextlib.contextmanager
def _cell_env(nproc: int, allow_repeats: bool):
    """The environment the cell's kernel inherits: ranks to launch, repeats allowed."""
    # Imported on use: the lottery modules load torch, which the driver does not need.
    from workbench.lottery.budget import ALLOW_REPEATS_ENV
    from workbench.lottery.distributed import NPROC_ENV

    values = {NPROC_ENV: str(int(nproc)) if nproc > 1 else None,
              ALLOW_REPEATS_ENV: "1" if allow_repeats else None}
    before = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _short(exc: Exception, limit: int = 2000) -> str:
    if getattr(exc, "ename", None):  # papermill: the exception raised inside the notebook
        return f"{exc.evalue} (in the notebook, {exc.ename})"
    text = str(exc).strip()
    # Papermill's message holds the whole cell source and traceback; keep the tail.
    return text if len(text) <= limit else "..." + text[-limit:]
