"""Analysis of one-shot sweeps: summaries over seeds, findings, figure.

Reads the rows of :func:`workbench.pruning.oneshot.oneshot_sweep` (or rows of
several grid cells concatenated, with an ``experiment`` column):

* :func:`summarize` and :func:`results_table`: mean ± sd over calibration seeds per
  curve point; perplexity as geometric mean ×/÷ geometric sd (it is summarised on its
  logarithm, ``val_nll``).
* The paired tests (by calibration seed) are
  :func:`workbench.experiments.analysis.factors.compare_oneshot` and
  :func:`workbench.experiments.analysis.factors.oneshot_significance` (the engine of every
  paired table, one Holm family); :func:`findings` puts their significant differences
  in sentences.
* :func:`curve_style` and :func:`plot_oneshot`: metric vs sparsity, one panel per
  pattern, in the methods' registered colours.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
import pandas as pd

from workbench.experiments.analysis import stats
from workbench.experiments.analysis.plots import bar_meaning, method_style, plot_sparsity_curve

#: Identifies one curve point (a method configuration at one sparsity).
KEYS = ("method", "allocation", "pattern", "sparsity")


# ----------------------------------------------------------------------------- summaries
def summarize(df: pd.DataFrame, *, allow_mixed_protocols: bool = False) -> pd.DataFrame:
    """Mean ± sd over seeds per curve point (and mean prune seconds).

    Perplexity is summarised on its logarithm: ``val_ppl`` is the geometric mean
    ``exp(mean(val_nll))`` and ``val_ppl_gsd`` the geometric sd ``exp(sd(val_nll))``
    (the bar is ``val_ppl`` times/divided by it), as in
    :func:`workbench.experiments.analysis.plots.plot_sparsity_curve`.

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


def findings(table: pd.DataFrame, *, alpha: float = 0.05) -> str:
    """One sentence per significant difference (and the count of the others; those with
    fewer than :data:`~workbench.experiments.analysis.stats.MIN_TEST_N` paired seeds are
    named not testable, with the reason).

    Perplexity differences (``val_nll``) are reported as the ratio of geometric mean
    perplexities ``exp(mean paired difference)``; accuracy differences in points.
    """
    if table is None or len(table) == 0:
        return "No paired comparisons (need two methods or allocations with shared seeds)."
    n = int(table["n"].min())
    if int(table["n"].max()) < stats.MIN_TEST_N:
        return (f"{len(table)} paired comparisons, not testable: n = {n} calibration "
                f"seeds per comparison, fewer than {stats.MIN_TEST_N} (a paired t-test on "
                f"{n} pairs has {max(n - 1, 0)} degree(s) of freedom and the exact Wilcoxon "
                f"test cannot go below p = {stats.wilcoxon_min_p(n):.2g}); no p-values are "
                "reported. Run with seeds=[0, 1, 2] or more.")
    few = table[table["n"] < stats.MIN_TEST_N]
    n = int(table.loc[table["n"] >= stats.MIN_TEST_N, "n"].min())
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
    rest = len(table) - len(sig) - len(few)
    if parts and rest:
        text += f" The other {rest} are not significant."
    if len(few):
        reason = "; ".join(stats.not_testable_note(k) for k in sorted(set(few["n"])))
        text += (f" {len(few)} comparisons are {reason}: they have fewer calibration seeds "
                 "in common and no p-value.")
    if stats.wilcoxon_min_p(n) >= alpha:
        text += (f" (With n = {n} the exact Wilcoxon test cannot reach p < {alpha:g}; only "
                 "the t-test can.)")
    return text


# ----------------------------------------------------------------------------- figure
def curve_style(method: str, allocation: str) -> tuple[str, str]:
    """``(colour, label)`` of a curve: the method's registered colour and label
    (:func:`workbench.experiments.analysis.plots.method_style`), ``+ OWL`` for non-uniform
    allocations; the dense model is black."""
    if method == "dense":
        return "#000000", "Dense"
    c, lab = method_style(method)
    return c, lab if allocation == "uniform" else f"{lab} + {allocation.upper()}"


def sweep_title(df: pd.DataFrame, profile: str | None = None) -> str:
    """Figure title of a sweep: model, corpus and evaluation protocol, zero-shot task and
    its n, calibration seeds n, and the profile (``None``: a direct notebook run)."""
    first = df.iloc[0]
    parts = [f"{first.get('model', '?')}",
             f"{first.get('corpus', '?')}: val ppl on {first.get('eval_n_blocks', '?')} x "
             f"{first.get('eval_context_length', '?')} tokens"]
    if "zeroshot_n" in df and df["zeroshot_n"].max() > 0:
        task = os.path.basename(str(first.get("zeroshot_task") or "zero-shot"))
        parts.append(f"{task} n = {int(df['zeroshot_n'].max())} examples")
    parts.append(f"n = {df['seed'].nunique()} calibration seeds x "
                 f"{first.get('calibration_n', '?')} windows of "
                 f"{first.get('calibration_seq_len', '?')}")
    parts.append(f"profile {profile}" if profile else "profile: none (notebook run)")
    return " · ".join(parts)


