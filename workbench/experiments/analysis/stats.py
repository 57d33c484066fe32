"""Significance tests for runs paired by seed.

Two experiments that differ in one factor and ran with the same seeds are compared on the
paired differences ``d = b - a`` (one per seed): paired t-test
(:func:`scipy.stats.ttest_rel`), Wilcoxon signed-rank (:func:`scipy.stats.wilcoxon`),
effect size ``d_z = mean(d) / sd(d)`` and a percentile bootstrap CI of ``mean(d)``
(:func:`scipy.stats.bootstrap`). p-values of a table are Holm-corrected with
``statsmodels.stats.multitest.multipletests(method="holm")``.

With n paired seeds the smallest two-sided p the exact Wilcoxon test can give is
``2 / 2**n``; for n <= 5 that is >= 0.0625, so it can never reach p < 0.05. The results
say so (``wilcoxon_can_reach``) instead of reporting "not significant" without comment.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

TESTS = ("t", "wilcoxon")
AT = ("sparsity", "round")
#: Leading columns of a :func:`compare_factor` table.
TABLE_COLUMNS = ("factor", "baseline", "level_b", "experiment_a", "experiment_b", "metric", "at",
                 "level", "n", "mean_a", "mean_b", "mean_diff", "ci_low", "ci_high", "d_z",
                 "p_t", "p_wilcoxon", "test", "p_holm", "significant", "note")


def design_columns() -> tuple[str, ...]:
    """Columns that describe how a run was made: the lottery schema's design keys
    (:func:`workbench.lottery.schema.design_keys`)."""
    from workbench.experiments.design.specs import design_keys

    return design_keys()


def baseline_level(factor: str, levels) -> Any:
    """Reference level of a factor: the schema's default for that field when some run has
    it (``init=pretrained``, ``schedule=constant``, ``protect_sw=False``, ...), else the
    smallest level."""
    from workbench.experiments.design.specs import schema_fields

    levels = list(levels)
    spec = schema_fields().get(factor)
    if spec is not None and str(spec.default) in {str(v) for v in levels}:
        return next(v for v in levels if str(v) == str(spec.default))
    return sorted(set(levels), key=str)[0]


def wilcoxon_min_p(n: int) -> float:
    """Smallest two-sided p-value of the exact Wilcoxon signed-rank test with n pairs."""
    return min(1.0, 2.0 / 2**n) if n > 0 else 1.0


#: Fewest pairs a paired test is run on: with n = 2 the t-test has one degree of freedom
#: (its p-value rests on a single sd estimate from two differences, and Wilcoxon cannot
#: go below p = 0.5), so below this the comparison is reported as not testable.
MIN_TEST_N = 3


def paired_test(a: Sequence[float], b: Sequence[float], *, alpha: float = 0.05,
                confidence: float = 0.95, n_resamples: int = 9999,
                random_state: int = 0) -> dict[str, Any]:
    """Compare paired samples ``a`` (reference) and ``b`` (one pair per seed).

    Args:
        a: Reference values, shape (n,).
        b: Values of the other condition in the same seed order, shape (n,).
        alpha: Level used for the Wilcoxon reachability note.
        confidence: Confidence level of the bootstrap CI.
        n_resamples: Bootstrap resamples.
        random_state: Seed of the bootstrap.

    Returns:
        ``n, mean_a, mean_b, mean_diff, sd_diff, t, p_t, w, p_wilcoxon, wilcoxon_min_p,
        wilcoxon_can_reach, d_z, ci_low, ci_high, note`` where diff = b - a. Below
        :data:`MIN_TEST_N` pairs no test is run: the means are given, the statistics
        and p-values are NaN and ``note`` says "not testable" and why.

    Raises:
        ValueError: If ``a`` and ``b`` differ in length or hold non-finite values.
    """
    from scipy import stats

    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"a and b must be 1-d with the same length, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("a and b must be finite (drop failed runs first)")
    d = b - a
    n = len(d)
    out: dict[str, Any] = {
        "n": n, "mean_a": a.mean() if n else math.nan, "mean_b": b.mean() if n else math.nan,
        "mean_diff": d.mean() if n else math.nan,
        "sd_diff": d.std(ddof=1) if n > 1 else math.nan,
        "t": math.nan, "p_t": math.nan, "w": math.nan, "p_wilcoxon": math.nan,
        "wilcoxon_min_p": wilcoxon_min_p(n), "wilcoxon_can_reach": wilcoxon_min_p(n) < alpha,
        "d_z": math.nan, "ci_low": math.nan, "ci_high": math.nan,
    }
    notes = []
    if not out["wilcoxon_can_reach"]:
        notes.append(f"n={n}: exact Wilcoxon cannot reach p<{alpha:g} "
                     f"(smallest two-sided p = {wilcoxon_min_p(n):.3g})")
    if n < MIN_TEST_N:
        notes.append(f"not testable: n={n} pairs < {MIN_TEST_N} (a paired t-test on {n} "
                     f"pair(s) has {max(n - 1, 0)} degree(s) of freedom)")
        out["note"] = "; ".join(notes)
        return out
    sd = out["sd_diff"]
    # rounding noise (e.g. 1 - 2/3 computed per seed) is not variance
    if sd > 1e-12 * max(1.0, float(np.abs(d).max())):
        out["d_z"] = out["mean_diff"] / sd
        t = stats.ttest_rel(b, a)
        out["t"], out["p_t"] = float(t.statistic), float(t.pvalue)
        res = stats.bootstrap((d,), np.mean, confidence_level=confidence,
                              n_resamples=n_resamples, method="percentile",
                              rng=np.random.default_rng(random_state))
        out["ci_low"], out["ci_high"] = float(res.confidence_interval.low), float(
            res.confidence_interval.high)
    else:
        out["sd_diff"] = 0.0
        out["ci_low"] = out["ci_high"] = out["mean_diff"]
        if abs(out["mean_diff"]) <= 1e-12 * max(1.0, float(np.abs(b).max())):
            notes.append("all paired differences are zero")
        else:
            out["d_z"] = math.copysign(math.inf, out["mean_diff"])
            notes.append("paired differences have zero variance")
    if np.any(d != 0) and sd > 1e-12 * max(1.0, float(np.abs(d).max())):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w = stats.wilcoxon(d)
        out["w"], out["p_wilcoxon"] = float(w.statistic), float(w.pvalue)
    out["note"] = "; ".join(notes)
    return out


def holm(pvalues: Iterable[float], alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Holm step-down correction (``multipletests(method="holm")``); NaNs are left out.

    Returns:
        ``(reject, p_adjusted)`` arrays in the input order (NaN p -> False, NaN).
    """
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(list(pvalues), dtype=float)
    reject = np.zeros(p.shape, dtype=bool)
    adjusted = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        r, padj, _, _ = multipletests(p[ok], alpha=alpha, method="holm")
        reject[ok], adjusted[ok] = r, padj
    return reject, adjusted


