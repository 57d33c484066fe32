"""Figures: one style, one colour per name, one save helper.

Every figure of the workbench goes through :func:`save_figure`, which applies the house
style (:func:`apply_style`: no top/right spines, light grid, plain log tick labels such as
``20`` instead of ``2×10^1``) and writes a PDF with embedded TrueType (Type 42) fonts and
a 300-dpi PNG. Importing this module changes no matplotlib setting.

**Colours follow names, never order.** :func:`style` gives every name (a pruning method,
a score kind, an experiment id, a curve key) the same colour, marker and line style in
every figure and in the explorer: the registered methods and score kinds (and the
curvature matrices ``hessian``, ``ggn``, ``empirical_fisher``, ``true_fisher``) have
fixed slots of the colour-blind-safe :data:`PALETTE` (:data:`NAMED`), any other name
takes the slot of a stable hash of its text (SHA-1, not Python's salted ``hash``), so an
experiment is the same colour whichever figure, spec order or subset it is drawn in. Two
names may share a colour; their markers and line styles (hashed independently) still
tell them apart, so identical curves drawn on top of each other stay visible. A spec's
``color:`` / ``label:`` keys win over the defaults; controls (``reference: true``) are
grey reference lines.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from workbench.core import io

from workbench.core import paths

#: Colour-blind-safe palette: Okabe & Ito (2008), then Paul Tol's "muted" scheme.
PALETTE = ("#0072B2", "#D55E00", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#000000",
           "#882255", "#44AA99", "#999933", "#332288", "#AA4499", "#DDCC77", "#117733")
#: Fixed palette slots of the registered pruning methods / score kinds and the dense model,
#: of the curvature matrices (``CURVATURE_MATRICES`` names; they never share a figure with
#: the methods, so they reuse slots) and of the Fisher ranks of the percolation figure.
NAMED: dict[str, int] = {
    "magnitude": 0, "wanda": 1, "wanda_obs": 2, "taylor": 3, "gradient_norm": 4,
    "gradprobe": 5, "dense": 6, "obd_empirical": 7, "obd_true": 8, "wanda_prac": 9,
    "sparsegpt": 10, "obs_kfac": 11, "hybrid": 12,
    "true_fisher": 0, "empirical_fisher": 1, "ggn": 3, "hessian": 4,
    "top": 1, "random": 9, "bottom": 0,
}
#: Markers and line styles (cycled by slot / hashed for other names).
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", "-.", ":")
#: Palette slots a hashed name may take (black is the dense model's).
_HASHED_SLOTS = tuple(i for i in range(len(PALETTE)) if PALETTE[i] != "#000000")

#: Axis labels of known metrics (display only; any other column shows its name).
METRIC_LABELS: dict[str, str] = {
    "val_ppl": "validation perplexity",
    "val_nll": "validation NLL (nats/token, log perplexity)",
    "train_loss": "training loss",
    "sw_survival": "super-weight survival rate",
    "sw_value_drift": "super-weight value drift",
    "mask_jaccard_prev": "mask Jaccard vs previous round",
    "sparsity": "sparsity (fraction of weights pruned)",
    "zeroshot_acc": "zero-shot accuracy",
}
#: Colour of reference (control) experiments.
REFERENCE_COLOR = "#777777"
#: What the error bars of :func:`plot_sparsity_curve` mean (legend titles).
BAR_MEANING = {"log": "geometric mean ×/÷ geometric sd over seeds",
               "linear": "mean ± sd over seeds"}

Style = tuple[str, str]  # (colour, label)


class Look(NamedTuple):
    """How a name is drawn: ``color``, ``marker``, ``linestyle`` and ``label``."""

    color: str
    marker: str
    linestyle: str
    label: str


def _digest(name: str) -> int:
    return int(hashlib.sha1(str(name).encode()).hexdigest(), 16)


def style(name: str, label: str | None = None) -> Look:
    """The fixed look of ``name`` (module docstring): registered names take their slot
    of :data:`NAMED`, any other a slot from a stable hash of the text.

    Args:
        name: A method, score kind, experiment id or curve key (``"wanda/owl"`` takes
            the look of ``wanda``, dashed).
        label: Display label (default ``name``).
    """
    name = str(name)
    base, _, variant = name.partition("/")
    if base in NAMED:
        slot = NAMED[base]
        look = Look(PALETTE[slot], MARKERS[slot % len(MARKERS)],
                    "-" if variant in ("", "uniform") else "--", label or name)
        return look
    h = _digest(name)
    return Look(PALETTE[_HASHED_SLOTS[h % len(_HASHED_SLOTS)]],
                MARKERS[(h // 97) % len(MARKERS)], LINESTYLES[(h // 9973) % len(LINESTYLES)],
                label or name)


def method_style(name: str) -> Style:
    """``(colour, label)`` of a pruning method or score kind: the colour of
    :func:`style`, the label from the pruning registries.

    Raises:
        ValueError: For an unregistered name (listing the registered ones).
    """
    from workbench.pruning.registry import METHODS, SCORE_KINDS

    registry = METHODS if name in METHODS or name not in SCORE_KINDS else SCORE_KINDS
    entry = registry.get(name)
    return (style(name).color, entry.props.get("label") or name)


def experiment_styles(keys, spec=None) -> dict[str, Style]:
    """``{key: (colour, label)}`` for the curves of a figure.

    Args:
        keys: The hue values (experiment ids).
        spec: A :class:`~workbench.experiments.design.specs.Spec` (or ``None``): an
            experiment's ``color:``/``label:`` keys win; otherwise the colour of
            :func:`style` (by name: the same in every figure, whatever the order).

    Returns:
        The style of every key (controls marked ``reference: true`` are grey).
    """
    refs = set(spec.references()) if spec is not None else set()
    out = {}
    for key in map(str, keys):
        meta = spec.experiments[key].meta if spec is not None and key in spec.experiments else {}
        default = REFERENCE_COLOR if key in refs else style(key).color
        out[key] = (meta.get("color") or default, str(meta.get("label") or key))
    return out


def metric_label(metric: str) -> str:
    """Axis label of a metric (the column name when unknown)."""
    return METRIC_LABELS.get(metric, metric)


#: Settings in force while a figure is written (fonts embedded as TrueType, not Type 3).
SAVE_RC = {"pdf.fonttype": 42, "ps.fonttype": 42, "savefig.bbox": "tight"}


def _plain(value: float, _pos=None) -> str:
    """A tick label without powers of ten: ``20``, ``0.05``, ``1.5e+06`` only past 1e6."""
    if value == 0 or not np.isfinite(value):
        return "0" if value == 0 else ""
    return f"{value:.6g}" if 1e-4 <= abs(value) < 1e6 else f"{value:.2g}"


def apply_style(fig) -> None:
    """The house style on every axes of ``fig``: top/right spines off, a light grid and
    plain tick labels on log axes (``20``, ``50``, ``100``: no ``2×10^1``)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for ax in fig.get_axes():
        if not ax.get_label() == "<colorbar>":
            ax.spines["top"].set_visible(False)
            ax.spines["right"].set_visible(False)
            ax.grid(True, alpha=0.3, lw=0.6)
        for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
            if scale != "log":
                continue
            lo, hi = sorted(abs(v) for v in (ax.get_xlim() if axis is ax.xaxis
                                            else ax.get_ylim()))
            decades = np.log10(max(hi, 1e-300)) - np.log10(max(lo, 1e-300))
            axis.set_major_formatter(FuncFormatter(_plain))
            if decades < 1.5:  # a short range: label 1-2-5 steps, no minor labels
                axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            axis.set_minor_formatter(NullFormatter())


