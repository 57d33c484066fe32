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
from workbench.core.version import PACKAGE_DIR, __version__


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


def _git(*args: str, cwd: str | os.PathLike | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=paths.ROOT if cwd is None else cwd, capture_output=True,
            text=True, timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_version(package: str | os.PathLike | None = None) -> dict[str, Any]:
    """Git state of the checkout the package was imported from.

    The commit is resolved from the package's own folder: the enclosing work tree is used
    only if it *tracks* the package's ``__init__.py`` (an installed copy inside some other
    repository, e.g. a virtual environment kept in a project folder, does not count).

    Args:
        package: The package folder (default :data:`workbench.core.version.PACKAGE_DIR`).

    Returns:
        ``git_commit`` (full hash, ``None`` when the package is not in a git checkout or
        git is missing), ``git_dirty`` (tracked files modified; ``None`` with no
        commit) and ``git_root`` (the work tree, ``None`` likewise).
    """
    pkg = Path(package) if package is not None else PACKAGE_DIR
    none = {"git_commit": None, "git_dirty": None, "git_root": None}
    root = _git("rev-parse", "--show-toplevel", cwd=pkg) if pkg.is_dir() else None
    if not root:
        return none
    init = (pkg / "__init__.py").resolve()
    try:
        rel = init.relative_to(Path(root).resolve())
    except ValueError:
        return none
    if _git("ls-files", "--error-unmatch", str(rel), cwd=root) is None:
        return none
    commit = _git("rev-parse", "HEAD", cwd=root)
    if not commit:
        return none
    status = _git("status", "--porcelain", "--untracked-files=no", cwd=root)
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status),
            "git_root": str(root)}


def accelerator_versions() -> dict[str, Any]:
    """CUDA and cuDNN as PyTorch sees them (``None`` where absent).

    ``cuda``: the CUDA version PyTorch was built with (``torch.version.cuda``; ``None``
    on CPU-only builds); ``cuda_available``: whether a CUDA device can be used now;
    ``cudnn``: ``torch.backends.cudnn.version()`` (e.g. 90100 for 9.1.0; ``None`` when
    cuDNN is not available); ``gpu_count``.
    """
    cudnn = None
    try:
        if torch.backends.cudnn.is_available():
            cudnn = torch.backends.cudnn.version()
    except (RuntimeError, AttributeError):
        cudnn = None
    available = torch.cuda.is_available()
    return {"cuda": torch.version.cuda, "cuda_available": available, "cudnn": cudnn,
            "gpu_count": torch.cuda.device_count() if available else 0}


def environment_record() -> dict[str, Any]:
    """Versions, hardware and code state, as a JSON-serialisable dict.

    Keys: ``python``, ``platform``, ``torch``, ``cuda`` / ``cuda_available`` / ``cudnn``
    / ``gpu_count`` (:func:`accelerator_versions`), ``transformers``, ``numpy``,
    ``workbench`` (the imported package's ``__version__``) and ``workbench_path`` (its
    folder), ``device``, ``git_commit`` / ``git_dirty`` / ``git_root`` of the workbench
    checkout (:func:`code_version`, from the package location, so a run launched from any
    folder or with ``WORKBENCH_HOME`` elsewhere still records it) and ``time_utc``.
    """
    import transformers

    acc = accelerator_versions()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        **acc,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "workbench": __version__,
        "workbench_path": str(PACKAGE_DIR),
        "device": (torch.cuda.get_device_name(0) if acc["cuda_available"]
                   else f"cpu ({os.cpu_count()} cores)"),
        **code_version(),
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