def matched_values(df: pd.DataFrame, experiment: str, metric: str, *, at: str = "sparsity",
                   decimals: int = 3, take: str = "first") -> pd.Series:
    """Values of ``metric`` of one experiment indexed by (matched level, seed).

    With ``at="sparsity"`` the level is ``target_sparsity`` (or ``sparsity``) rounded to
    ``decimals``. When a run has several rounds at the same level (one-shot pruning keeps
    its sparsity and trains on), ``take="first"`` uses the first round that reached it
    (under IMP rewinding that model was rewound and trained one round, like every other
    run at its first arrival) and ``take="last"`` the last one. With ``at="round"`` the
    level is the round.
    """
    if at not in AT:
        raise ValueError(f"at={at!r} is not allowed; allowed: {list(AT)}")
    if take not in ("first", "last"):
        raise ValueError(f"take={take!r} is not allowed; allowed: ['first', 'last']")
    sub = df[df["experiment"] == experiment]
    if at == "sparsity":
        col = "target_sparsity" if "target_sparsity" in sub else "sparsity"
        level = sub[col].astype(float).round(decimals)
    else:
        level = sub["round"]
    sub = sub.assign(_level=level)
    if "round" in sub:
        sub = sub.sort_values("round", kind="stable")
    g = sub.groupby(["_level", "seed"], sort=True)[metric]
    out = g.first() if take == "first" else g.last()
    out.index = out.index.set_names(["level", "seed"])
    return out


def compare_experiments(df: pd.DataFrame, a: str, b: str, metric: str, *,
                        at: str = "sparsity", decimals: int = 3, exclude_dense: bool = True,
                        take: str = "first", **kwargs: Any) -> pd.DataFrame:
    """:func:`paired_test` of experiment ``b`` against ``a`` at every matched level.

    Runs are paired by seed; only seeds and levels present in both are used. With
    ``at="sparsity"`` and ``exclude_dense`` the unpruned level 0 is skipped.

    Returns:
        One row per level: ``experiment_a, experiment_b, at, level`` and the
        :func:`paired_test` fields.
    """
    for name, e in (("a", a), ("b", b)):
        if e not in set(df["experiment"]):
            raise ValueError(f"{name}={e!r} is not an experiment of the runs; "
                             f"allowed: {sorted(set(df['experiment']))}")
    if metric not in df:
        raise ValueError(f"metric={metric!r} is not a column; allowed: "
                         f"{sorted(df.select_dtypes('number').columns)}")
    va = matched_values(df, a, metric, at=at, decimals=decimals, take=take)
    vb = matched_values(df, b, metric, at=at, decimals=decimals, take=take)
    both = pd.concat({"a": va, "b": vb}, axis=1, join="inner").dropna()
    rows = []
    for level, part in both.groupby(level="level", sort=True):
        if at == "sparsity" and exclude_dense and level == 0:
            continue
        res = paired_test(part["a"].to_numpy(), part["b"].to_numpy(), **kwargs)
        rows.append({"experiment_a": a, "experiment_b": b, "at": at, "level": level, **res})
    return pd.DataFrame(rows)


def _experiment_parameters(df: pd.DataFrame, columns: Sequence[str]) -> dict[str, dict]:
    """``{experiment: {column: value}}`` from the first row of each experiment (list
    columns stored as text are parsed back)."""
    import ast

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