def save_figure(fig, name: str, *, folder: str | os.PathLike | None = None) -> dict[str, Path]:
    """Apply the house style (:func:`apply_style`) and write ``fig`` as ``<name>.pdf``
    (TrueType fonts) and ``<name>.png`` (300 dpi).

    Files are written atomically to ``folder`` (default ``figures/``).

    Returns:
        ``{"pdf": path, "png": path}``.
    """
    import matplotlib

    folder = Path(folder) if folder is not None else paths.FIGURES_DIR
    stem = Path(name).stem if Path(name).suffix in (".pdf", ".png") else name
    apply_style(fig)
    out = {}
    with matplotlib.rc_context(SAVE_RC):
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
                        seeds: bool = True, ylabel: str | None = None, spec=None,
                        styles: dict[str, Style] | None = None,
                        references=None, title: str | None = None):
    """Metric vs sparsity: mean ± sd over seeds per round, individual seeds overlaid.

    On a log axis (perplexities) the centre is the geometric mean and the bar spans the
    geometric mean times/divided by the geometric standard deviation, so it stays positive.

    Args:
        df: Runs (one row per experiment, seed, round), e.g. from
            :func:`workbench.experiments.analysis.aggregate.load_runs`.
        metric: Column on the y axis (``"val_ppl"``, ``"sw_survival"``, ...).
        x: Column on the x axis (fraction of weights pruned).
        hue: Column that separates the curves.
        ax: Axes to draw into (a new figure when ``None``).
        logy: Log y axis (default: on for perplexities).
        seeds: Overlay each seed as a faint line.
        ylabel: Axis label (default: :func:`metric_label`).
        spec: The spec the runs belong to (labels, colours, controls).
        styles: Explicit ``{key: (colour, label)}`` (default :func:`experiment_styles`).
        references: Experiments drawn as reference lines instead of curves (default:
            the spec's ``reference: true`` experiments). One that never leaves sparsity 0
            (a positive control) is a horizontal dashed line at its last round's mean;
            any other is a dashed grey curve.
        title: Axes title (e.g. the profile and real steps per round).

    Returns:
        ``(fig, ax)``.
    """
    _check_columns(df, [metric, x, hue, "seed", "round"], "plot_sparsity_curve")
    log = logy if logy is not None else "ppl" in metric
    fig, ax = _axes(ax)
    keys = [str(k) for k in df[hue].drop_duplicates()]
    if spec is not None:
        keys = sorted(keys, key=lambda k: (list(spec.experiments).index(k)
                                           if k in spec.experiments else len(keys), k))
    else:
        keys = sorted(keys)
    styles = {**experiment_styles(keys, spec), **dict(styles or {})}
    refs = set(references if references is not None else
               (spec.references() if spec is not None else ()))
    for key in keys:
        part = df[df[hue].astype(str) == key]
        c, lab = styles[key]
        look = style(key)
        n = part["seed"].nunique()
        if key in refs:
            _reference_line(ax, part, metric, x, c, f"{lab} (n={n})", log)
            continue
        if seeds:
            for _, run in part.groupby("seed"):
                run = run.sort_values("round")
                ax.plot(run[x], run[metric], color=c, alpha=0.3, lw=0.8, marker=".", ms=3,
                        ls=look.linestyle)
        g = part.groupby("round")
        mid, yerr = _centre_and_bars(part, metric, log)
        # marker and line style by name: identical curves drawn over each other stay
        # visible (hollow markers of different shapes, different dashes)
        ax.errorbar(g[x].mean(), mid, yerr=yerr, color=c, marker=look.marker, ms=5,
                    mfc="none", mew=1.2, lw=1.4, ls=look.linestyle, capsize=3,
                    label=f"{lab} (n={n})")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(metric_label(x))
    ax.set_ylabel(ylabel or metric_label(metric))
    if title:
        ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7, frameon=False, title=bar_meaning(log), title_fontsize=7)
    return fig, ax


