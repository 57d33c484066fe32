"""Analysis of one-shot sweeps: summaries over seeds, paired tests, findings, figure.

Reads the rows of :func:`workbench.experiments.oneshot.oneshot_sweep` (or rows of
several grid cells concatenated, with an ``experiment`` column):

* :func:`summarize` and :func:`results_table`: mean ± sd over calibration seeds per
  curve point; perplexity as geometric mean ×/÷ geometric sd (it is summarised on its
  logarithm, ``val_nll``).
* :func:`paired_comparisons` and :func:`significance`: runs paired by calibration seed;
  perplexity tested on its logarithm (paired differences are log perplexity ratios) and
  accuracy as is, with :func:`workbench.experiments.stats.paired_test` (paired t,
  Wilcoxon, d_z, bootstrap CI) and one Holm family
  (:func:`workbench.experiments.stats.holm`).
* :func:`findings`: the significant differences in sentences.
* :func:`curve_style` and :func:`plot_oneshot`: metric vs sparsity, one panel per
  pattern, in the methods' registered colours.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

from workbench.core.checks import check_choice
from workbench.experiments import stats

#: Identifies one curve point (a method configuration at one sparsity).
KEYS = ("method", "allocation", "pattern", "sparsity")
#: Factors compared by :func:`paired_comparisons` (``experiment``: grid cells of a spec).
FACTORS = ("method", "allocation", "experiment")
#: Metrics tested by :func:`significance` and which direction is better.
METRICS = {"val_nll": "lower", "zeroshot_acc": "higher"}


# ----------------------------------------------------------------------------- summaries
def summarize(df: pd.DataFrame, *, allow_mixed_protocols: bool = False) -> pd.DataFrame:
    """Mean ± sd over seeds per curve point (and mean prune seconds).

    Perplexity is summarised on its logarithm: ``val_ppl`` is the geometric mean
    ``exp(mean(val_nll))`` and ``val_ppl_gsd`` the geometric sd ``exp(sd(val_nll))``
    (the bar is ``val_ppl`` times/divided by it), as in
    :func:`workbench.experiments.plots.plot_sparsity_curve`.

    Returns:
        One row per ``(method, allocation, pattern, sparsity)``: ``n_seeds, val_ppl,
        val_ppl_gsd, val_nll_mean, val_nll_sd, zeroshot_acc_mean, zeroshot_acc_sd,
        achieved_sparsity, prune_seconds``.

    Raises:
        ValueError: Rows evaluated on different tokens (``eval_fingerprint`` differs,
            :func:`workbench.core.protocols.check_same_protocol`) unless
            ``allow_mixed_protocols``.
    """
    from workbench.core.protocols import check_same_protocol

    check_same_protocol(df, allow_mixed=allow_mixed_protocols)
    g = df.groupby(list(KEYS), sort=False)
    out = pd.DataFrame({
        "method_label": g["method_label"].first(),
        "n_seeds": g["seed"].nunique(),
        "val_ppl": np.exp(g["val_nll"].mean()),
        "val_ppl_gsd": np.exp(g["val_nll"].std(ddof=1).fillna(0.0)),
        "val_nll_mean": g["val_nll"].mean(),
        "val_nll_sd": g["val_nll"].std(ddof=1).fillna(0.0),
        "zeroshot_acc_mean": g["zeroshot_acc"].mean(),
        "zeroshot_acc_sd": g["zeroshot_acc"].std(ddof=1).fillna(0.0),
        "achieved_sparsity": g["achieved_sparsity"].mean(),
        "prune_seconds": g["prune_seconds"].mean(),
    })
    return out.reset_index()


def results_table(df: pd.DataFrame, *, digits: int = 2,
                  allow_mixed_protocols: bool = False) -> pd.DataFrame:
    """A display table: perplexity (geometric mean ×/÷ geometric sd), accuracy mean ± sd
    (in %), prune seconds, one row per curve point (one protocol: see :func:`summarize`)."""
    s = summarize(df, allow_mixed_protocols=allow_mixed_protocols)
    out = pd.DataFrame({
        "method": s["method_label"], "allocation": s["allocation"], "pattern": s["pattern"],
        "sparsity": s["sparsity"].round(3),
        "perplexity": [f"{p:.{digits}f} ×/÷ {g:.3f}" for p, g in zip(s["val_ppl"],
                                                                     s["val_ppl_gsd"])],
        "zero-shot acc (%)": [("—" if math.isnan(a) else f"{100 * a:.1f} ± {100 * sd:.1f}")
                              for a, sd in zip(s["zeroshot_acc_mean"], s["zeroshot_acc_sd"])],
        "prune s": s["prune_seconds"].round(1),
        "seeds": s["n_seeds"],
    })
    return out


# ----------------------------------------------------------------------------- statistics
def paired_comparisons(df: pd.DataFrame, metric: str = "val_nll", factor: str = "method", *,
                       baseline: str | None = None, alpha: float = 0.05, test: str = "t",
                       **kwargs: Any) -> pd.DataFrame:
    """Paired tests (by calibration seed) between levels of ``factor`` at every point.

    Runs are compared when they agree on the other factors of :data:`FACTORS` present in
    the rows and on the pattern and sparsity, and are paired by seed (only seeds present
    in both). ``factor="method"`` compares every pair of methods (or each against
    ``baseline``); ``factor="allocation"`` compares each allocation against ``baseline``
    (default ``"uniform"``); ``factor="experiment"`` compares the experiments of a grid
    (rows of several cells concatenated; the grid's seed is the calibration seed). Dense
    rows are left out.

    Args:
        df: Rows of :func:`workbench.experiments.oneshot.oneshot_sweep`.
        metric: ``"val_nll"`` (log perplexity: differences are log ratios) or
            ``"zeroshot_acc"`` (or any numeric column).
        factor: ``"method"``, ``"allocation"`` or ``"experiment"``.
        baseline: Reference level (``a``); ``None``: all pairs for methods, ``"uniform"``
            for allocations.
        alpha: Family-wise error rate of the Holm correction over this table's rows.
        test: ``"t"`` (paired t-test) or ``"wilcoxon"``: whose p-values are corrected.
        **kwargs: Passed to :func:`workbench.experiments.stats.paired_test`.

    Returns:
        The columns of :data:`workbench.experiments.stats.TABLE_COLUMNS` (so
        :func:`workbench.experiments.stats.describe` reads it) plus ``pattern``,
        ``context`` (the shared level of the other factor) and the ``paired_test`` fields.
    """
    check_choice("factor", factor, FACTORS)
    check_choice("test", test, stats.TESTS)
    if metric not in df:
        raise ValueError(f"metric={metric!r} is not a column; allowed: "
                         f"{sorted(df.select_dtypes('number').columns)}")
    if factor not in df:
        raise ValueError(f"factor={factor!r} is not a column of the rows")
    data = df[(df["method"] != "dense") & df[metric].notna()]
    if baseline is None and factor == "allocation":
        baseline = "uniform"
    others = [c for c in FACTORS if c != factor and c in data
              and (c != "experiment" or data[c].nunique() > 1)]
    rows = []
    for key, part in data.groupby(others + ["pattern", "sparsity"], sort=False):
        ctx = ", ".join(str(v) for v in key[:len(others)])
        pattern, s = key[len(others):]
        levels = list(dict.fromkeys(part[factor]))
        if baseline is not None:
            pairs = [(baseline, b) for b in levels if b != baseline and baseline in levels]
        else:
            pairs = list(itertools.combinations(levels, 2))
        values = part.pivot_table(index="seed", columns=factor, values=metric, aggfunc="first")
        for a, b in pairs:
            both = values[[a, b]].dropna()
            if len(both) == 0:
                continue
            res = stats.paired_test(both[a].to_numpy(), both[b].to_numpy(), alpha=alpha,
                                    **kwargs)
            rows.append(dict(factor=factor, baseline=a, level_b=b,
                             experiment_a=f"{a} ({ctx}, {pattern})",
                             experiment_b=f"{b} ({ctx}, {pattern})", metric=metric,
                             at="sparsity", level=float(s), pattern=pattern, context=ctx,
                             **res))
    if not rows:
        return pd.DataFrame(columns=list(stats.TABLE_COLUMNS) + ["pattern", "context"])
    out = pd.DataFrame(rows)
    reject, padj = stats.holm(out["p_t" if test == "t" else "p_wilcoxon"], alpha=alpha)
    out["test"], out["p_holm"], out["significant"] = test, padj, reject
    front = list(stats.TABLE_COLUMNS)
    return out[front + [c for c in out if c not in front]]


def significance(df: pd.DataFrame, *, metrics: Sequence[str] = ("val_nll", "zeroshot_acc"),
                 factors: Sequence[str] = FACTORS, alpha: float = 0.05,
                 test: str = "t", allow_mixed_protocols: bool = False,
                 **kwargs: Any) -> pd.DataFrame:
    """:func:`paired_comparisons` for every factor x metric, Holm-corrected as one family.

    Metrics with no values (zero-shot not run) and factors absent or with one level are
    skipped. Rows evaluated on different tokens are refused (as :func:`summarize`) unless
    ``allow_mixed_protocols``.
    """
    from workbench.core.protocols import check_same_protocol

    check_same_protocol(df, allow_mixed=allow_mixed_protocols)
    tables = []
    for factor in factors:
        if factor not in df or df.loc[df["method"] != "dense", factor].nunique() < 2:
            continue
        for metric in metrics:
            if metric in df and df[metric].notna().any():
                t = paired_comparisons(df, metric, factor, alpha=alpha, test=test, **kwargs)
                if len(t):
                    tables.append(t)
    if not tables:
        return pd.DataFrame(columns=list(stats.TABLE_COLUMNS) + ["pattern", "context"])
    out = pd.concat(tables, ignore_index=True)
    reject, padj = stats.holm(out["p_t" if test == "t" else "p_wilcoxon"], alpha=alpha)
    out["p_holm"], out["significant"] = padj, reject
    return out


def findings(table: pd.DataFrame, *, alpha: float = 0.05) -> str:
    """One sentence per significant difference (and the count of the others).

    Perplexity differences (``val_nll``) are reported as the ratio of geometric mean
    perplexities ``exp(mean paired difference)``; accuracy differences in points.
    """
    if table is None or len(table) == 0:
        return "No paired comparisons (need two methods or allocations with shared seeds)."
    n = int(table["n"].min())
    sig = table[table["significant"].astype(bool)]
    parts = []
    for _, r in sig.iterrows():
        where = f"{r['pattern']} {r['level']:.0%}" if r["pattern"] == "unstructured" else (
            r["pattern"])
        if r["metric"] == "val_nll":
            what = (f"perplexity {math.exp(r['mean_b']):.2f} vs {math.exp(r['mean_a']):.2f} "
                    f"(ratio {math.exp(r['mean_diff']):.3f})")
        elif r["metric"] == "zeroshot_acc":
            what = (f"zero-shot accuracy {100 * r['mean_b']:.1f}% vs {100 * r['mean_a']:.1f}% "
                    f"({100 * r['mean_diff']:+.1f} points)")
        else:
            what = f"{r['metric']} {r['mean_b']:.3g} vs {r['mean_a']:.3g}"
        parts.append(f"{r['level_b']} vs {r['baseline']} ({r['context']}, {where}): {what}, "
                     f"d_z = {r['d_z']:.2f}, Holm p = {r['p_holm']:.3g}")
    head = (f"{len(table)} paired comparisons over n = {n} calibration seeds "
            f"({table['test'].iloc[0]}-test, Holm at alpha = {alpha:g}): ")
    if parts:
        text = head + f"{len(sig)} significant — " + "; ".join(parts) + "."
    else:
        text = head + "none is significant."
    rest = len(table) - len(sig)
    if parts and rest:
        text += f" The other {rest} are not significant."
    if stats.wilcoxon_min_p(n) >= alpha:
        text += (f" (With n = {n} the exact Wilcoxon test cannot reach p < {alpha:g}; only "
                 "the t-test can.)")
    return text


# ----------------------------------------------------------------------------- figure
def curve_style(method: str, allocation: str) -> tuple[str, str]:
    """``(colour, label)`` of a curve: the method's registered colour and label
    (:func:`workbench.experiments.plots.method_style`), ``+ OWL`` for non-uniform
    allocations; the dense model is black."""
    from workbench.experiments.plots import method_style

    if method == "dense":
        return "#000000", "Dense"
    c, lab = method_style(method)
    return c, lab if allocation == "uniform" else f"{lab} + {allocation.upper()}"


def plot_oneshot(df: pd.DataFrame, metric: str = "val_ppl", *, axes=None, seeds: bool = True):
    """Metric vs sparsity, mean ± sd over seeds with the seeds overlaid, per method.

    One panel for the unstructured curves and one per N:M pattern, drawn by
    :func:`workbench.experiments.plots.plot_sparsity_curve` (perplexity: geometric mean
    ×/÷ geometric sd) with the methods' registered colours (:func:`curve_style`);
    non-uniform allocations (OWL) are dashed; the dense model is a reference line.

    Returns:
        ``(fig, axes)``.
    """
    import matplotlib.pyplot as plt

    from workbench.experiments.plots import plot_sparsity_curve

    pruned = df[df["method"] != "dense"]
    panels = sorted(set(pruned["pattern"]), key=lambda p: (p != "unstructured", p))
    if axes is None:
        widths = [3.2 if p == "unstructured" else 1.4 for p in panels]
        fig, axes = plt.subplots(1, len(panels), figsize=(sum(widths) + 1.0, 3.4),
                                 gridspec_kw=dict(width_ratios=widths), squeeze=False,
                                 sharey=True)
        axes = list(axes[0])
    fig = axes[0].figure
    data = df.assign(round=df["sparsity"], curve=df["method"] + "/" + df["allocation"])
    styles = {k: curve_style(*k.split("/", 1)) for k in data["curve"].unique()}
    # dodge the curves sideways a little so that error bars at one sparsity stay apart
    order = {k: i for i, k in enumerate(sorted(styles))}
    width = 0.004 if len(set(data["sparsity"])) > 2 else 0.01
    data["sparsity"] = data["sparsity"] + [
        0.0 if k.startswith("dense/") else width * (order[k] - (len(order) - 1) / 2)
        for k in data["curve"]]
    dense_keys = [k for k in styles if k.startswith("dense/")]
    for ax, pattern in zip(axes, panels):
        part = data[(data["pattern"] == pattern) | (data["method"] == "dense")]
        plot_sparsity_curve(part, metric, x="sparsity", hue="curve", ax=ax, seeds=seeds,
                            styles=styles, references=dense_keys,
                            logy="ppl" in metric, title=pattern)
        dashed = {styles[k][1] for k in styles if not k.endswith("/uniform")}
        for cont in ax.containers:
            if str(cont.get_label()).split(" (n=")[0] in dashed:
                cont.lines[0].set_linestyle("--")
        if ax is not axes[0]:
            ax.set_ylabel("")
        if pattern != "unstructured":
            ax.set_xlabel("")
            ax.set_xticks([float(part.loc[part["pattern"] == pattern, "round"].iloc[0])])
        ax.legend().remove()
    handles, labels = axes[0].get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    for ax in axes[1:]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    fig.legend(list(seen.values()), list(seen), fontsize=7, frameon=False,
               loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig, axes


__all__ = ["summarize", "results_table", "paired_comparisons", "significance", "findings",
           "curve_style", "plot_oneshot"]
