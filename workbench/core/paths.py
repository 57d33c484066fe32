"""Every filesystem location the workbench uses, in one place.

All paths derive from :data:`ROOT`, the repository root, unless the environment
variable ``WORKBENCH_HOME`` points somewhere else (useful when the package is
installed outside a checkout). Caches (models, corpora) and outputs (runs) live under
``data/`` and are ignored by git; experiment specs under ``data/experiments/`` are
tracked.

Relative paths that a user or a notebook parameter gives (``output_dir="data/runs/x"``)
mean "relative to the project root", whatever the working directory (JupyterLab starts
kernels in ``notebooks/``, papermill in the caller's folder): pass them through
:func:`resolve`.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(os.environ.get("WORKBENCH_HOME", Path(__file__).resolve().parents[2]))
DATA_DIR = ROOT / "data"
MODELS_DIR = DATA_DIR / "models"
CORPORA_DIR = DATA_DIR / "corpora"
RUNS_DIR = DATA_DIR / "runs"
EXPERIMENTS_DIR = DATA_DIR / "experiments"
FIGURES_DIR = ROOT / "figures"
NOTEBOOKS_DIR = ROOT / "notebooks"

#: Name of the Jupyter kernel the Makefile registers inside ``.venv``.
KERNEL_NAME = "workbench"


def figure_path(name: str) -> Path:
    """Return ``figures/<name>`` (no suffix handling), creating the folder."""
    FIGURES_DIR.mkdir(parents=True, exist_ok=True)
    return FIGURES_DIR / name


def resolve(path: str | os.PathLike) -> Path:
    """Return ``path`` as an absolute path, reading a relative one against :data:`ROOT`.

    ``~`` is expanded; absolute paths are returned unchanged. Nothing is created.

    Raises:
        TypeError: ``path`` not a string or ``os.PathLike``.
        ValueError: ``path`` empty.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__} {path!r}")
    text = os.fspath(path)
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"path must be a non-empty path, got {path!r}")
    p = Path(text).expanduser()
    return p if p.is_absolute() else ROOT / p
