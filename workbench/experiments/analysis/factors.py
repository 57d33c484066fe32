"""Paired comparisons of factors: the automatic one-factor pairs of a grid and the
one-shot comparisons, on one engine.

Both build their tables from :func:`workbench.experiments.analysis.stats.paired_by_level`
(runs paired by seed at each matched level, tested by
:func:`~workbench.experiments.analysis.stats.paired_test`) and correct them as one Holm
family with :func:`~workbench.experiments.analysis.stats.holm_table`; both have the
columns :data:`TABLE_COLUMNS`, read by :func:`describe`.

* Grid runs (records of :func:`workbench.experiments.analysis.aggregate.load_runs`):
  :func:`compare_factor` pairs experiments that differ in one design factor alone
  (:func:`workbench.experiments.design.procedures.one_factor_pair`), skipping levels at
  which the two are the same procedure
  (:func:`workbench.experiments.design.contrasts.testable_levels`);
  :func:`significance_table` does every factor x metric as one family.
* One-shot sweeps (rows of :func:`workbench.pruning.oneshot.oneshot_sweep`):
  :func:`compare_oneshot` compares levels of a method, allocation or grid experiment at
  every curve point, paired by calibration seed; perplexity is tested on its logarithm
  (``val_nll``: paired differences are log perplexity ratios), accuracy as is;
  :func:`oneshot_significance` does every factor x metric as one family.
"""

from __future__ import annotations

import ast
import itertools
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from workbench.core.checks import check_choice
from workbench.experiments.analysis import stats
from workbench.experiments.design.contrasts import Contrast, testable_levels
from workbench.experiments.design.procedures import (baseline_level, design_keys,
                                                     one_factor_pair)

#: Leading columns of a :func:`compare_factor` / :func:`compare_oneshot` table.
TABLE_COLUMNS = ("factor", "baseline", "level_b", "experiment_a", "experiment_b", "metric", "at",
                 "level", "n", "mean_a", "mean_b", "mean_diff", "ci_low", "ci_high", "d_z",
                 "p_t", "p_wilcoxon", "test", "p_holm", "significant", "note")
#: Factors compared by :func:`compare_oneshot` (``experiment``: grid cells of a spec).
ONESHOT_FACTORS = ("method", "allocation", "experiment")
#: Metrics tested by :func:`oneshot_significance` and which direction is better.
ONESHOT_METRICS = {"val_nll": "lower", "zeroshot_acc": "higher"}


# ----------------------------------------------------------------------------- grid runs
def compare_experiments(df: pd.DataFrame, a: str, b: str, metric: str, *,
                        at: str = "sparsity", decimals: int = 3, exclude_dense: bool = True,
                        take: str = "first", **kwargs: Any) -> pd.DataFrame:
    """:func:`~workbench.experiments.analysis.stats.paired_test` of experiment ``b``
    against ``a`` at every matched level (:func:`~workbench.experiments.analysis.stats.
    paired_by_level`).

    Runs are paired by seed; only seeds and levels present in both are used. With
    ``at="sparsity"`` and ``exclude_dense`` the unpruned level 0 is skipped.

    Returns:
        One row per level: ``experiment_a, experiment_b, at, level`` and the
        ``paired_test`` fields.
    """
    for name, e in (("a", a), ("b", b)):
        if e not in set(df["experiment"]):
            raise ValueError(f"{name}={e!r} is not an experiment of the runs; "
                             f"allowed: {sorted(set(df['experiment']))}")
    if metric not in df:
        raise ValueError(f"metric={metric!r} is not a column; allowed: "
                         f"{sorted(df.select_dtypes('number').columns)}")
    va = stats.matched_values(df, a, metric, at=at, decimals=decimals, take=take)
    vb = stats.matched_values(df, b, metric, at=at, decimals=decimals, take=take)
    levels = None
    if at == "sparsity" and exclude_dense:
        levels = [lv for lv in va.index.unique("level") if lv != 0]
    res = stats.paired_by_level(va, vb, levels=levels, **kwargs)
    return pd.DataFrame([{"experiment_a": a, "experiment_b": b, "at": at, "level": level, **r}
                         for level, r in res.items()])


