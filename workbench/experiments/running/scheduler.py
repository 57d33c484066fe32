"""Asking SLURM about jobs, and capping a job's threads to its CPU allocation.

**Scheduler.** :class:`Scheduler` is what the lease logic of
:mod:`workbench.experiments.running.slurm` needs: the state of a job id and the active jobs of a
job name. :class:`SlurmScheduler` reads states with ``squeue`` (active jobs; needs only
``slurmctld``) and then ``sacct`` (finished jobs; needs ``slurmdbd`` accounting, see
``scripts/slurm_up.sh``). A job is active (:func:`is_active`) in one of
:data:`ACTIVE_STATES` (pending, running, completing, requeued, suspended, ...). A
scheduler that cannot be asked raises :class:`SchedulerError`, never a guessed state: a
lease is never released on a guess.

**Threads.** A job limits torch/OpenMP/MKL threads to its CPU allocation
(:func:`allocated_cpus`, :func:`limit_threads`): ``SLURM_CPUS_PER_TASK``, else the job's
CPUs on the node over its tasks, never more than the CPUs the process may run on
(``os.sched_getaffinity``). On a node without CPU binding (``TaskPlugin=task/none``) the
affinity is the whole node, and without this limit two jobs oversubscribe it (about 5x
slower in the report of issue 13). :func:`current_job_id` names the job a process runs in.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Callable, Mapping, Protocol

#: SLURM job states of a job that is queued or still holds its allocation.
ACTIVE_STATES = frozenset({
    "PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD",
    "REQUEUE_FED", "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "STOPPED",
})
#: Environment variables that cap the threads of the kernel a job starts.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class SchedulerError(RuntimeError):
    """The scheduler could not be asked (command missing, controller not answering)."""


class Scheduler(Protocol):
    """What the lease logic needs from a scheduler (a fake one in the tests)."""

    def state(self, job_id: str) -> str:
        """Upper-case SLURM state of a job (``"UNKNOWN"`` when the scheduler has no record)."""

    def active_jobs(self, name: str) -> list[str]:
        """Ids of the active jobs named ``name``, oldest first."""


# ----------------------------------------------------------------------------- scheduler
class SlurmScheduler:
    """Job states from ``squeue`` (active jobs) and ``sacct`` (finished jobs).

    Args:
        run: ``subprocess.run`` (replaceable in tests).
        timeout: Seconds allowed to each command.
    """

    def __init__(self, run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
                 timeout: float = 60.0) -> None:
        self._run = run
        self._timeout = timeout

    def _call(self, args: list[str]) -> subprocess.CompletedProcess:
        try:
            return self._run(args, capture_output=True, text=True, timeout=self._timeout)
        except FileNotFoundError as exc:
            raise SchedulerError(f"{args[0]} is not installed: cannot ask SLURM about jobs") from exc
        except subprocess.TimeoutExpired as exc:
            raise SchedulerError(f"{' '.join(args)} did not answer in {self._timeout} s") from exc

    def state(self, job_id: str) -> str:
        """State of ``job_id``: ``squeue`` first, then ``sacct``; ``"UNKNOWN"`` if neither
        knows it.

        Raises:
            SchedulerError: If ``squeue`` fails for another reason than an unknown job id
                (controller down), or ``sacct`` fails (no accounting).
        """
        job_id = str(job_id)
        q = self._call(["squeue", "-h", "-j", job_id, "-o", "%T"])
        if q.returncode == 0 and q.stdout.strip():
            return _first_state(q.stdout)
        if q.returncode != 0 and "invalid job id" not in (q.stderr or "").lower():
            raise SchedulerError(f"squeue -j {job_id} failed: {(q.stderr or '').strip()}")
        a = self._call(["sacct", "-j", job_id, "-n", "-X", "-P", "-o", "State"])
        if a.returncode != 0:
            raise SchedulerError(f"sacct -j {job_id} failed: {(a.stderr or '').strip()} "
                                 "(is slurmdbd accounting set up? see scripts/slurm_up.sh)")
        return _first_state(a.stdout) if a.stdout.strip() else "UNKNOWN"

    def active_jobs(self, name: str) -> list[str]:
        """Ids of pending/running jobs named ``name`` (``squeue -n``), oldest first."""
        q = self._call(["squeue", "-h", "-n", name, "-o", "%i"])
        if q.returncode != 0:
            raise SchedulerError(f"squeue -n {name} failed: {(q.stderr or '').strip()}")
        return sorted(q.stdout.split(), key=_job_sort_key)


def _first_state(text: str) -> str:
    """``"CANCELLED by 0"`` -> ``"CANCELLED"``; first line of the output."""
    line = text.strip().splitlines()[0].strip()
    return (line.split()[0] if line else "UNKNOWN").upper().rstrip("+")


def _job_sort_key(job_id: str) -> tuple[int, str]:
    head = job_id.split("_")[0]
    return (int(head) if head.isdigit() else sys.maxsize, job_id)


def is_active(state: str) -> bool:
    """Is a job in this state queued or running (see :data:`ACTIVE_STATES`)?"""
    return state.upper() in ACTIVE_STATES


# ----------------------------------------------------------------------------- threads
def allocated_cpus(environ: Mapping[str, str] | None = None,
                   affinity: int | None = None) -> int:
    """CPUs this job may use (>= 1).

    ``SLURM_CPUS_PER_TASK`` when set; else the job's CPUs on this node
    (``SLURM_JOB_CPUS_PER_NODE``, first entry of e.g. ``"4(x2)"``) divided by its tasks
    on the node (``SLURM_NTASKS_PER_NODE``, else ``SLURM_NTASKS``); never more than the
    CPUs in ``os.sched_getaffinity(0)``. Outside SLURM: the affinity.

    Args:
        environ: Environment (default ``os.environ``).
        affinity: CPUs the process may run on (default ``len(os.sched_getaffinity(0))``).
    """
    env = os.environ if environ is None else environ
    if affinity is None:
        try:
            affinity = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # not Linux
            affinity = os.cpu_count() or 1
    cpus = _leading_int(env.get("SLURM_CPUS_PER_TASK"))
    if cpus is None:
        node = _leading_int(env.get("SLURM_JOB_CPUS_PER_NODE"))
        tasks = (_leading_int(env.get("SLURM_NTASKS_PER_NODE"))
                 or _leading_int(env.get("SLURM_NTASKS")) or 1)
        cpus = None if node is None else node // tasks
    return max(1, min(cpus or affinity, affinity))


def _leading_int(value: str | None) -> int | None:
    m = re.match(r"\s*(\d+)", value or "")
    return int(m.group(1)) if m else None


def limit_threads(threads: int) -> None:
    """Cap this process's threads and those of kernels it starts to ``threads``.

    Sets :data:`THREAD_VARIABLES` (read by torch, OpenMP and MKL when a kernel starts)
    and, when torch is already imported here, ``torch.set_num_threads``.
    """
    for var in THREAD_VARIABLES:
        os.environ[var] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- job
def current_job_id() -> str | None:
    """The SLURM job id of this process (array jobs: ``<array id>_<task>``), else None."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")