def bar_meaning(log: bool) -> str:
    """Legend title saying what the error bars are (:data:`BAR_MEANING`)."""
    return "bars: " + BAR_MEANING["log" if log else "linear"]


def _centre_and_bars(part, metric: str, log: bool):
    g = part.groupby("round")
    if log:  # geometric mean, error bar x/÷ the geometric sd (sd of log10 values)
        lg = np.log10(part[metric].astype(float)).groupby(part["round"])
        mid, sd = 10 ** lg.mean(), lg.std(ddof=1).fillna(0)
        return mid, np.vstack([mid - mid / 10 ** sd, mid * 10 ** sd - mid])
    return g[metric].mean(), g[metric].std(ddof=1).fillna(0)


def _reference_line(ax, part, metric: str, x: str, c: str, label: str, log: bool) -> None:
    """A control as a reference: horizontal line (never pruned) or dashed curve."""
    if float(part[x].astype(float).abs().max()) < 1e-9:
        last = part[part["round"] == part["round"].max()][metric].astype(float)
        value = float(10 ** np.log10(last).mean()) if log else float(last.mean())
        ax.axhline(value, color=c, ls="--", lw=1.2, label=label)
        return
    mid, _ = _centre_and_bars(part, metric, log)
    ax.plot(part.groupby("round")[x].mean(), mid, color=c, ls="--", lw=1.2, marker="x",
            ms=4, label=label)


