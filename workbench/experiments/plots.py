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
import numpy as np

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

from workbench.core import io

from workbench.core import paths

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
    # metrics (axis labels)
    "val_ppl": ("#000000", "validation perplexity"),
    "train_loss": ("#000000", "training loss"),
    "sw_survival": ("#000000", "super-weight survival rate"),
    "sw_value_drift": ("#000000", "super-weight value drift"),
    "mask_jaccard_prev": ("#000000", "mask Jaccard vs previous round"),
    "sparsity": ("#000000", "sparsity"),
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


# ----------------------------------------------------------------------------- grid figures


def _axes(ax, figsize=(4.8, 3.4)):
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    return ax.figure, ax


def _check_columns(df, columns, what: str) -> None:
    missing = [c for c in columns if c not in df]
    if missing:
        raise ValueError(f"{what}: columns {missing} are missing; available: {list(df)}")


def plot_sparsity_curve(df, metric: str = "val_ppl", *, x: str = "sparsity",
                        hue: str = "experiment", ax=None, logy: bool | None = None,
                        seeds: bool = True, ylabel: str | None = None):
    """Metric vs sparsity: mean ± sd over seeds per round, individual seeds overlaid.

    On a log axis (perplexities) the centre is the geometric mean and the bar spans the
    geometric mean times/divided by the geometric standard deviation, so it stays positive.

    Args:
        df: Runs (one row per experiment, seed, round), e.g. from
            :func:`workbench.experiments.aggregate.load_runs`.
        metric: Column on the y axis (``"val_ppl"``, ``"sw_survival"``, ...).
        x: Column on the x axis (fraction of weights pruned).
        hue: Column that separates the curves; colours/labels from :data:`STYLE`.
        ax: Axes to draw into (a new figure when ``None``).
        logy: Log y axis (default: on for perplexities).
        seeds: Overlay each seed as a faint line.
        ylabel: Axis label (default: the metric).

    Returns:
        ``(fig, ax)``.
    """
    _check_columns(df, [metric, x, hue, "seed", "round"], "plot_sparsity_curve")
    log = logy if logy is not None else "ppl" in metric
    fig, ax = _axes(ax)
    for key, part in df.groupby(hue, sort=True):
        c = color(str(key))
        if seeds:
            for _, run in part.groupby("seed"):
                run = run.sort_values("round")
                ax.plot(run[x], run[metric], color=c, alpha=0.3, lw=0.8, marker=".", ms=3)
        g = part.groupby("round")
        n = part["seed"].nunique()
        if log:  # geometric mean, error bar x/÷ the geometric sd (sd of log10 values)
            lg = np.log10(part[metric].astype(float)).groupby(part["round"])
            mid, sd = 10 ** lg.mean(), lg.std(ddof=1).fillna(0)
            yerr = np.vstack([mid - mid / 10 ** sd, mid * 10 ** sd - mid])
        else:
            mid, yerr = g[metric].mean(), g[metric].std(ddof=1).fillna(0)
        ax.errorbar(g[x].mean(), mid, yerr=yerr, color=c, marker="o", ms=4, lw=1.6,
                    capsize=3, label=f"{label(str(key))} (n={n})")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("sparsity (fraction of weights pruned)" if x == "sparsity" else x)
    ax.set_ylabel(ylabel or label(metric))
    ax.legend(fontsize=7, frameon=False)
    return fig, ax


def plot_sw_survival(df, *, x: str = "sparsity", hue: str = "experiment", ax=None,
                     seeds: bool = True):
    """Super-weight survival rate (fraction of super weights kept) vs sparsity.

    Same layout as :func:`plot_sparsity_curve` on the ``sw_survival`` column, y in [0, 1].

    Returns:
        ``(fig, ax)``.
    """
    fig, ax = plot_sparsity_curve(df, "sw_survival", x=x, hue=hue, ax=ax, logy=False,
                                  seeds=seeds, ylabel="super-weight survival rate")
    ax.set_ylim(-0.03, 1.05)
    return fig, ax