def one_factor_pair(factor: str, pa: Mapping[str, Any], pb: Mapping[str, Any]) -> bool:
    """Do two runs differ in ``factor`` and in nothing else that matters?

    Every other design column must be equal, except a schedule-shaping key
    (:data:`workbench.experiments.design.contrasts.SCHEDULE_KEYS`) that one of the two runs
    ignores: giving it the other run's value leaves that run's per-round targets
    unchanged (``targets`` under a constant schedule, ``n_rounds`` under a gradual one).
    That is what moves together with a factor, derived from the lottery's own
    ``round_targets`` rather than listed here.
    """
    from workbench.experiments.design.contrasts import SCHEDULE_KEYS, round_targets

    if str(pa.get(factor)) == str(pb.get(factor)):
        return False

    def ignores(params, key, value) -> bool:
        try:
            return round_targets({**params, key: value}) == round_targets(params)
        except (TypeError, ValueError):
            return False

    for key in set(pa) | set(pb):
        if key == factor or str(pa.get(key)) == str(pb.get(key)):
            continue
        if key not in SCHEDULE_KEYS:
            return False
        if not (ignores(pa, key, pb.get(key)) or ignores(pb, key, pa.get(key))):
            return False
    return True


def compare_factor(df: pd.DataFrame, factor: str, metric: str, *, at: str = "sparsity",
                   baseline: Any = None, test: str = "t", alpha: float = 0.05,
                   decimals: int = 3, exclude_dense: bool = True, take: str = "first",
                   design: Sequence[str] | None = None,
                   parameters: Mapping[str, Mapping[str, Any]] | None = None,
                   **kwargs: Any) -> pd.DataFrame:
    """Does ``factor`` change ``metric`` at matched sparsity (or round)?

    Experiments are paired when :func:`one_factor_pair` says they differ in ``factor``
    alone; each pair is compared by :func:`compare_experiments` against the
    ``baseline`` level, skipping levels at which the two are the same procedure
    (:func:`workbench.experiments.design.contrasts.testable_levels`). All rows of the table form
    one family for the Holm correction of ``test``'s p-values.

    Args:
        df: Runs from :func:`workbench.experiments.analysis.aggregate.load_runs`.
        factor: Design column, e.g. ``"init"``, ``"schedule"``, ``"steps_per_round"``.
        metric: Numeric column, e.g. ``"val_nll"``, ``"sw_survival"``.
        at: ``"sparsity"`` (matched target sparsity) or ``"round"``.
        baseline: Reference level (default :func:`baseline_level`).
        test: ``"t"`` (paired t-test) or ``"wilcoxon"`` for the Holm family.
        alpha: Family-wise error rate.
        decimals: Rounding of the sparsity used for matching.
        exclude_dense: Skip sparsity 0 (before pruning).
        take: Round used when a run stays at one level (see :func:`matched_values`).
        design: Columns that define an experiment's design (default
            :func:`design_columns`).
        parameters: ``{experiment: parameters}`` of the runs (default: read from ``df``).
        **kwargs: Passed to :func:`paired_test` (confidence, n_resamples, random_state).

    Returns:
        One row per (pair, level): ``factor, baseline, level_b, experiment_a,
        experiment_b, at, level, n, mean_a, mean_b, mean_diff, ci_low, ci_high, d_z,
        p_t, p_wilcoxon, p_holm, significant, note, ...``; empty when no pair exists.

    Raises:
        ValueError: Naming a bad ``factor``, ``metric``, ``test`` or ``at``.
    """
    from workbench.experiments.design.contrasts import Contrast, testable_levels

    if test not in TESTS:
        raise ValueError(f"test={test!r} is not allowed; allowed: {list(TESTS)}")
    if at not in AT:
        raise ValueError(f"at={at!r} is not allowed; allowed: {list(AT)}")
    design = tuple(design) if design is not None else design_columns()
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
    reject, padj = holm(out["p_t" if test == "t" else "p_wilcoxon"], alpha=alpha)
    out["test"] = test
    out["p_holm"] = padj
    out["significant"] = reject
    front = list(TABLE_COLUMNS)
    return out[front + [c for c in out if c not in front]]


def describe(table: pd.DataFrame, *, alpha: float = 0.05, digits: int = 3) -> str:
    """A findings paragraph generated from a :func:`compare_factor` table (or several).

    Lists the comparisons significant after Holm with their effect sizes, then those that
    are not, and the Wilcoxon caveat when n is too small.
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
    n_min = int(table["n"].min())
    if wilcoxon_min_p(n_min) >= alpha:
        parts.append(f"With n = {n_min} seeds per pair the exact Wilcoxon signed-rank test "
                     f"cannot reach p < {alpha:g} (smallest p = {wilcoxon_min_p(n_min):.3g}), "
                     "so only the t-test can detect a difference; more seeds are needed for a "
                     "non-parametric confirmation.")
    return " ".join(parts)


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
    out = pd.concat(tables, ignore_index=True)
    reject, padj = holm(out["p_t" if test == "t" else "p_wilcoxon"], alpha=alpha)
    out["p_holm"], out["significant"] = padj, reject
    return out
