"""Every filesystem location the workbench uses, in one place.

All paths derive from :data:`ROOT`, the repository root, unless the environment
variable ``WORKBENCH_HOME`` points somewhere else (useful when the package is
installed outside a checkout). Caches (models, corpora) and outputs (runs) live under
``data/`` and are ignored by git; experiment specs under ``data/experiments/`` are
tracked.
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
