"""Run an experiment grid: every (experiment, seed) of a spec through papermill.

Each cell runs the spec's notebook into ``data/runs/<spec hash>/<experiment>/seed<k>/``;
every file name there comes from :mod:`workbench.experiments.running.runs` (``notebook.ipynb``,
``params.json``, ``status.json``, ``checkpoints/``, the tables, ``manifest.json`` and
``records.parquet``, written last by :func:`workbench.experiments.running.runs.write_run`).

**A cell is finished if and only if** :func:`workbench.experiments.running.runs.is_complete`
(records exist, parse, are non-empty and match the manifest). A re-run skips finished
cells. An unfinished cell is **resumed, not emptied**: its ``checkpoints/`` folder is kept
so the notebook (``run_imp``) continues after the last finished round; only temporary
leftovers of the killed attempt (``.*.tmp`` folders of atomic writes, papermill's
converted source, the Jupyter kernel files of the dead kernel) and a stale records file
are removed. A cell recorded as *failed* restarts from round 0 (its checkpoints are
removed: a failure may come from the checkpoint itself). A cell whose notebook raises is
recorded as failed and the grid goes on.

Liveness: ``status.json`` records the host, pid and process start time of the process
running the cell. On the next :func:`status` or :func:`run_grid` a "running" cell whose
process is gone (same host) becomes ``interrupted``, with the time it was found so. The
states, the dead-owner check and the cleaning of leftovers live in
:mod:`workbench.experiments.running.cell_state`; the cell itself, running it once
(:func:`~workbench.experiments.running.cell.run_cell`) and recording a lost attempt
(:func:`~workbench.experiments.running.cell.record_failure`) live in
:mod:`workbench.experiments.running.cell`, shared with
:mod:`workbench.experiments.running.slurm`.

Budgets: before anything is dispatched, every lottery cell's plan is checked against its
training split (:func:`check_budgets`, :mod:`workbench.lottery.budget`: refused above
``max_epochs`` passes per stretch of training, with the numbers, unless
``allow_repeats``); a spec naming a token-shard folder that does not exist fails already
in :func:`plan` (so ``grid status`` says so too), naming the folder and the ``workbench
data prepare`` command.

N processes per cell: ``nproc`` > 1 (``grid run --nproc N``) runs each cell on N local
ranks (:mod:`workbench.lottery.distributed`: the notebook's kernel launches them through
torchrun's ``elastic_launch``; rank 0 writes). A rank killed by a signal leaves the cell
``interrupted`` (checkpoints kept; a re-run resumes with any N), a rank that raised
leaves it ``failed``. On SLURM the spec's ``slurm:`` section (``tasks_per_node``,
``nodes``, ``gpus_per_node``) sets the ranks (:mod:`workbench.experiments.running.slurm`).

Executors: ``"local"`` (``jobs`` worker processes; with ``jobs > 1`` each kernel gets
``cpu_count // jobs`` torch threads), ``"slurm"`` (submitit on a SLURM cluster, at most
``jobs`` cells queued at once), ``"submitit-local"`` and ``"debug"`` (submitit's local
and in-process executors, for tests and debugging).
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from workbench.core import io, paths
from workbench.experiments.design.notebook_contract import check_parameters, notebook_parameters
from workbench.experiments.design.specs import Spec, load_spec, takes_config
from workbench.experiments.running import notebooks, runs, slurm
from workbench.experiments.running.cell import Cell, record_failure, run_cell
from workbench.experiments.running.cell_state import progress_fields, read_status, refresh_state

EXECUTORS = ("local", "slurm", "submitit-local", "debug")
#: Columns of :func:`status` read from a cell's heartbeat
#: (:func:`workbench.experiments.running.cell_state.progress_fields`).
PROGRESS_COLUMNS = ("round", "step", "elapsed", "heartbeat", "doing")


def plan(spec: str | os.PathLike | Spec, profile: str | None = "cpu",
         runs_dir: str | os.PathLike | None = None) -> list[Cell]:
    """The cells of a spec under a profile, in spec order (experiment-major).

    Args:
        spec: Spec name, path or :class:`~workbench.experiments.design.specs.Spec`.
        profile: Profile name or ``None`` for the spec as written.
        runs_dir: Root of the runs folders (default ``data/runs``).
    """
    spec = load_spec(spec)
    root = spec.runs_dir(profile, runs_dir)
    config_mode = _takes_config(spec.notebook)
    if config_mode:
        _check_shard_folders(spec.resolve(profile))
    cells = []
    for name, params in spec.resolve(profile).items():
        for seed in spec.experiments[name].seeds:
            d = runs.run_dir(root, name, seed)
            if config_mode:  # notebook 04: one config dict of schema fields + the run folder
                full = {"run_dir": str(d),
                        "config": {**params, "experiment": name, "seed": seed}}
            else:  # flat parameters (fixture notebooks)
                full = {**params, "experiment": name, "seed": seed, "output_dir": str(d)}
            cells.append(Cell(name, seed, spec.notebook, full, d))
    return cells


def _check_shard_folders(resolved: Mapping[str, Mapping[str, Any]]) -> None:
    """A corpus that names a token-shard folder must exist (cheap; before any model)."""
    # Imported on use: these modules load torch.
    from workbench.core.shards import shard_folder
    from workbench.lottery import budget

    for name, params in resolved.items():
        corpus = params.get("corpus")
        if isinstance(corpus, str) and budget.looks_like_shards(corpus) \
                and not shard_folder(corpus).is_dir():
            raise FileNotFoundError(f"experiment {name}: " + budget.missing_shards_message(corpus))


def cell_world_size(executor: str, nproc: int, slurm: Mapping[str, Any] | None) -> int:
    """Ranks per cell: ``nproc`` locally; ``tasks_per_node * nodes`` on SLURM."""
    if executor == "slurm":
        params = dict(slurm or {})
        return int(params.get("tasks_per_node", 1)) * int(params.get("nodes", 1))
    return int(nproc)


def check_budgets(cells: list[Cell], world_size: int = 1, *,
                  allow_repeats: bool = False) -> list[dict[str, Any]]:
    """Check every lottery cell's token budget before anything runs
    (:func:`workbench.lottery.budget.check_budget`); the training split is tokenized once
    per (model, corpus, seq_len), without building a model where possible.

    Returns:
        One dict per lottery cell: experiment, seed and the plan's numbers.

    Raises:
        workbench.lottery.budget.BudgetExceeded: Naming every refused cell's numbers.
    """
    # Imported on use: the lottery modules load torch.
    from workbench.lottery import budget
    from workbench.lottery.schema import IMPConfig

    sizes: dict[tuple, int] = {}
    rows, refused = [], []
    for c in cells:
        if "config" not in c.parameters:
            continue
        cfg = IMPConfig.from_params(c.parameters["config"])
        key = (cfg.model, cfg.corpus, cfg.seq_len)
        if key not in sizes:
            sizes[key] = budget.train_split_tokens(cfg)
        plan_ = budget.plan_budget(cfg, sizes[key], world_size)
        rows.append(dict(experiment=c.experiment, seed=c.seed, **vars(plan_)))
        if plan_.exceeds and not allow_repeats:
            refused.append((c.experiment, budget.budget_message(cfg, plan_)))
    if refused:
        first = list({exp: msg for exp, msg in reversed(refused)}.values())[::-1]
        more = f" (showing the first seed of each of {len(first)} experiments)"
        raise budget.BudgetExceeded(f"{len(refused)} of {len(rows)} cells refused before "
                                    f"anything ran{more}: " + " | ".join(first[:4]))
    return rows


def _takes_config(notebook: str | os.PathLike) -> bool:
    """Does the notebook take ``run_dir`` + ``config`` (see
    :func:`workbench.experiments.design.specs.takes_config`)? ``False`` when it cannot be read."""
    try:
        return takes_config(notebook_parameters(notebook))
    except (FileNotFoundError, ValueError):
        return False


def status(spec: str | os.PathLike | Spec, profile: str | None = "cpu",
           runs_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """One row per cell: experiment, seed, state, seconds, error, notebook, directory,
    resumed_from_checkpoint, interrupted_found.

    A "running" cell whose process is gone is marked ``interrupted`` in its
    ``status.json`` (see :func:`refresh_state`).
    """
    rows = []
    for c in plan(spec, profile, runs_dir):
        state = refresh_state(c.directory)
        st = read_status(c.directory)
        rows.append({"experiment": c.experiment, "seed": c.seed, "state": state,
                     "seconds": st.get("seconds"), "error": st.get("error"),
                     "notebook": st.get("notebook"), "directory": str(c.directory),
                     "resumed": st.get("resumed"),
                     "interrupted_found": st.get("interrupted_found"),
                     **progress_fields(c.directory)})
    return pd.DataFrame(rows, columns=["experiment", "seed", "state", "seconds", "error",
                                       "notebook", "directory", "resumed",
                                       "interrupted_found", *PROGRESS_COLUMNS])


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
    nproc: int = 1,
    allow_repeats: bool = False,
) -> pd.DataFrame:
    """Run every unfinished cell of a spec; return the final :func:`status` table.

    Parameter names are checked against the notebook's parameters cell before anything
    is dispatched; finished cells are skipped; failures are recorded and the grid goes on.

    Args:
        spec: Spec name, path or :class:`~workbench.experiments.design.specs.Spec`.
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
        nproc: Ranks per cell on the local executors (``torch.distributed``, DDP); on
            SLURM the spec's ``slurm.tasks_per_node * nodes`` instead.
        allow_repeats: Run plans over ``max_epochs`` anyway (the findings say so).

    Returns:
        The :func:`status` table after the run.

    Raises:
        ValueError: On a bad ``jobs``/``executor``/``nproc`` or a parameter the notebook
            lacks.
        workbench.lottery.budget.BudgetExceeded: A plan over ``max_epochs`` (before
            anything runs).
    """
    if executor not in EXECUTORS:
        raise ValueError(f"executor={executor!r} is not allowed; allowed: {list(EXECUTORS)}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc must be a positive integer, got {nproc!r}")
    if nproc > 1 and executor == "slurm":
        raise ValueError("nproc is for the local executors; on SLURM set tasks_per_node "
                         "(and nodes, gpus_per_node) in the spec's slurm: section")
    spec = load_spec(spec)
    cells = plan(spec, profile, runs_dir)
    # Names checked against the parameters cell before anything runs (papermill only warns).
    for c in cells:  # names and declared types, each cell's values
        check_parameters(spec.notebook, c.parameters)
    slurm_params = {**spec.slurm, **dict(slurm or {})}
    world = cell_world_size(executor, nproc, slurm_params)
    check_budgets(cells, world, allow_repeats=allow_repeats)
    logger = _mlflow_logger(mlflow, spec.name) if mlflow else None

    root = spec.runs_dir(profile, runs_dir)
    for leftover in root.glob(runs.ATOMIC_TEMPORARY):  # atomic writes of a killed driver
        shutil.rmtree(leftover, ignore_errors=True)
    io.write_json(root / runs.SPEC_COPY, spec.to_record(profile))
    skip = {"done", "running"} if rerun_failed else {"done", "running", "failed"}
    states = {c.directory: refresh_state(c.directory) for c in cells}
    todo = [c for c in cells if states[c.directory] not in skip]

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
    watcher = None
    if progress:  # the work inside the running cells, from their heartbeat files
        watcher = notebooks.HeartbeatBars(lambda: {
            f"{c.experiment}/seed{c.seed}": Path(c.directory) / runs.HEARTBEAT for c in todo
            if read_status(c.directory).get("status") == "running"}, position=1).start()
    if nproc > 1:
        kwargs["nproc"] = nproc
    if allow_repeats:
        kwargs["allow_repeats"] = True
    try:
        if executor == "local" and jobs == 1:
            for cell in todo:
                if bar is not None:
                    bar.set_postfix_str(f"running {cell.experiment}/seed{cell.seed}")
                finished(cell, run_cell(cell, **kwargs))
        elif executor == "local":
            _run_pool(todo, jobs, finished, threads=_threads_per_job(jobs), **kwargs)
        else:
            params = slurm_params if executor == "slurm" else {}
            _run_submitit(todo, jobs, finished, executor, root / runs.SUBMITIT_DIR, params,
                          timeout=timeout, kernel_name=kernel_name, cells=cells,
                          allow_repeats=allow_repeats, nproc=nproc)
    finally:
        if watcher is not None:
            watcher.stop()
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
                    record = record_failure(cell, exc)
                finished(cell, record)


def _run_submitit(todo, jobs, finished, executor, folder, params, *, timeout,
                  kernel_name, cells=(), allow_repeats=False, nproc=1) -> None:
    import submitit

    folder = Path(folder)
    if executor == "slurm":  # leases, adoption, threads: workbench.experiments.running.slurm
        return slurm.drive(todo, jobs, finished, folder, params, cells=cells,
                           kernel_name=kernel_name, timeout=timeout,
                           allow_repeats=allow_repeats)
    if executor == "submitit-local":
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
            job = ex.submit(run_cell, cell, kernel_name=kernel_name, timeout=timeout,
                            nproc=nproc, allow_repeats=allow_repeats)
            running[job] = cell
        for job in [j for j in running if j.done()]:
            cell = running.pop(job)
            try:
                record = job.result()
            except Exception as exc:  # noqa: BLE001 - a lost job is a failed cell
                record = record_failure(cell, exc)
            finished(cell, record)
        if running:
            time.sleep(0.5)


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
        records = pd.read_parquet(Path(cell.directory) / runs.RECORDS)
        with mlflow.start_run(run_name=f"{cell.experiment}/seed{cell.seed}"):
            mlflow.log_params({k: str(v)[:250] for k, v in cell.parameters.items()})
            numeric = records.select_dtypes("number")
            for _, row in numeric.iterrows():
                step = int(row["round"]) if "round" in row else None
                mlflow.log_metrics({k: float(v) for k, v in row.items() if k != "round"},
                                   step=step)
            mlflow.log_artifact(str(Path(cell.directory) / runs.NOTEBOOK))

    return log