def _experiment_parameters(df: pd.DataFrame, columns: Sequence[str]) -> dict[str, dict]:
    """``{experiment: {column: value}}`` from the first row of each experiment (list
    columns stored as text are parsed back)."""
    cols = [c for c in columns if c in df]
    out = {}
    for exp, row in df.groupby("experiment", sort=True).head(1).set_index("experiment")[
            cols].iterrows():
        params = {}
        for c, v in row.items():
            if isinstance(v, np.ndarray):  # list column read back from parquet
                v = v.tolist()
            if isinstance(v, str) and v[:1] in "[(":
                try:
                    v = ast.literal_eval(v)
                except (ValueError, SyntaxError):
                    pass
            elif not isinstance(v, (list, tuple)) and pd.isna(v):
                v = None
            params[c] = v.item() if hasattr(v, "item") else v
        out[str(exp)] = params
    return out


def compare_factor(df: pd.DataFrame, factor: str, metric: str, *, at: str = "sparsity",
                   baseline: Any = None, test: str = "t", alpha: float = 0.05,
                   decimals: int = 3, exclude_dense: bool = True, take: str = "first",
                   design: Sequence[str] | None = None,
                   parameters: Mapping[str, Mapping[str, Any]] | None = None,
                   **kwargs: Any) -> pd.DataFrame:
    """Does ``factor`` change ``metric`` at matched sparsity (or round)?

    Experiments are paired when
    :func:`~workbench.experiments.design.procedures.one_factor_pair` says they differ in
    ``factor`` alone; each pair is compared by :func:`compare_experiments` against the
    ``baseline`` level, skipping levels at which the two are the same procedure
    (:func:`workbench.experiments.design.contrasts.testable_levels`). All rows of the table
    form one family for the Holm correction of ``test``'s p-values
    (:func:`workbench.experiments.analysis.stats.holm_table`).

    Args:
        df: Runs from :func:`workbench.experiments.analysis.aggregate.load_runs`.
        factor: Design column, e.g. ``"init"``, ``"schedule"``, ``"steps_per_round"``.
        metric: Numeric column, e.g. ``"val_nll"``, ``"sw_survival"``.
        at: ``"sparsity"`` (matched target sparsity) or ``"round"``.
        baseline: Reference level (default
            :func:`workbench.experiments.design.procedures.baseline_level`).
        test: ``"t"`` (paired t-test) or ``"wilcoxon"`` for the Holm family.
        alpha: Family-wise error rate.
        decimals: Rounding of the sparsity used for matching.
        exclude_dense: Skip sparsity 0 (before pruning).
        take: Round used when a run stays at one level (see
            :func:`workbench.experiments.analysis.stats.matched_values`).
        design: Columns that define an experiment's design (default
            :func:`workbench.experiments.design.procedures.design_keys`).
        parameters: ``{experiment: parameters}`` of the runs (default: read from ``df``).
        **kwargs: Passed to :func:`workbench.experiments.analysis.stats.paired_test`
            (confidence, n_resamples, random_state).

    Returns:
        One row per (pair, level): ``factor, baseline, level_b, experiment_a,
        experiment_b, at, level, n, mean_a, mean_b, mean_diff, ci_low, ci_high, d_z,
        p_t, p_wilcoxon, p_holm, significant, note, ...``; empty when no pair exists.

    Raises:
        ValueError: Naming a bad ``factor``, ``metric``, ``test`` or ``at``.
    """
    stats.check_test(test)
    if at not in stats.AT:
        raise ValueError(f"at={at!r} is not allowed; allowed: {list(stats.AT)}")
    design = tuple(design) if design is not None else design_keys()
    if factor not in df:
        present = [c for c in design if c in df]
        raise ValueError(f"factor={factor!r} is not a column of the runs; allowed: {present}")
    if metric not in df:
        raise ValueError(f"metric={metric!r} is not a column; allowed: "
                         f"{sorted(df.select_dtypes('number').columns)}")
    from_df = _experiment_parameters(df, design)
    params = {e: {**from_df[e], **dict((parameters or {}).get(e, {}))} for e in from_df}
    params = {e: {k: v for k, v in p.items() if k in design} for e, p in params.items()}
    levels = df.groupby("experiment")[factor].first()
    if baseline is None:
        baseline = baseline_level(factor, levels)
    tables = []
    for ref in [e for e in levels.index if str(levels[e]) == str(baseline)]:
        for other in levels.index:
            if str(levels[other]) == str(baseline) or not one_factor_pair(
                    factor, params[ref], params[other]):
                continue
            t = compare_experiments(df, ref, other, metric, at=at, decimals=decimals,
                                    exclude_dense=exclude_dense, take=take, alpha=alpha,
                                    **kwargs)
            try:
                keep = testable_levels(Contrast("auto", "auto", ref, other, at, (metric,),
                                                None, take), params[ref], params[other])
            except (TypeError, ValueError):
                keep = None
            if keep is not None and len(t):
                t = t[[lv in keep or round(float(lv), decimals) in keep for lv in t["level"]]]
            if len(t):
                t.insert(0, "level_b", levels[other])
                t.insert(0, "baseline", baseline)
                t.insert(0, "factor", factor)
                tables.append(t)
    if not tables:
        return pd.DataFrame(columns=list(TABLE_COLUMNS))
    out = pd.concat(tables, ignore_index=True)
    out.insert(len(out.columns), "metric", metric)
    out = stats.holm_table(out, test=test, alpha=alpha)
    front = list(TABLE_COLUMNS)
    return out[front + [c for c in out if c not in front]]


