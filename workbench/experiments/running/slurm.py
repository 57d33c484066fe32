"""SLURM cells exactly once: leases, their adoption and release, and the driver loop.

The grid (:mod:`workbench.experiments.running.grid`, ``executor="slurm"``) submits each cell
as one submitit job through :func:`drive`. This module makes that safe to interrupt and
re-run; it runs a cell with :mod:`workbench.experiments.running.cell` and never imports the
grid:

**Lease.** A cell handed to SLURM carries ``lease.json``
(:data:`~workbench.experiments.running.runs.LEASE`) in its folder:
the job id, the job name, the submitit folder, the submitting host and process and the
submit time; the job adds its execution host, pid and start time when it starts. Every
read-modify-write of the lease happens under an exclusive ``fcntl.flock`` on the cell's
``.lease.lock`` (:data:`~workbench.experiments.running.runs.LOCK`), shared by the drivers
and the jobs.

**Driver** (:func:`acquire`, called for every unfinished cell before it is submitted):

* a lease whose job the scheduler reports as active (pending, running, completing,
  requeued, suspended, ...: :data:`workbench.experiments.running.scheduler.ACTIVE_STATES`) is
  **adopted**: the driver waits for that job instead of submitting another;
* a lease whose job is dead (``COMPLETED`` without a finished cell, ``FAILED``,
  ``CANCELLED``, ``TIMEOUT``, ``NODE_FAIL``, ``OUT_OF_MEMORY``, ``PREEMPTED``,
  ``BOOT_FAIL``, ``DEADLINE``) or that the scheduler no longer knows (``UNKNOWN``) is
  **released** (the file is removed) and the cell is submitted once more;
* a cell without a lease is also checked by its job name (:func:`job_name`, unique per
  cell folder): a job submitted by a driver killed before it wrote the lease is adopted
  too; otherwise the cell is submitted and the lease written while the lock is held.

**Job** (:func:`run_leased_cell`, what the driver submits): before it touches the folder
it claims the lease under the lock. If the lease names another job that is still active,
this job is a duplicate: it returns ``{"status": "duplicate", ...}`` and leaves the folder
alone (it never cleans or writes anything there). Otherwise it writes its own id, host
and start time into the lease, runs :func:`workbench.experiments.running.cell.run_cell` and
removes the lease when the cell ends (done or failed; both recorded in ``status.json``).
Its torch/OpenMP/MKL threads are capped to its CPU allocation
(:func:`workbench.experiments.running.scheduler.allocated_cpus`).

**Multi-task jobs** (one cell on N ranks: the spec's ``slurm:`` section with
``tasks_per_node`` x ``nodes`` > 1, usually ``gpus_per_node`` = ``tasks_per_node``):
submitit starts one task per rank, each running :func:`run_leased_cell`. Every task
exports the torch.distributed environment first (``submitit.helpers.
TorchDistributedEnvironment().export()``: ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT``). Task 0 does everything above (lease, cleaning, status,
the notebook, whose kernel inherits the environment and joins as rank 0); the other tasks
wait until the lease names their job (else they are duplicates and leave), then run
:func:`workbench.lottery.cell.run` as their rank, forbidden to write into the cell
folder (:func:`workbench.lottery.distributed.forbid_writes_under`).

Job states come from a :class:`workbench.experiments.running.scheduler.Scheduler` (``squeue``,
then ``sacct``). A scheduler that cannot be asked raises
:class:`~workbench.experiments.running.scheduler.SchedulerError`: a lease is never released on a
guess.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from workbench.core import io
from workbench.experiments.running import cell as grid_cell
from workbench.experiments.running import runs
from workbench.experiments.running.cell_state import read_status
from workbench.experiments.running.scheduler import (Scheduler, SchedulerError, SlurmScheduler,
                                                     allocated_cpus, current_job_id, is_active,
                                                     limit_threads)


# ----------------------------------------------------------------------------- lease
def job_name(directory: str | os.PathLike) -> str:
    """SLURM job name of a cell: ``wb-<experiment>-<seed folder>-<10 hex digits>``.

    The digits hash the absolute cell folder, so the name is unique per cell (two grids,
    two profiles or two runs folders never share one) and ``squeue -n`` finds the jobs of
    a cell even when its lease was never written.
    """
    d = Path(directory).resolve()
    digest = hashlib.sha1(str(d).encode()).hexdigest()[:10]
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{d.parent.name}-{d.name}")[:60]
    return f"wb-{label}-{digest}"


def read_lease(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The cell's lease (``None`` when there is none or it does not parse)."""
    return runs.read_json(Path(directory) / runs.LEASE) or None


def _write_lease(directory: Path, lease: Mapping[str, Any]) -> None:
    io.write_json(directory / runs.LEASE, dict(lease))


