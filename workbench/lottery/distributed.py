"""One lottery cell on N processes: torch.distributed (DDP) set-up, launch and rules.

How a cell runs on N processes (:func:`workbench.lottery.cell.run`):

* **Locally** (``workbench grid run SPEC --nproc N``; the grid passes N to the notebook's
  kernel in the environment variable :data:`NPROC_ENV`): notebook 04 runs under
  papermill as for one process; its kernel's ``run`` is the *launcher*: it starts N
  worker processes through :func:`launch` (``torch.distributed.launcher.elastic_launch``,
  the API behind ``torchrun`` / ``torch.distributed.run``, standalone rendezvous on a
  free local port, no restarts). Every worker runs ``python -m workbench.lottery.rank``
  (:func:`workbench.lottery.rank.main`): the same ``run`` as rank k of N.
  When they are done the kernel reads the finished run back from the checkpoint rank 0
  wrote (``run_imp`` returns a completed checkpoint without training) and the notebook
  writes the tables and the executed notebook as for one process.
* **On SLURM** (the spec's ``slurm:`` section with ``tasks_per_node`` > 1 or ``nodes`` >
  1): submitit starts one task per GPU and every task exports the distributed
  environment (``submitit.helpers.TorchDistributedEnvironment``); task 0 runs the
  notebook, whose kernel inherits that environment and joins as rank 0; the other tasks
  run ``run`` directly (:func:`workbench.experiments.running.slurm.run_leased_cell`).

Rules (each tested in ``tests/lottery/test_distributed.py``):

* Backend NCCL on CUDA (one GPU per rank, ``LOCAL_RANK``), gloo on CPU.
* Training is ``DistributedDataParallel`` (:func:`workbench.lottery.train.train_masked`):
  gradients are averaged across ranks by DDP's all-reduce, then the pruned entries are
  zeroed and the weights re-masked after every step on every rank.
* Masks are **computed on every rank** (same weights, same calibration tokens) **and then
  broadcast from rank 0** (:func:`broadcast_masks`), so a tie or a non-deterministic
  kernel can never give two ranks different masks.
* Only rank 0 writes (records, checkpoints; the notebook runs in rank 0's kernel or in
  the launcher): :func:`is_writer`. On the other ranks :func:`forbid_writes_under` makes
  any Python-level write into the run folder raise ``PermissionError`` (an audit hook).
* A rank killed by a signal ends the launch with :class:`RanksInterrupted` (the grid then
  records the cell ``interrupted``, keeps its checkpoints, and a re-run resumes from the
  last finished round, with any N); a rank that raised ends it with
  :class:`RanksFailed` (the cell is ``failed``).
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from typing import Any, Mapping, Sequence

import torch

#: Environment variable through which the grid asks a cell's kernel for N processes.
NPROC_ENV = "WORKBENCH_NPROC"
#: The module every launched rank runs (``python -m``; :mod:`workbench.lottery.rank`,
#: which runs the cell and so sits above this module).
RANK_MODULE = "workbench.lottery.rank"


class RanksInterrupted(RuntimeError):
    """A rank of a distributed cell was killed by a signal (the cell can resume)."""


class RanksFailed(RuntimeError):
    """A rank of a distributed cell raised an exception."""


# ----------------------------------------------------------------------------- state
def in_distributed_env() -> bool:
    """Whether this process is one rank of several (``WORLD_SIZE`` > 1 and ``RANK`` set,
    as torchrun and submitit's ``TorchDistributedEnvironment`` export them)."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """Whether a process group with more than one rank is initialised."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    import torch.distributed as dist

    return dist.get_rank() if active() else 0


def world_size() -> int:
    """Ranks in the process group (1 without one)."""
    import torch.distributed as dist

    return dist.get_world_size() if active() else 1


def is_writer() -> bool:
    """Only rank 0 writes records, checkpoints and notebooks."""
    return rank() == 0


def backend_for(device_type: str) -> str:
    """``"nccl"`` on CUDA, ``"gloo"`` otherwise."""
    return "nccl" if device_type == "cuda" else "gloo"


def init_from_env(device: str = "auto") -> bool:
    """Join the process group the environment describes (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT``; on CUDA also ``LOCAL_RANK`` picks the GPU).

    Args:
        device: The config's device (``auto``: CUDA when present).

    Returns:
        True if this call initialised the group (the caller then tears it down with
        :func:`shutdown`), False if there is nothing to join or it was already joined.
    """
    import torch.distributed as dist

    if not in_distributed_env() or dist.is_initialized():
        return False
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    elif "OMP_NUM_THREADS" not in os.environ:  # share the cores between local ranks
        local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local)))
    dist.init_process_group(backend=backend_for("cuda" if cuda else "cpu"))
    return True