def plot_sw_survival(df, *, x: str = "sparsity", hue: str = "experiment", ax=None,
                     seeds: bool = True, **kwargs):
    """Super-weight survival rate (fraction of super weights kept) vs sparsity.

    Same layout as :func:`plot_sparsity_curve` on the ``sw_survival`` column, y in [0, 1];
    ``kwargs`` (``spec``, ``styles``, ``references``, ``title``) are passed on.

    Returns:
        ``(fig, ax)``.
    """
    fig, ax = plot_sparsity_curve(df, "sw_survival", x=x, hue=hue, ax=ax, logy=False,
                                  seeds=seeds, **kwargs)
    ax.set_ylim(-0.03, 1.05)
    return fig, ax


def plot_loss_curves(losses, *, hue: str = "experiment", ax=None, seeds: bool = True,
                     spec=None, title: str | None = None):
    """Training loss per step, rounds laid end to end, mean over seeds (seeds faint).

    Args:
        losses: Rows ``experiment, seed, round, step, loss`` (``step`` counts within a
            round), e.g. ``load_runs(..., table="losses")``.
        hue: Column that separates the curves.
        ax: Axes (a new figure when ``None``).
        seeds: Overlay each seed as a faint line.
        spec: The spec (labels and colours, :func:`experiment_styles`).
        title: Axes title (e.g. the profile and real steps per round).

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
    styles = experiment_styles(sorted(df[hue].astype(str).unique()), spec)
    for key, part in df.groupby(hue, sort=True):
        c, lab = styles[str(key)]
        if seeds:
            for _, run in part.groupby("seed"):
                for _, rnd in run.groupby("round"):
                    rnd = rnd.sort_values("global_step")
                    ax.plot(rnd["global_step"], rnd["loss"], color=c, alpha=0.25, lw=0.7)
        mean = part.groupby(["round", "global_step"])["loss"].mean().reset_index()
        look = style(str(key))
        for i, (_, rnd) in enumerate(mean.groupby("round")):
            ax.plot(rnd["global_step"], rnd["loss"], color=c, lw=1.6, ls=look.linestyle,
                    marker=look.marker if len(rnd) < 20 else None, mfc="none", ms=4,
                    label=lab if i == 0 else None)
        bounds.update(part.groupby("round")["global_step"].min().tolist()[1:])
    for b in sorted(bounds):
        ax.axvline(b - 0.5, color="0.6", ls=":", lw=0.8)
    ax.set_xlabel("training step (rounds laid end to end; dotted: pruning)")
    ax.set_ylabel("training loss (mean over seeds; faint: each seed)")
    if title:
        ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7, frameon=False)
    return fig, ax


def plot_fisher_comparison(true, empirical, *, names: tuple[str, str] = ("true Fisher",
                                                                         "empirical Fisher"),
                           axes=None):
    """True vs empirical Fisher from given arrays of the same shape.

    Left: scatter of the entries (log-log on magnitudes) against the diagonal ``y = x``,
    with the Pearson correlation of the logs and the relative Frobenius difference
    ``||E - F|| / ||F||``. Right: the two spectra (sorted magnitudes, largest first).

    Args:
        true: True Fisher (diagonal, matrix or any array), values >= 0 on the diagonal.
        empirical: Empirical Fisher, same shape.
        names: Labels of the two (colours: :func:`style` of each label).
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
    colors = {k: style(k).color for k in names}
    ax.scatter(af[ok], ae[ok], s=6, alpha=0.5, color=colors[names[1]], lw=0)
    if ok.any():
        lo, hi = min(af[ok].min(), ae[ok].min()), max(af[ok].max(), ae[ok].max())
        ax.plot([lo, hi], [lo, hi], color="0.3", lw=0.8, ls="--", label="y = x")
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel(f"|{names[0]}| entry")
    ax.set_ylabel(f"|{names[1]}| entry")
    ax.set_title(f"r(log) = {r:.3f}, rel. diff = {rel:.3f}", fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    ax = axes[1]
    for key, v in zip(names, (af, ae)):
        ax.plot(np.arange(1, v.size + 1), np.sort(v)[::-1], color=colors[key], label=key)
    ax.set_yscale("log")
    ax.set_xscale("log")
    ax.set_xlabel("rank")
    ax.set_ylabel("magnitude (sorted)")
    ax.legend(fontsize=7, frameon=False)
    return fig, axes