def _drop_lease(directory: Path) -> None:
    (directory / runs.LEASE).unlink(missing_ok=True)


@contextlib.contextmanager
def cell_lock(directory: str | os.PathLike) -> Iterator[None]:
    """Exclusive ``flock`` on the cell's :data:`~workbench.experiments.running.runs.LOCK`
    (creates the folder if needed)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / runs.LOCK, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def acquire(directory: str | os.PathLike, submit: Callable[[str], Any],
            scheduler: Scheduler, *, folder: str | os.PathLike | None = None
            ) -> tuple[str, Any, dict[str, Any] | None]:
    """Adopt the cell's job in flight, or submit one and write its lease.

    Runs under :func:`cell_lock`. See the module docstring for the rules.

    Args:
        directory: The cell folder.
        submit: ``submit(job_name) -> job``; the job must have a ``job_id`` attribute.
            Called only when no job of this cell is active.
        scheduler: Where job states come from (:class:`SlurmScheduler`).
        folder: The submitit folder (recorded in the lease, so another driver can read
            the job's result).

    Returns:
        ``(action, value, released)``: ``("adopted", job_id, released)`` for a job in
        flight, ``("submitted", job, released)`` for a new job; ``released`` is the
        stale lease that was released, or ``None``.

    Raises:
        SchedulerError: If the scheduler cannot be asked (nothing is released then).
    """
    d = Path(directory)
    name = job_name(d)
    released = None
    with cell_lock(d):
        lease = read_lease(d)
        if lease is not None and lease.get("job_id"):
            state = scheduler.state(str(lease["job_id"]))
            if is_active(state):
                return "adopted", str(lease["job_id"]), None
            released = {**lease, "state": state, "released": _now()}
            _drop_lease(d)
        elif lease is not None:  # unreadable job id: a lease without a job is no lease
            released = {**lease, "state": "UNKNOWN", "released": _now()}
            _drop_lease(d)
        if runs.is_complete(d):  # its job finished since the grid looked
            return "done", None, released
        in_flight = scheduler.active_jobs(name)
        if in_flight:  # submitted by a driver that died before writing the lease
            job_id = in_flight[0]
            _write_lease(d, {"job_id": job_id, "job_name": name, "folder": _str(folder),
                             "submit_host": None, "submitted": None, "found": _now()})
            return "adopted", job_id, released
        job = submit(name)
        _write_lease(d, {"job_id": str(job.job_id), "job_name": name, "folder": _str(folder),
                         "submit_host": socket.gethostname(), "submit_pid": os.getpid(),
                         "submitted": _now()})
        return "submitted", job, released


def _str(p: str | os.PathLike | None) -> str | None:
    return None if p is None else str(p)


def claim(directory: str | os.PathLike, job_id: str, scheduler: Scheduler) -> dict[str, Any] | None:
    """Claim the cell for job ``job_id`` (inside the job, before touching the folder).

    Returns:
        The lease now held (with ``host``, ``pid`` and ``started`` of this job), or
        ``None`` when the lease names another job that is still active: this job is a
        duplicate and must leave the folder alone.
    """
    d = Path(directory)
    job_id = str(job_id)
    with cell_lock(d):
        lease = read_lease(d) or {}
        other = str(lease.get("job_id") or "")
        if other and other != job_id and is_active(scheduler.state(other)):
            return None
        base = lease if other == job_id else {"job_name": job_name(d), "taken_over": other or None}
        held = {**base, "job_id": job_id, "host": socket.gethostname(), "pid": os.getpid(),
                "started": _now()}
        _write_lease(d, held)
        return held


def release(directory: str | os.PathLike, job_id: str) -> bool:
    """Remove the lease if it is held by ``job_id`` (the job's last step); True if removed."""
    d = Path(directory)
    with cell_lock(d):
        lease = read_lease(d)
        if lease is not None and str(lease.get("job_id")) == str(job_id):
            _drop_lease(d)
            return True
    return False


def lease_alive(directory: str | os.PathLike, scheduler: Scheduler | None = None) -> bool | None:
    """Is the job named in the cell's lease still pending or running?

    ``None`` when the cell has no lease (or it names no job) or the scheduler cannot be
    asked; for :func:`workbench.experiments.running.cell_state.cell_state` to tell a dead
    SLURM cell on another host from a running one.
    """
    lease = read_lease(directory)
    if not lease or not lease.get("job_id"):
        return None
    try:
        return is_active((scheduler or SlurmScheduler()).state(str(lease["job_id"])))
    except SchedulerError:
        return None


# ----------------------------------------------------------------------------- job
def run_leased_cell(cell: grid_cell.Cell, *, scheduler: Scheduler | None = None,
                    **kwargs: Any) -> dict[str, Any]:
    """What a SLURM job runs: claim the lease, cap threads, run the cell, release.

    Args:
        cell: A :class:`workbench.experiments.running.cell.Cell`.
        scheduler: Default :class:`SlurmScheduler`.
        **kwargs: Passed to :func:`workbench.experiments.running.cell.run_cell`
            (``kernel_name``, ``timeout``); ``threads`` is set from :func:`allocated_cpus`.

    Returns:
        The record of ``run_cell`` (with ``slurm_job_id``), or ``{"status": "duplicate",
        "job_id": <the job in flight>, ...}`` when another job holds the cell.
    """
    scheduler = scheduler or SlurmScheduler()
    job_id = current_job_id() or f"local-{socket.gethostname()}-{os.getpid()}"
    d = Path(cell.directory)
    task = _export_distributed_env()
    if task > 0:
        return _run_other_rank(cell, job_id, task)
    held = claim(d, job_id, scheduler)
    if held is None:
        lease = read_lease(d) or {}
        return {"status": "duplicate", "experiment": cell.experiment, "seed": cell.seed,
                "job_id": lease.get("job_id"), "duplicate_job_id": job_id}
    threads = allocated_cpus()
    limit_threads(threads)
    try:
        record = grid_cell.run_cell(cell, threads=threads, **kwargs)
    finally:
        release(d, job_id)
    return {**record, "slurm_job_id": job_id}


def _export_distributed_env(environ: Mapping[str, str] | None = None) -> int:
    """In a multi-task SLURM job, export the torch.distributed variables of this task
    (submitit's ``TorchDistributedEnvironment``) and return its rank; 0 otherwise."""
    env = os.environ if environ is None else environ
    if int(env.get("SLURM_NTASKS", "1") or 1) <= 1:
        return 0
    from submitit.helpers import TorchDistributedEnvironment

    dist_env = TorchDistributedEnvironment().export()
    return int(dist_env.rank)


def _run_other_rank(cell: grid_cell.Cell, job_id: str, task: int, *, wait_s: float = 600.0,
                    poll: float = 1.0) -> dict[str, Any]:
    """Rank ``task`` > 0 of a multi-task job: wait for task 0 to hold the lease, then run
    the cell's IMP as this rank (no writes into the folder)."""
    # Imported on use: the lottery modules load torch, which the driver does not need.
    from workbench.lottery import cell as lottery_cell
    from workbench.lottery.distributed import forbid_writes_under

    d = Path(cell.directory)
    deadline = time.monotonic() + wait_s
    while str((read_lease(d) or {}).get("job_id")) != job_id or not (d / runs.PARAMS).exists():
        if time.monotonic() > deadline:
            return {"status": "duplicate", "experiment": cell.experiment, "seed": cell.seed,
                    "job_id": (read_lease(d) or {}).get("job_id"), "rank": task}
        time.sleep(poll)
    limit_threads(allocated_cpus())
    forbid_writes_under(d)
    lottery_cell.run(cell.parameters["config"], d, progress=False, nproc=1)
    return {"status": "done", "experiment": cell.experiment, "seed": cell.seed, "rank": task,
            "slurm_job_id": job_id}


# ----------------------------------------------------------------------------- driver
def adopt(directory: str | os.PathLike, scheduler: Scheduler
          ) -> tuple[str | None, dict[str, Any] | None]:
    """Look at a cell's lease only: ``(job_id, None)`` if its job is active, else
    ``(None, released_lease)`` (the stale lease removed) or ``(None, None)`` (no lease).

    Raises:
        SchedulerError: If the scheduler cannot be asked (nothing is released then).
    """
    d = Path(directory)
    if not (d / runs.LEASE).exists():
        return None, None
    with cell_lock(d):
        lease = read_lease(d)
        if lease is None:
            _drop_lease(d)
            return None, None
        state = scheduler.state(str(lease["job_id"])) if lease.get("job_id") else "UNKNOWN"
        if is_active(state):
            return str(lease["job_id"]), None
        _drop_lease(d)
        return None, {**lease, "state": state, "released": _now()}


def drive(todo: list, jobs: int, finished: Callable[[Any, Mapping[str, Any]], None],
          folder: str | os.PathLike, params: Mapping[str, Any], *, cells: list = (),
          kernel_name: str, timeout: int | None, scheduler: Scheduler | None = None,
          executor: Any = None, job_class: Any = None, poll: float = 1.0,
          allow_repeats: bool = False) -> None:
    """Run cells as SLURM jobs, exactly once (the ``executor="slurm"`` path of the grid).

    First every cell with a lease is looked at (:func:`adopt`): jobs in flight are
    adopted and waited for, stale leases released. Then the remaining cells are submitted
    through :func:`acquire` (which adopts a job found by name and never submits a second
    job for a cell), at most ``jobs`` of them queued or running at once. A job that turns
    out to be a duplicate hands over to the job holding the lease, which is then waited
    for.

    Args:
        todo: Unfinished :class:`~workbench.experiments.running.cell.Cell` objects to run.
        jobs: Jobs queued or running at once (adopted jobs count).
        finished: ``finished(cell, record)``, called once per cell when its job ends.
        folder: The submitit folder (``<grid>/_submitit``); each job in ``<folder>/<id>``.
        params: submitit parameters (``timeout_min`` defaults to 24 h); the job name is
            set per cell (:func:`job_name`).
        cells: Every cell of the grid: those not in ``todo`` that carry a lease (a job of
            an earlier driver may still run them) are adopted or released too.
        kernel_name, timeout: Passed to :func:`workbench.experiments.running.cell.run_cell`.
        scheduler: Default :class:`SlurmScheduler`.
        executor: A submitit executor (default ``submitit.AutoExecutor(cluster="slurm")``).
        job_class: Builds a job handle from ``(folder=..., job_id=...)`` for adopted jobs
            (default ``submitit.SlurmJob``).
        poll: Seconds between checks of the result files (submitit rate-limits its own
            ``sacct`` calls).
        allow_repeats: Let cells run plans over ``max_epochs``.
    """
    log = logging.getLogger(__name__)
    scheduler = scheduler or SlurmScheduler()
    pattern = Path(folder) / "%j"
    if executor is None or job_class is None:
        import submitit

        if executor is None:
            executor = submitit.AutoExecutor(folder=pattern, cluster="slurm")
            executor.update_parameters(**{"timeout_min": 24 * 60, **dict(params)})
        job_class = job_class or submitit.SlurmJob
    in_todo = {id(c) for c in todo}
    leased = [c for c in cells
              if id(c) not in in_todo and (Path(c.directory) / runs.LEASE).exists()]
    running: dict[str, tuple[Any, Any]] = {}  # job id -> (job handle, cell)
    queue = []

    def handle(job_id: str, lease_folder: str | None):
        return job_class(folder=lease_folder or pattern, job_id=job_id)

    for cell in list(todo) + leased:
        job_id, released = adopt(cell.directory, scheduler)
        if job_id is not None:
            log.info("adopting job %s of %s/seed%s", job_id, cell.experiment, cell.seed)
            running[job_id] = (handle(job_id, (read_lease(cell.directory) or {}).get("folder")),
                               cell)
            continue
        if released is not None:
            log.warning("released the stale lease of %s/seed%s: job %s is %s",
                        cell.experiment, cell.seed, released.get("job_id"), released["state"])
        queue.append(cell)

    def submitter(cell):
        def submit(name: str):
            executor.update_parameters(name=name)
            extra = {"allow_repeats": True} if allow_repeats else {}
            return executor.submit(run_leased_cell, cell, kernel_name=kernel_name,
                                   timeout=timeout, **extra)
        return submit

    while queue or running:
        while queue and len(running) < jobs:
            cell = queue.pop(0)
            action, value, released = acquire(cell.directory, submitter(cell), scheduler,
                                              folder=pattern)
            if released is not None:
                log.warning("released the stale lease of %s/seed%s: job %s is %s",
                            cell.experiment, cell.seed, released.get("job_id"),
                            released["state"])
            if action == "done":
                finished(cell, {**read_status(cell.directory), "status": "done"})
            elif action == "adopted":
                running[value] = (handle(value, None), cell)
            else:
                running[str(value.job_id)] = (value, cell)
        for job_id in [j for j, (job, _) in running.items() if job.done()]:
            job, cell = running.pop(job_id)
            try:
                record = job.result()
            except Exception as exc:  # noqa: BLE001 - a lost job is a failed cell...
                holder = (read_lease(cell.directory) or {}).get("job_id")
                if holder and str(holder) != job_id:  # ...unless another job holds it now
                    record = {"status": "duplicate", "job_id": str(holder)}
                else:
                    record = grid_cell.record_failure(cell, exc)
            if record.get("status") == "duplicate":
                holder = record.get("job_id")
                if holder and holder not in running and is_active(scheduler.state(holder)):
                    log.info("job %s was a duplicate; waiting for job %s", job_id, holder)
                    lease_folder = (read_lease(cell.directory) or {}).get("folder")
                    running[str(holder)] = (handle(str(holder), lease_folder), cell)
                elif not holder or holder not in running:
                    queue.append(cell)  # the holder ended meanwhile: acquire decides
                continue
            finished(cell, record)
        if running:
            time.sleep(poll)