def significance_table(df: pd.DataFrame, factors: Sequence[str], metrics: Sequence[str], *,
                       alpha: float = 0.05, test: str = "t", **kwargs: Any) -> pd.DataFrame:
    """:func:`compare_factor` for every factor x metric, Holm-corrected as one family.

    Factors absent from the runs or with a single level are skipped.

    Returns:
        The concatenated tables; ``p_holm`` and ``significant`` are recomputed over all
        rows together.
    """
    tables = []
    for factor in factors:
        if factor not in df or df[factor].astype(str).nunique() < 2:
            continue
        for metric in metrics:
            t = compare_factor(df, factor, metric, alpha=alpha, test=test, **kwargs)
            if len(t):
                tables.append(t)
    if not tables:
        return pd.DataFrame(columns=list(TABLE_COLUMNS))
    return stats.holm_table(pd.concat(tables, ignore_index=True), test=test, alpha=alpha)


def describe(table: pd.DataFrame, *, alpha: float = 0.05, digits: int = 3) -> str:
    """A findings paragraph generated from a :func:`compare_factor` table (or several).

    Lists the comparisons significant after Holm with their effect sizes, then those that
    are not, those not testable and why (fewer than
    :data:`~workbench.experiments.analysis.stats.MIN_TEST_N` paired seeds, or zero variance),
    and the Wilcoxon caveat when n is too small.
    """
    if table is None or len(table) == 0:
        return "No pairs of experiments differ in exactly one factor with shared seeds."

    def fmt(r) -> str:
        where = (f"sparsity {r['level']:.2f}" if r["at"] == "sparsity"
                 else f"round {int(r['level'])}")
        return (f"{r['experiment_b']} ({r['factor']}={r['level_b']}) vs {r['experiment_a']} "
                f"({r['baseline']}) at {where}: {r['metric']} {r['mean_b']:.{digits}g} vs "
                f"{r['mean_a']:.{digits}g}, mean paired difference {r['mean_diff']:+.{digits}g} "
                f"[{r['ci_low']:.{digits}g}, {r['ci_high']:.{digits}g}], "
                f"d_z = {r['d_z']:.2f}, Holm p = {r['p_holm']:.3g}")

    sig = table[table["significant"].astype(bool)]
    untested = table[table["p_holm"].isna()]
    nonsig = table[~table["significant"].astype(bool) & table["p_holm"].notna()]
    parts = [f"{len(table)} paired comparisons (runs paired by seed, "
             f"{table['test'].iloc[0]}-test, Holm-corrected at alpha = {alpha:g})."]
    if len(sig):
        parts.append(f"{len(sig)} differ significantly: " + "; ".join(fmt(r) for _, r in
                                                                    sig.iterrows()) + ".")
    else:
        parts.append("None is significant after Holm correction.")
    if len(nonsig):
        big = nonsig.reindex(nonsig["d_z"].abs().sort_values(ascending=False).index).head(3)
        parts.append("Largest effects without significance: "
                     + "; ".join(fmt(r) for _, r in big.iterrows()) + ".")
    if len(untested):
        few = untested[untested["n"] < stats.MIN_TEST_N]
        if len(few):
            reason = "; ".join(stats.not_testable_note(n) for n in sorted(set(few["n"])))
            parts.append(f"{len(few)} comparisons are {reason}: " + "; ".join(
                f"{r['experiment_b']} vs {r['experiment_a']} at {r['at']} {r['level']:.2f}: "
                f"{r['metric']} {r['mean_b']:.{digits}g} vs {r['mean_a']:.{digits}g} "
                f"(n={int(r['n'])})" for _, r in few.iterrows()) + ".")
        untested = untested[untested["n"] >= stats.MIN_TEST_N]
        same = untested[untested["mean_diff"] == 0]
        const = untested[untested["mean_diff"] != 0]
        if len(const):
            parts.append("Untestable because every seed gave the same difference (zero "
                         "variance): " + "; ".join(
                             f"{r['experiment_b']} vs {r['experiment_a']} at {r['at']} "
                             f"{r['level']:.2f}: {r['metric']} {r['mean_b']:.{digits}g} vs "
                             f"{r['mean_a']:.{digits}g}" for _, r in const.iterrows()) + ".")
        if len(same):
            parts.append(f"{len(same)} comparisons had identical values in every seed.")
    testable = table[table["n"] >= stats.MIN_TEST_N]
    n_min = int(testable["n"].min()) if len(testable) else 0
    if len(testable) and stats.wilcoxon_min_p(n_min) >= alpha:
        parts.append(f"With n = {n_min} seeds per pair the exact Wilcoxon signed-rank test "
                     f"cannot reach p < {alpha:g} (smallest p = "
                     f"{stats.wilcoxon_min_p(n_min):.3g}), so only the t-test can detect a "
                     "difference; more seeds are needed for a non-parametric confirmation.")
    return " ".join(parts)