def plot_loss_curves(losses, *, hue: str = "experiment", ax=None, seeds: bool = True):
    """Training loss per step, rounds laid end to end, mean over seeds (seeds faint).

    Args:
        losses: Rows ``experiment, seed, round, step, loss`` (``step`` counts within a
            round), e.g. ``load_runs(..., table="losses")``.
        hue: Column that separates the curves.
        ax: Axes (a new figure when ``None``).
        seeds: Overlay each seed as a faint line.

    Returns:
        ``(fig, ax)``; dotted vertical lines mark the pruning between rounds.
    """
    _check_columns(losses, [hue, "seed", "round", "step", "loss"], "plot_loss_curves")
    fig, ax = _axes(ax, figsize=(6.0, 3.4))
    df = losses.copy()
    per_round = df.groupby([hue, "round"])["step"].max() + 1
    offsets = per_round.groupby(level=0).cumsum() - per_round
    df["global_step"] = df["step"] + [offsets[(h, r)] for h, r in zip(df[hue], df["round"])]
    bounds = set()
    for key, part in df.groupby(hue, sort=True):
        c = color(str(key))
        if seeds:
            for _, run in part.groupby("seed"):
                for _, rnd in run.groupby("round"):
                    rnd = rnd.sort_values("global_step")
                    ax.plot(rnd["global_step"], rnd["loss"], color=c, alpha=0.25, lw=0.7)
        mean = part.groupby(["round", "global_step"])["loss"].mean().reset_index()
        for i, (_, rnd) in enumerate(mean.groupby("round")):
            ax.plot(rnd["global_step"], rnd["loss"], color=c, lw=1.6, marker="." if
                    len(rnd) < 20 else None, label=label(str(key)) if i == 0 else None)
        bounds.update(part.groupby("round")["global_step"].min().tolist()[1:])
    for b in sorted(bounds):
        ax.axvline(b - 0.5, color="0.6", ls=":", lw=0.8)
    ax.set_xlabel("training step (rounds laid end to end; dotted: pruning)")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=7, frameon=False)
    return fig, ax


def plot_fisher_comparison(true, empirical, *, names: tuple[str, str] = ("true_fisher",
                                                                         "empirical_fisher"),
                           axes=None):
    """True vs empirical Fisher from given arrays of the same shape.

    Left: scatter of the entries (log-log on magnitudes) against the diagonal ``y = x``,
    with the Pearson correlation of the logs and the relative Frobenius difference
    ``||E - F|| / ||F||``. Right: the two spectra (sorted magnitudes, largest first).

    Args:
        true: True Fisher (diagonal, matrix or any array), values >= 0 on the diagonal.
        empirical: Empirical Fisher, same shape.
        names: STYLE keys of the two (colours and labels).
        axes: Two axes (a new 1x2 figure when ``None``).

    Returns:
        ``(fig, axes)``.

    Raises:
        ValueError: If the shapes differ or the arrays are empty.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    f = np.asarray(true, dtype=float).ravel()
    e = np.asarray(empirical, dtype=float).ravel()
    if np.shape(true) != np.shape(empirical) or f.size == 0:
        raise ValueError(f"true and empirical must have the same non-empty shape, got "
                         f"{np.shape(true)} and {np.shape(empirical)}")
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(8.0, 3.4))
    fig = axes[0].figure
    af, ae = np.abs(f), np.abs(e)
    ok = (af > 0) & (ae > 0)
    rel = np.linalg.norm(e - f) / max(np.linalg.norm(f), np.finfo(float).tiny)
    r = np.corrcoef(np.log(af[ok]), np.log(ae[ok]))[0, 1] if ok.sum() > 2 else float("nan")
    ax = axes[0]
    ax.scatter(af[ok], ae[ok], s=6, alpha=0.5, color=color(names[1]), lw=0)
    if ok.any():
        lo, hi = min(af[ok].min(), ae[ok].min()), max(af[ok].max(), ae[ok].max())
        ax.plot([lo, hi], [lo, hi], color="0.3", lw=0.8, ls="--", label="y = x")
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel(f"|{label(names[0])}| entry")
    ax.set_ylabel(f"|{label(names[1])}| entry")
    ax.set_title(f"r(log) = {r:.3f}, rel. diff = {rel:.3f}", fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    ax = axes[1]
    for key, v in zip(names, (af, ae)):
        ax.plot(np.arange(1, v.size + 1), np.sort(v)[::-1], color=color(key), label=label(key))
    ax.set_yscale("log")
    ax.set_xscale("log")
    ax.set_xlabel("rank")
    ax.set_ylabel("magnitude (sorted)")
    ax.legend(fontsize=7, frameon=False)
    return fig, axes
