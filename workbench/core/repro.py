"""Reproducibility: seeding and the environment manifest written beside every result."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import random
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from workbench.core import io, paths
from workbench.core.checks import check_range


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    """Seed Python, NumPy and PyTorch (CPU and all CUDA devices).

    Args:
        seed: Non-negative integer seed.
        deterministic: Also ask PyTorch for deterministic kernels (slower on CUDA).

    Raises:
        TypeError: ``seed`` not an integer (bools refused), ``deterministic`` not a bool.
        ValueError: ``seed`` negative.
    """
    if isinstance(seed, np.integer):
        seed = int(seed)
    check_range("seed", seed, 0, integer=True)
    if not isinstance(deterministic, bool):
        raise TypeError(f"deterministic must be True or False, got {deterministic!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=paths.ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def environment_record() -> dict[str, Any]:
    """Versions, hardware and code state, as a JSON-serialisable dict."""
    import transformers

    cuda = torch.cuda.is_available()
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "device": torch.cuda.get_device_name(0) if cuda else f"cpu ({os.cpu_count()} cores)",
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def write_manifest(
    target: str | os.PathLike,
    *,
    seed: int | None = None,
    parameters: Mapping[str, Any] | None = None,
    **extra: Any,
) -> Path:
    """Atomically write ``{environment, seed, parameters, **extra}`` as JSON to ``target``.

    Args:
        target: Path of the JSON file (typically ``<run dir>/manifest.json``).
        seed: The run's seed.
        parameters: The run's parameters (what a reader needs to redo it).
        **extra: Anything else worth keeping (timings, result summary).

    Returns:
        The path written.

    Raises:
        TypeError: ``target`` not a path, ``parameters`` not a mapping.
    """
    if not isinstance(target, (str, os.PathLike)):
        raise TypeError(f"target must be a file path, got {type(target).__name__}")
    if seed is not None:
        check_range("seed", int(seed) if isinstance(seed, np.integer) else seed, 0,
                    integer=True)
    if parameters is not None and not isinstance(parameters, Mapping):
        raise TypeError(f"parameters must be a mapping (dict), got {type(parameters).__name__}")
    record = {
        "environment": environment_record(),
        "seed": seed,
        "parameters": dict(parameters or {}),
        **extra,
    }
    return io.write_json(Path(target), record)