# ----------------------------------------------------------------------------- one-shot sweeps
def compare_oneshot(df: pd.DataFrame, metric: str = "val_nll", factor: str = "method", *,
                    baseline: str | None = None, alpha: float = 0.05, test: str = "t",
                    **kwargs: Any) -> pd.DataFrame:
    """Paired tests (by calibration seed) between levels of ``factor`` at every point.

    Runs are compared when they agree on the other factors of :data:`ONESHOT_FACTORS`
    present in the rows and on the pattern and sparsity, and are paired by seed (only seeds
    with finite values in both, :func:`workbench.experiments.analysis.stats.paired_by_level`).
    ``factor="method"`` compares every pair of methods (or each against ``baseline``);
    ``factor="allocation"`` compares each allocation against ``baseline`` (default
    ``"uniform"``); ``factor="experiment"`` compares the experiments of a grid (rows of
    several cells concatenated; the grid's seed is the calibration seed). Dense rows are
    left out.

    Args:
        df: Rows of :func:`workbench.pruning.oneshot.oneshot_sweep`.
        metric: ``"val_nll"`` (log perplexity: differences are log ratios) or
            ``"zeroshot_acc"`` (or any numeric column).
        factor: ``"method"``, ``"allocation"`` or ``"experiment"``.
        baseline: Reference level (``a``); ``None``: all pairs for methods, ``"uniform"``
            for allocations.
        alpha: Family-wise error rate of the Holm correction over this table's rows.
        test: ``"t"`` (paired t-test) or ``"wilcoxon"``: whose p-values are corrected.
        **kwargs: Passed to :func:`workbench.experiments.analysis.stats.paired_test`.

    Returns:
        The columns of :data:`TABLE_COLUMNS` (so :func:`describe` reads it) plus
        ``pattern``, ``context`` (the shared level of the other factor) and the
        ``paired_test`` fields.
    """
    check_choice("factor", factor, ONESHOT_FACTORS)
    stats.check_test(test)
    if metric not in df:
        raise ValueError(f"metric={metric!r} is not a column; allowed: "
                         f"{sorted(df.select_dtypes('number').columns)}")
    if factor not in df:
        raise ValueError(f"factor={factor!r} is not a column of the rows")
    data = df[(df["method"] != "dense") & df[metric].notna()]
    if baseline is None and factor == "allocation":
        baseline = "uniform"
    others = [c for c in ONESHOT_FACTORS if c != factor and c in data
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
        values.index = pd.MultiIndex.from_product([[float(s)], values.index],
                                                  names=["level", "seed"])
        for a, b in pairs:
            for level, res in stats.paired_by_level(values[a], values[b], alpha=alpha,
                                                    **kwargs).items():
                rows.append(dict(factor=factor, baseline=a, level_b=b,
                                 experiment_a=f"{a} ({ctx}, {pattern})",
                                 experiment_b=f"{b} ({ctx}, {pattern})", metric=metric,
                                 at="sparsity", level=level, pattern=pattern, context=ctx,
                                 **res))
    if not rows:
        return pd.DataFrame(columns=list(TABLE_COLUMNS) + ["pattern", "context"])
    out = stats.holm_table(pd.DataFrame(rows), test=test, alpha=alpha)
    front = list(TABLE_COLUMNS)
    return out[front + [c for c in out if c not in front]]


def oneshot_significance(df: pd.DataFrame, *,
                         metrics: Sequence[str] = tuple(ONESHOT_METRICS),
                         factors: Sequence[str] = ONESHOT_FACTORS, alpha: float = 0.05,
                         test: str = "t", allow_mixed_protocols: bool = False,
                         **kwargs: Any) -> pd.DataFrame:
    """:func:`compare_oneshot` for every factor x metric, Holm-corrected as one family.

    Metrics with no values (zero-shot not run) and factors absent or with one level are
    skipped. Rows evaluated on different tokens are refused (as
    :func:`workbench.experiments.analysis.oneshot_analysis.summarize`) unless
    ``allow_mixed_protocols``.
    """
    from workbench.core.protocols import check_same_protocol  # loads torch: on use

    check_same_protocol(df, allow_mixed=allow_mixed_protocols)
    tables = []
    for factor in factors:
        if factor not in df or df.loc[df["method"] != "dense", factor].nunique() < 2:
            continue
        for metric in metrics:
            if metric in df and df[metric].notna().any():
                t = compare_oneshot(df, metric, factor, alpha=alpha, test=test, **kwargs)
                if len(t):
                    tables.append(t)
    if not tables:
        return pd.DataFrame(columns=list(TABLE_COLUMNS) + ["pattern", "context"])
    return stats.holm_table(pd.concat(tables, ignore_index=True), test=test, alpha=alpha)
