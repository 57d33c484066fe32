"""Figures: one style, one method/experiment -> colour map, one save helper.

Every figure of the workbench goes through :func:`save_figure`, which writes a PDF with
embedded TrueType (Type 42) fonts and a 300-dpi PNG to ``figures/``. Colours and labels
come from :data:`STYLE` (Okabe-Ito colour-blind-safe palette), so a method keeps its
colour across notebooks and papers; unknown keys get a stable colour from the same
palette by hashing the name.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import matplotlib

matplotlib.rcParams.update(
    {
        "pdf.fonttype": 42,
        "ps.fonttype": 42,
        "savefig.bbox": "tight",
        "figure.dpi": 100,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "font.size": 10,
    }
)

from . import io, paths  # noqa: E402

#: Okabe-Ito palette (colour-blind safe).
PALETTE = (
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#009E73",  # bluish green
    "#CC79A7",  # reddish purple
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#F0E442",  # yellow
    "#000000",  # black
)

#: Fixed key -> (colour, label). Keys are data keys (stable); labels are for display.
STYLE: dict[str, tuple[str, str]] = {
    # importance kinds / pruning methods
    "magnitude": ("#0072B2", "Magnitude"),
    "magnitude-global": ("#0072B2", "Magnitude (global)"),
    "magnitude-layer": ("#56B4E9", "Magnitude (layer)"),
    "wanda": ("#D55E00", "Wanda"),
    "wanda+correction": ("#E69F00", "Wanda + correction"),
    "sparsegpt": ("#E69F00", "SparseGPT"),
    "gradprobe": ("#009E73", "Gradient probe"),
    "gradient_norm": ("#CC79A7", "Gradient norm"),
    "taylor": ("#009E73", "Taylor"),
    "fisher": ("#CC79A7", "Fisher (OBD)"),
    "hybrid": ("#000000", "Hybrid"),
    "dense": ("#000000", "Dense"),
    # curvature
    "true_fisher": ("#0072B2", "True Fisher"),
    "empirical_fisher": ("#D55E00", "Empirical Fisher"),
    "ggn": ("#009E73", "GGN"),
    "hessian": ("#CC79A7", "Hessian"),
    "kfac": ("#E69F00", "K-FAC"),
    # lottery-ticket experiments (seed 002 table)
    "A1": ("#56B4E9", "A1 pre-trained 3k 10%"),
    "A2": ("#0072B2", "A2 pre-trained 3k 20%"),
    "B1": ("#009E73", "B1 pre-trained 10k 10%"),
    "B2": ("#006D4F", "B2 pre-trained 10k 20%"),
    "C1": ("#E69F00", "C1 Xavier 10k 10%"),
    "C2": ("#B07800", "C2 Xavier 10k 20%"),
    "D1": ("#D55E00", "D1 gradual global"),
    "D2": ("#A04500", "D2 gradual layerwise"),
    "E1": ("#CC79A7", "E1 Kaiming 10k 10%"),
    "E2": ("#9E4F80", "E2 Kaiming 10k 20%"),
    "F1": ("#F0E442", "F1 Xavier 20k 20%"),
    "G1": ("#555555", "G1 pre-trained 10k 15%"),
    "H1": ("#000000", "H1 Xavier + LR warmup/decay"),
    "I1": ("#882255", "I1 one-shot 20%"),
    "control-positive": ("#999999", "Positive control (no pruning)"),
    "control-negative": ("#333333", "Negative control (aggressive)"),
}


def color(key: str) -> str:
    """Colour of ``key``; unknown keys get a stable palette colour from a hash."""
    if key in STYLE:
        return STYLE[key][0]
    digest = int(hashlib.md5(str(key).encode()).hexdigest(), 16)
    return PALETTE[digest % len(PALETTE)]


def label(key: str) -> str:
    """Display label of ``key`` (the key itself when unknown)."""
    return STYLE[key][1] if key in STYLE else str(key)


def save_figure(fig, name: str, *, folder: str | os.PathLike | None = None) -> dict[str, Path]:
    """Write ``fig`` as ``<name>.pdf`` (TrueType fonts) and ``<name>.png`` (300 dpi).

    Files are written atomically to ``folder`` (default ``figures/``).

    Returns:
        ``{"pdf": path, "png": path}``.
    """
    folder = Path(folder) if folder is not None else paths.FIGURES_DIR
    stem = Path(name).stem if Path(name).suffix in (".pdf", ".png") else name
    out = {}
    for ext, kwargs in (("pdf", {}), ("png", {"dpi": 300})):
        target = folder / f"{stem}.{ext}"
        with io.atomic_path(target) as tmp:
            fig.savefig(tmp, format=ext, bbox_inches="tight", **kwargs)
        out[ext] = target
    return out