def shutdown() -> None:
    """Barrier, then destroy the process group (no-op without one)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    """``dist.barrier()`` when a process group is active."""
    import torch.distributed as dist

    if active():
        dist.barrier()


def _comm_device() -> torch.device:
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_masks(masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rank 0's masks on every rank (one broadcast of all masks as one ``uint8`` vector;
    names and shapes must agree across ranks). Without a process group: unchanged."""
    if not active() or not masks:
        return dict(masks)
    import torch.distributed as dist

    names = list(masks)
    dev = _comm_device()
    flat = torch.cat([masks[n].reshape(-1).to(device=dev, dtype=torch.uint8) for n in names])
    dist.broadcast(flat, src=0)
    out, start = {}, 0
    for n in names:
        m = masks[n]
        out[n] = flat[start:start + m.numel()].view(m.shape).to(device=m.device,
                                                                dtype=torch.bool)
        start += m.numel()
    return out


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the ranks (a copy; ``values`` itself without a group)."""
    if not active():
        return values
    import torch.distributed as dist

    dev = _comm_device()
    buf = values.detach().to(dev, dtype=torch.float32, copy=True)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return (buf / dist.get_world_size()).to(values.device, dtype=values.dtype)


# ----------------------------------------------------------------------------- guards
def forbid_writes_under(folder: str | os.PathLike) -> None:
    """Make every Python-level write into ``folder`` raise ``PermissionError`` in this
    process, for good (``sys.addaudithook``: ``open`` for writing, ``os.rename``/
    ``os.replace``/``os.remove``/``os.mkdir``/``os.rmdir``/``shutil.rmtree``). Installed
    on ranks > 0, so "only rank 0 writes" is enforced, not just intended."""
    root = os.path.realpath(os.fspath(folder))
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def inside(path: Any) -> bool:
        if isinstance(path, int) or path is None:
            return False
        try:
            p = os.path.realpath(os.fsdecode(path))
        except (TypeError, ValueError):
            return False
        return p == root or p.startswith(root + os.sep)

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None, None))[:3]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and bool(flags & write_flags))
            if writing and inside(path):
                raise PermissionError(f"rank {os.environ.get('RANK')} may not write "
                                      f"{path}: only rank 0 writes into {root}")
        elif event in ("os.rename", "os.replace", "os.remove", "os.mkdir", "os.rmdir",
                       "shutil.rmtree", "os.truncate", "os.symlink", "os.link"):
            paths = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
            if any(inside(p) for p in paths):
                raise PermissionError(f"rank {os.environ.get('RANK')} may not {event} "
                                      f"{paths[0]}: only rank 0 writes into {root}")

    sys.addaudithook(hook)


# ----------------------------------------------------------------------------- launch
def launch(nproc: int, config: Mapping[str, Any], run_dir: str | os.PathLike | None, *,
           progress: bool = False, extra_args: Sequence[str] = ()) -> None:
    """Run one cell on ``nproc`` local processes (``elastic_launch``, what ``torchrun
    --standalone --nproc-per-node N`` does); returns when every rank has finished.

    Args:
        nproc: Number of ranks (>= 2).
        config: The cell's config as a plain dict (``IMPConfig.to_dict()``).
        run_dir: The cell folder (rank 0 writes its checkpoints there).
        progress: Progress bars on rank 0.
        extra_args: More arguments of :func:`workbench.lottery.rank.main` (tests).

    Raises:
        RanksInterrupted: A rank was killed by a signal (nothing raised in Python).
        RanksFailed: A rank raised (its exit code and error are in the message).
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 2:
        raise ValueError(f"nproc must be an integer >= 2 to launch ranks, got {nproc!r}")
    lc = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc,
                      run_id=f"wb-{uuid.uuid4().hex[:12]}", rdzv_backend="c10d",
                      rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.2,
                      start_method="spawn")
    args = ["-m", RANK_MODULE, "--config", json.dumps(dict(config))]
    if run_dir is not None:
        args += ["--run-dir", str(run_dir)]
    if progress:
        args.append("--progress")
    args += list(extra_args)
    try:
        elastic_launch(lc, entrypoint=sys.executable)(*args)
    except ChildFailedError as err:
        failures = err.failures
        codes = {r: f.exitcode for r, f in failures.items()}
        if codes and all(c < 0 for c in codes.values()):
            raise RanksInterrupted(
                f"rank(s) {sorted(codes)} of {nproc} were killed by a signal "
                f"({', '.join(f.signal_name() for f in failures.values())}); the cell's "
                "checkpoints are kept and a re-run resumes after the last finished round"
            ) from None
        detail = "; ".join(f"rank {r}: exit code {f.exitcode}, {f.message}"
                           for r, f in sorted(failures.items()))
        raise RanksFailed(f"a rank of the {nproc}-process cell failed: {detail}") from None
