"""The paired test and the Holm table: statistics of runs paired by seed.

A leaf module (numpy, pandas, scipy and statsmodels only; nothing of
``workbench.experiments``): every table of paired comparisons in the analysis (the
declared contrasts, :mod:`workbench.experiments.analysis.contrasts`; the automatic
one-factor pairs and the one-shot comparisons, :mod:`workbench.experiments.analysis.factors`)
is built from

* :func:`paired_by_level`: values of two conditions indexed by ``(level, seed)``, paired by
  seed within each level, each level tested by :func:`paired_test`;
* :func:`paired_test`: the paired differences ``d = b - a`` (one per seed): paired t-test
  (:func:`scipy.stats.ttest_rel`), Wilcoxon signed-rank (:func:`scipy.stats.wilcoxon`),
  effect size ``d_z = mean(d) / sd(d)`` and a percentile bootstrap CI of ``mean(d)``
  (:func:`scipy.stats.bootstrap`); below :data:`MIN_TEST_N` pairs it is "not testable";
* :func:`holm_table`: one family's p-values Holm-corrected
  (``statsmodels.stats.multitest.multipletests(method="holm")``, :func:`holm`).

With n paired seeds the smallest two-sided p the exact Wilcoxon test can give is
``2 / 2**n``; for n <= 5 that is >= 0.0625, so it can never reach p < 0.05. The results
say so (``wilcoxon_can_reach``) instead of reporting "not significant" without comment.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

#: Tests whose p-values a Holm family corrects (``"t"``: paired t, ``"wilcoxon"``).
TESTS = ("t", "wilcoxon")
#: How :func:`matched_values` matches runs: same target sparsity or same round.
AT = ("sparsity", "round")


def wilcoxon_min_p(n: int) -> float:
    """Smallest two-sided p-value of the exact Wilcoxon signed-rank test with n pairs."""
    return min(1.0, 2.0 / 2**n) if n > 0 else 1.0


#: Fewest pairs a paired test is run on: with n = 2 the t-test has one degree of freedom
#: (its p-value rests on a single sd estimate from two differences, and Wilcoxon cannot
#: go below p = 0.5), so below this the comparison is reported as not testable (our
#: choice of threshold).
MIN_TEST_N = 3


def not_testable_note(n: int) -> str:
    """Why a comparison of ``n < MIN_TEST_N`` pairs is not tested (the findings say it)."""
    return (f"not testable: n={n} pairs < {MIN_TEST_N} (a paired t-test on {n} "
            f"pair(s) has {max(n - 1, 0)} degree(s) of freedom)")


def check_test(test: str) -> None:
    """``test`` is one of :data:`TESTS`.

    Raises:
        ValueError: Naming the value and the allowed ones.
    """
    if test not in TESTS:
        raise ValueError(f"test={test!r} is not allowed; allowed: {list(TESTS)}")


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
        wilcoxon_can_reach, d_z, ci_low, ci_high, sd_a, sd_b, note`` where diff = b - a
        and ``sd_a``, ``sd_b`` are the sample sds (ddof=1) of each arm (NaN for n < 2).
        Below :data:`MIN_TEST_N` pairs no test is run: the means are given, the
        statistics and p-values are NaN and ``note`` says "not testable" and why
        (:func:`not_testable_note`).

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
        "sd_a": float(a.std(ddof=1)) if n > 1 else math.nan,
        "sd_b": float(b.std(ddof=1)) if n > 1 else math.nan,
    }
    notes = []
    if not out["wilcoxon_can_reach"]:
        notes.append(f"n={n}: exact Wilcoxon cannot reach p<{alpha:g} "
                     f"(smallest two-sided p = {wilcoxon_min_p(n):.3g})")
    if n < MIN_TEST_N:
        notes.append(not_testable_note(n))
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


def holm_table(table: pd.DataFrame, *, test: str = "t",
               alpha: float = 0.05) -> pd.DataFrame:
    """One Holm family: every row of ``table`` with a p-value of ``test``.

    Args:
        table: Rows with ``p_t`` and ``p_wilcoxon`` (from :func:`paired_test`); rows whose
            p-value is NaN (not testable, no data) are not in the family.
        test: ``"t"`` or ``"wilcoxon"``: whose p-values are corrected.
        alpha: Family-wise error rate.

    Returns:
        ``table`` with ``test``, ``p_holm`` and ``significant`` set (replaced where present,
        else appended), rows in the same order.

    Raises:
        ValueError: On a bad ``test``.
    """
    check_test(test)
    reject, padj = holm(table["p_t" if test == "t" else "p_wilcoxon"], alpha=alpha)
    return table.assign(test=test, p_holm=padj, significant=reject)


def minimal_detectable_effect(n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest |d_z| a two-sided paired t-test with ``n`` pairs detects with ``power``
    (:class:`statsmodels.stats.power.TTestPower`); ``inf`` for n < 2."""
    if n < 2:
        return math.inf
    from statsmodels.stats.power import TTestPower

    return float(TTestPower().solve_power(nobs=n, alpha=alpha, power=power))


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


def paired_by_level(a: pd.Series, b: pd.Series, *, levels: Iterable[Any] | None = None,
                    alpha: float = 0.05, **kwargs: Any) -> dict[Any, dict[str, Any]]:
    """The paired comparison of condition ``b`` against ``a`` at every matched level.

    Values are paired by seed within each level (only seeds present in both with finite
    values in both), and each level is tested by :func:`paired_test`.

    Args:
        a: Reference values indexed by ``(level, seed)`` (e.g. :func:`matched_values`).
        b: The other condition, same index names.
        levels: Levels to test (default: every level with a pair); one without a pair is
            left out of the result.
        alpha: Passed to :func:`paired_test`.
        **kwargs: Passed to :func:`paired_test` (confidence, n_resamples, random_state).

    Returns:
        ``{level: paired_test result}`` in ascending level order.
    """
    both = pd.concat({"a": a, "b": b}, axis=1, join="inner")
    both = both[np.isfinite(both.astype(float)).all(axis=1)]
    wanted = None if levels is None else set(levels)
    out = {}
    for level, part in both.groupby(level="level", sort=True):
        if wanted is not None and level not in wanted:
            continue
        out[level] = paired_test(part["a"].to_numpy(dtype=float),
                                 part["b"].to_numpy(dtype=float), alpha=alpha, **kwargs)
    return out