def plot_oneshot(df: pd.DataFrame, metric: str | Sequence[str] = "val_ppl", *, axes=None,
                 seeds: bool = True, title: str | None = None, profile: str | None = None):
    """Metrics vs sparsity, mean ± sd over seeds with the seeds overlaid, per method.

    One row per metric (``metric`` may be a list, e.g. ``["val_ppl", "zeroshot_acc"]``;
    metrics with no values are left out), one column for the unstructured curves and one
    per N:M pattern, drawn by :func:`workbench.experiments.analysis.plots.plot_sparsity_curve`
    (perplexity: geometric mean ×/÷ geometric sd; accuracy: mean ± sd) with each method's
    fixed look (:func:`workbench.experiments.analysis.plots.style`: colour, marker, line style);
    non-uniform allocations (OWL) are dashed; the dense model is a reference line.

    Curves at one sparsity are offset sideways a little so their error bars stay apart;
    the x ticks are at the true sparsities (the offset is a drawing aid only, stated in
    the axis label).

    Args:
        df: Rows of :func:`workbench.pruning.oneshot.oneshot_sweep`.
        metric: One metric or a list of them (rows of panels).
        axes: Axes array ``[rows][cols]`` to draw into (a new figure when ``None``).
        seeds: Overlay each seed as a faint line.
        title: Figure title (default :func:`sweep_title`).
        profile: Profile named in the default title.

    Returns:
        ``(fig, axes)``: ``axes`` is a flat list for one metric, else a list of rows.
    """
    import matplotlib.pyplot as plt

    metrics = [metric] if isinstance(metric, str) else list(metric)
    metrics = [m for m in metrics if m in df and df[m].notna().any()] or metrics[:1]
    pruned = df[df["method"] != "dense"]
    panels = sorted(set(pruned["pattern"]), key=lambda p: (p != "unstructured", p))
    if axes is None:
        widths = [3.2 if p == "unstructured" else 1.4 for p in panels]
        fig, grid = plt.subplots(len(metrics), len(panels),
                                 figsize=(sum(widths) + 1.0, 3.0 * len(metrics) + 0.4),
                                 gridspec_kw=dict(width_ratios=widths), squeeze=False,
                                 sharey="row")
        rows = [list(r) for r in grid]
    else:
        rows = [list(r) for r in (axes if isinstance(axes[0], (list, tuple, np.ndarray))
                                  else [axes])]
    fig = rows[0][0].figure
    data = df.assign(round=df["sparsity"], curve=df["method"] + "/" + df["allocation"])
    styles = {k: curve_style(*k.split("/", 1)) for k in data["curve"].unique()}
    # offset the curves sideways a little so that error bars at one sparsity stay apart
    order = {k: i for i, k in enumerate(sorted(styles))}
    true_x = sorted(set(pruned.loc[pruned["pattern"] == "unstructured", "sparsity"]))
    gaps = np.diff(true_x) if len(true_x) > 1 else np.array([0.5])
    width = min(0.01, 0.25 * float(gaps.min()) / max(len(order), 1))
    data["sparsity"] = data["sparsity"] + [
        0.0 if k.startswith("dense/") else width * (order[k] - (len(order) - 1) / 2)
        for k in data["curve"]]
    dense_keys = [k for k in styles if k.startswith("dense/")]
    for r, (m, row) in enumerate(zip(metrics, rows)):
        for ax, pattern in zip(row, panels):
            part = data[(data["pattern"] == pattern) | (data["method"] == "dense")]
            plot_sparsity_curve(part, m, x="sparsity", hue="curve", ax=ax, seeds=seeds,
                                styles=styles, references=dense_keys,
                                logy="ppl" in m, title=pattern if r == 0 else None)
            if ax is not row[0]:
                ax.set_ylabel("")
            pad = max(0.05, 0.5 * float(gaps.min()))  # the offsets stay small beside it
            if pattern != "unstructured":
                x0 = float(part.loc[part["pattern"] == pattern, "round"].iloc[0])
                ax.set_xticks([x0])
                ax.set_xticklabels([pattern])
                ax.set_xlim(x0 - pad, x0 + pad)
                ax.set_xlabel("")
            else:
                ax.set_xlim(min(true_x) - pad, max(true_x) + pad)
                ax.set_xticks(true_x)
                ax.set_xticklabels([f"{v:.0%}" for v in true_x])
                ax.set_xlabel("sparsity (true value at each tick; points offset "
                              "sideways to keep bars apart)" if r == len(metrics) - 1
                              else "")
            ax.legend().remove()
    seen: dict = {}
    for row in rows:
        for ax in row:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                seen.setdefault(lab, h)
    notes = "; ".join(f"{metric_name}: {bar_meaning('ppl' in metric_name)[6:]}"
                      for metric_name in metrics)
    right = max(ax.get_position().x1 for row in rows for ax in row)  # the axes' right edge
    fig.legend(list(seen.values()), list(seen), fontsize=7, frameon=False,
               loc="center left", bbox_to_anchor=(right + 0.02, 0.5), alignment="left",
               title="bars: " + notes.replace("; ", "\n"), title_fontsize=7)
    text = title if title is not None else sweep_title(df, profile)
    fig.suptitle(wrap_title(text, fig.get_figwidth(), fontsize=8), fontsize=8)
    return fig, (rows[0] if len(rows) == 1 else rows)


def wrap_title(text: str, width_in: float, *, fontsize: float = 8) -> str:
    """``text`` broken at its `` · `` separators into lines that fit ``width_in`` inches.

    A suptitle wider than its figure makes the saved (tight) image as wide as the title,
    with the axes lost in the middle. A character is taken as ``0.6 fontsize`` points wide
    (a generous estimate for DejaVu Sans); a single part longer than a line stays whole.
    """
    max_chars = max(20, int(width_in * 72 / (0.6 * fontsize)))
    lines: list[str] = []
    for part in text.split(" · "):
        if lines and len(lines[-1]) + 3 + len(part) <= max_chars:
            lines[-1] += " · " + part
        else:
            lines.append(part)
    return "\n".join(lines)


__all__ = ["summarize", "results_table", "findings", "curve_style", "plot_oneshot",
           "sweep_title", "wrap_title"]
