"""Run an experiment grid: every (experiment, seed) of a spec through papermill.

Each cell runs the spec's notebook into ``data/runs/<spec hash>/<experiment>/seed<k>/``:
``notebook.ipynb`` (the executed copy), ``params.json`` (what was injected),
``status.json`` (running / done / failed, with the error and the notebook path) and
whatever the notebook writes; the notebook writes ``records.parquet`` last.

**A cell is finished if and only if its ``records.parquet`` exists.** A re-run skips
finished cells and re-runs failed or incomplete ones after emptying their folder, so a
killed grid loses at most the cells in flight. A cell whose notebook raises is recorded
as failed and the grid goes on.

Executors: ``"local"`` (``jobs`` worker processes; with ``jobs > 1`` each kernel gets
``cpu_count // jobs`` torch threads), ``"slurm"`` (submitit on a SLURM cluster, at most
``jobs`` cells queued at once), ``"submitit-local"`` and ``"debug"`` (submitit's local
and in-process executors, for tests and debugging).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from workbench.core import io

from workbench.experiments import notebooks

from workbench.core import paths
from workbench.experiments.specs import Spec, load_spec

RECORDS_FILE = "records.parquet"
STATUS_FILE = "status.json"
PARAMS_FILE = "params.json"
NOTEBOOK_FILE = "notebook.ipynb"
SPEC_FILE = "spec.json"
EXECUTORS = ("local", "slurm", "submitit-local", "debug")
STATES = ("done", "failed", "incomplete", "pending")


@dataclass
class Cell:
    """One (experiment, seed) of a grid.

    Attributes:
        experiment: Experiment id.
        seed: Seed.
        notebook: Notebook name or path.
        parameters: Everything injected into the notebook (seed, experiment and
            output_dir included).
        directory: The cell's folder.
    """

    experiment: str
    seed: int
    notebook: str
    parameters: dict[str, Any] = field(repr=False)
    directory: Path

    @property
    def state(self) -> str:
        """``done``, ``failed``, ``incomplete`` or ``pending`` (see :func:`cell_state`)."""
        return cell_state(self.directory)


def cell_state(directory: str | os.PathLike) -> str:
    """State of a cell folder.

    ``done`` iff ``records.parquet`` exists; ``failed`` if ``status.json`` records a
    failure; ``incomplete`` if the folder exists otherwise (killed in flight); ``pending``
    if there is no folder.
    """
    d = Path(directory)
    if (d / RECORDS_FILE).is_file():
        return "done"
    if not d.is_dir():
        return "pending"
    status = read_status(d)
    return "failed" if status.get("status") == "failed" else "incomplete"


def read_status(directory: str | os.PathLike) -> dict[str, Any]:
    """The cell's ``status.json`` as a dict (empty when missing or unreadable)."""
    try:
        return json.loads((Path(directory) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}


def plan(spec: str | os.PathLike | Spec, profile: str | None = "cpu",
         runs_dir: str | os.PathLike | None = None) -> list[Cell]:
    """The cells of a spec under a profile, in spec order (experiment-major).

    Args:
        spec: Spec name, path or :class:`~workbench.experiments.specs.Spec`.
        profile: Profile name or ``None`` for the spec as written.
        runs_dir: Root of the runs folders (default ``data/runs``).
    """
    spec = load_spec(spec)
    root = spec.runs_dir(profile, runs_dir)
    cells = []
    for name, params in spec.resolve(profile).items():
        for seed in spec.experiments[name].seeds:
            d = root / name / f"seed{seed}"
            full = {**params, "experiment": name, "seed": seed, "output_dir": str(d)}
            cells.append(Cell(name, seed, spec.notebook, full, d))
    return cells


def status(spec: str | os.PathLike | Spec, profile: str | None = "cpu",
           runs_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """One row per cell: experiment, seed, state, seconds, error, notebook, directory."""
    rows = []
    for c in plan(spec, profile, runs_dir):
        st = read_status(c.directory)
        rows.append({"experiment": c.experiment, "seed": c.seed, "state": c.state,
                     "seconds": st.get("seconds"), "error": st.get("error"),
                     "notebook": st.get("notebook"), "directory": str(c.directory)})
    return pd.DataFrame(rows, columns=["experiment", "seed", "state", "seconds", "error",
                                       "notebook", "directory"])


def run_cell(cell: Cell, *, kernel_name: str = paths.KERNEL_NAME, threads: int | None = None,
             timeout: int | None = None) -> dict[str, Any]:
    """Run one cell in this process (the kernel is a child process); never raises.

    An unfinished folder is emptied first. ``status.json`` says ``running`` while the
    notebook runs and ``done`` or ``failed`` (with error, traceback and notebook path)
    afterwards.

    Args:
        cell: The cell.
        kernel_name: Jupyter kernel.
        threads: Torch/OpenMP threads of the kernel (``None``: leave the default).
        timeout: Per-notebook-cell timeout in seconds.

    Returns:
        The final status record.
    """
    d = Path(cell.directory)
    if cell_state(d) == "done":
        return {**read_status(d), "status": "done", "skipped": True}
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    if threads is not None:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(threads)
    nb_path = d / NOTEBOOK_FILE
    record: dict[str, Any] = {
        "experiment": cell.experiment, "seed": cell.seed, "notebook": str(nb_path),
        "source": str(cell.notebook), "host": socket.gethostname(), "pid": os.getpid(),
        "threads": threads, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    io.write_json(d / PARAMS_FILE, cell.parameters)
    io.write_json(d / STATUS_FILE, {**record, "status": "running"})
    t0 = time.perf_counter()
    try:
        notebooks.run_notebook(cell.notebook, nb_path, cell.parameters,
                               kernel_name=kernel_name, timeout=timeout)
        if not (d / RECORDS_FILE).is_file():
            raise RuntimeError(f"the notebook finished without writing {RECORDS_FILE}")
        record.update(status="done", error=None)
    except Exception as exc:  # noqa: BLE001 - every failure is recorded, the grid goes on
        record.update(status="failed", error=f"{type(exc).__name__}: {_short(exc)}",
                      traceback=traceback.format_exc(limit=5))
    record["seconds"] = round(time.perf_counter() - t0, 2)
    io.write_json(d / STATUS_FILE, record)
    return record


def _short(exc: Exception, limit: int = 2000) -> str:
    if getattr(exc, "ename", None):  # papermill: the exception raised inside the notebook
        return f"{exc.evalue} (in the notebook, {exc.ename})"
    text = str(exc).strip()
    # Papermill's message holds the whole cell source and traceback; keep the tail.
    return text if len(text) <= limit else "..." + text[-limit:]


def _threads_per_job(jobs: int) -> int | None:
    if jobs <= 1:
        return None
    return max(1, (os.cpu_count() or 1) // jobs)


def run_grid(
    spec: str | os.PathLike | Spec,
    profile: str | None = "cpu",
    *,
    jobs: int = 1,
    executor: str = "local",
    runs_dir: str | os.PathLike | None = None,
    rerun_failed: bool = True,
    kernel_name: str = paths.KERNEL_NAME,
    timeout: int | None = None,
    progress: bool = True,
    slurm: Mapping[str, Any] | None = None,
    mlflow: bool | str = False,
) -> pd.DataFrame:
    """Run every unfinished cell of a spec; return the final :func:`status` table.

    Parameter names are checked against the notebook's parameters cell before anything
    is dispatched; finished cells are skipped; failures are recorded and the grid goes on.

    Args:
        spec: Spec name, path or :class:`~workbench.experiments.specs.Spec`.
        profile: Profile (``"cpu"``, ``"gpu"``) or ``None`` for the spec as written.
        jobs: Cells run at the same time (``>= 1``).
        executor: One of :data:`EXECUTORS`.
        runs_dir: Root of the runs folders (default ``data/runs``).
        rerun_failed: Re-run cells recorded as failed (incomplete cells always re-run).
        kernel_name: Jupyter kernel of the notebooks.
        timeout: Per-notebook-cell timeout in seconds.
        progress: Show one tqdm progress bar over the grid.
        slurm: Extra submitit parameters for ``executor="slurm"`` (e.g.
            ``{"slurm_partition": "gpu", "gpus_per_node": 1, "timeout_min": 600}``),
            merged over the spec's ``slurm:`` section.
        mlflow: Log each finished cell to MLflow (``True`` or a tracking URI); off by
            default, MLflow is imported only when enabled.

    Returns:
        The :func:`status` table after the run.

    Raises:
        ValueError: On a bad ``jobs``/``executor`` or a parameter the notebook lacks.
    """
    if executor not in EXECUTORS:
        raise ValueError(f"executor={executor!r} is not allowed; allowed: {list(EXECUTORS)}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    spec = load_spec(spec)
    cells = plan(spec, profile, runs_dir)
    # Names checked against the parameters cell before anything runs (papermill only warns).
    names = set().union(*(c.parameters for c in cells))
    notebooks.check_parameters(spec.notebook, dict.fromkeys(names))
    logger = _mlflow_logger(mlflow, spec.name) if mlflow else None

    root = spec.runs_dir(profile, runs_dir)
    io.write_json(root / SPEC_FILE, {"name": spec.name, "profile": profile,
                                     "hash": spec.hash(profile), "notebook": spec.notebook,
                                     "experiments": spec.resolve(profile),
                                     "seeds": {k: e.seeds for k, e in spec.experiments.items()},
                                     "meta": {k: e.meta for k, e in spec.experiments.items()}})
    skip = {"done"} if rerun_failed else {"done", "failed"}
    todo = [c for c in cells if c.state not in skip]

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(cells), initial=len(cells) - len(todo), unit="cell",
                   desc=f"{spec.name} [{profile or 'as written'}]", dynamic_ncols=True)
    failed = 0

    def finished(cell: Cell, record: Mapping[str, Any]) -> None:
        nonlocal failed
        if record.get("status") != "done":
            failed += 1
            if bar is not None:
                bar.write(f"FAILED {cell.experiment}/seed{cell.seed}: "
                          f"{str(record.get('error'))[-300:]} (see {record.get('notebook')})")
        elif logger is not None:
            logger(cell)
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"last {cell.experiment}/seed{cell.seed}, failed {failed}")

    kwargs = dict(kernel_name=kernel_name, timeout=timeout)
    try:
        if executor == "local" and jobs == 1:
            for cell in todo:
                if bar is not None:
                    bar.set_postfix_str(f"running {cell.experiment}/seed{cell.seed}")
                finished(cell, run_cell(cell, **kwargs))
        elif executor == "local":
            _run_pool(todo, jobs, finished, threads=_threads_per_job(jobs), **kwargs)
        else:
            params = {**spec.slurm, **dict(slurm or {})} if executor == "slurm" else {}
            _run_submitit(todo, jobs, finished, executor, root / "_submitit", params,
                          timeout=timeout, kernel_name=kernel_name)
    finally:
        if bar is not None:
            bar.close()
    return status(spec, profile, runs_dir)


def _run_pool(todo, jobs, finished, **kwargs) -> None:
    import multiprocessing as mp

    # "spawn": the workers do not inherit the parent's (possibly threaded) state.
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(run_cell, c, **kwargs): c for c in todo}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                cell = futures[fut]
                try:
                    record = fut.result()
                except Exception as exc:  # noqa: BLE001 - a dead worker is a failed cell
                    record = _record_failure(cell, exc)
                finished(cell, record)


def _record_failure(cell: Cell, exc: BaseException) -> dict[str, Any]:
    record = {**read_status(cell.directory), "status": "failed",
              "error": f"{type(exc).__name__}: {exc}", "experiment": cell.experiment,
              "seed": cell.seed, "notebook": str(Path(cell.directory) / NOTEBOOK_FILE)}
    if Path(cell.directory).is_dir():
        io.write_json(Path(cell.directory) / STATUS_FILE, record)
    return record


def _run_submitit(todo, jobs, finished, executor, folder, params, *, timeout,
                  kernel_name) -> None:
    import submitit

    folder = Path(folder)
    if executor == "slurm":
        ex = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
        params = {"timeout_min": 24 * 60, "name": "workbench-grid", **params}
    elif executor == "submitit-local":
        ex = submitit.LocalExecutor(folder=folder / "%j")
        params = {"timeout_min": 24 * 60, **params}
    else:
        ex = submitit.DebugExecutor(folder=folder / "%j")
    if params:
        ex.update_parameters(**params)
    queue = list(todo)
    running: dict[Any, Cell] = {}
    while queue or running:
        while queue and len(running) < jobs:
            cell = queue.pop(0)
            job = ex.submit(run_cell, cell, kernel_name=kernel_name, timeout=timeout)
            running[job] = cell
        for job in [j for j in running if j.done()]:
            cell = running.pop(job)
            try:
                record = job.result()
            except Exception as exc:  # noqa: BLE001 - a lost job is a failed cell
                record = _record_failure(cell, exc)
            finished(cell, record)
        if running:
            time.sleep(0.5 if executor != "slurm" else 15)


def _mlflow_logger(mlflow_opt: bool | str, experiment_name: str):
    """A callback logging a finished cell to MLflow (imported only when enabled)."""
    try:
        import mlflow
    except ImportError as exc:
        raise ImportError("mlflow logging was requested but mlflow is not installed; "
                          "`pip install mlflow` or run without --mlflow") from exc
    if isinstance(mlflow_opt, str):
        mlflow.set_tracking_uri(mlflow_opt)
    mlflow.set_experiment(experiment_name)

    def log(cell: Cell) -> None:
        records = pd.read_parquet(Path(cell.directory) / RECORDS_FILE)
        with mlflow.start_run(run_name=f"{cell.experiment}/seed{cell.seed}"):
            mlflow.log_params({k: str(v)[:250] for k, v in cell.parameters.items()})
            numeric = records.select_dtypes("number")
            for _, row in numeric.iterrows():
                step = int(row["round"]) if "round" in row else None
                mlflow.log_metrics({k: float(v) for k, v in row.items() if k != "round"},
                                   step=step)
            mlflow.log_artifact(str(Path(cell.directory) / NOTEBOOK_FILE))

    return log


grid_status = status  # exported as workbench.grid_status
