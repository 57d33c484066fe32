"""The declared contrasts computed: paired tests, one Holm family, one-line verdicts.

The contrasts are declared in the spec and parsed by
:mod:`workbench.experiments.design.contrasts` (what to compare, at which levels, which
levels are testable). Here they are computed on finished runs:
:func:`compute_contrasts` pairs the runs of ``a`` and ``b`` by seed at every testable
level (:func:`workbench.experiments.analysis.stats.paired_by_level`) and corrects every
tested row as one Holm family (:func:`workbench.experiments.analysis.stats.holm_table`);
:func:`verdict` judges the rows of one contrast against its ``expect``.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd

from workbench.experiments.analysis import stats
from workbench.experiments.design.contrasts import DECIMALS, Question, testable_levels

#: Leading columns of :func:`compute_contrasts`.
COLUMNS = ("question", "contrast", "a", "b", "metric", "at", "level", "round_a", "round_b",
           "n", "mean_a", "sd_a", "mean_b", "sd_b", "mean_diff", "ci_low", "ci_high", "d_z",
           "p_t", "p_wilcoxon", "test", "p_holm", "significant", "expect", "note")


def _run_values(summaries: pd.DataFrame, experiment: str, metric: str) -> pd.Series:
    sub = summaries[summaries["experiment"] == experiment]
    s = sub.set_index("seed")[metric].astype(float)
    s.index = pd.MultiIndex.from_arrays([["run"] * len(s), s.index], names=["level", "seed"])
    return s


def compute_contrasts(df: pd.DataFrame, questions: Mapping[str, Question],
                      parameters: Mapping[str, Mapping[str, Any]], *,
                      summaries: pd.DataFrame | None = None, alpha: float = 0.05,
                      test: str = "t", **kwargs: Any) -> pd.DataFrame:
    """Exactly the declared contrasts, on runs paired by seed, Holm-corrected as one family.

    Args:
        df: Records from :func:`workbench.experiments.analysis.aggregate.load_runs`.
        questions: From the spec (:attr:`workbench.experiments.design.specs.Spec.questions`).
        parameters: ``{experiment: parameters}`` the runs were made with (the spec under
            the analysed profile), used to drop identical-procedure levels.
        summaries: Per-run summaries
            (:func:`workbench.experiments.analysis.aggregate.load_summaries`) for
            ``at='run'`` contrasts.
        alpha: Family-wise error rate of the Holm correction (over every tested row).
        test: ``"t"`` (paired t-test) or ``"wilcoxon"`` for the Holm family.
        **kwargs: Passed to :func:`workbench.experiments.analysis.stats.paired_test`.

    Returns:
        One row per (contrast, metric, level), columns :data:`COLUMNS` first. A contrast
        without data or identical under this profile gets one row with ``n = 0`` and a
        note saying why (never silently missing).

    Raises:
        ValueError: On a bad ``test`` or a metric missing from the runs (naming it).
    """
    stats.check_test(test)
    rows = []
    present = set(df["experiment"]) if "experiment" in df else set()
    for q in questions.values():
        for c in q.contrasts:
            base = dict(question=q.name, contrast=c.name, a=c.a, b=c.b, at=c.at,
                        expect=c.expect)
            levels = testable_levels(c, parameters[c.a], parameters[c.b])
            for metric in c.metrics:
                missing = [e for e in (c.a, c.b) if e not in present]
                if missing or not levels:
                    why = (f"no finished runs of {missing}" if missing else
                           "identical procedures under this profile at every level")
                    rows.append({**base, "metric": metric, "n": 0, "note": why})
                    continue
                if c.at == "run":
                    if summaries is None or metric not in summaries:
                        raise ValueError(f"contrast {c.name}: per-run metric {metric!r} needs "
                                         "summaries with that column")
                    va, vb = (_run_values(summaries, e, metric) for e in (c.a, c.b))
                else:
                    if metric not in df:
                        raise ValueError(f"contrast {c.name}: metric {metric!r} is not a "
                                         f"column of the runs; available: "
                                         f"{sorted(df.select_dtypes('number').columns)}")
                    va, vb = (stats.matched_values(df, e, metric, at=c.at, decimals=DECIMALS,
                                                   take=c.take) for e in (c.a, c.b))
                tested = stats.paired_by_level(va, vb, levels=list(levels), alpha=alpha,
                                               **kwargs)
                for level, (ra, rb) in levels.items():
                    if level not in tested:
                        rows.append({**base, "metric": metric, "level": level, "round_a": ra,
                                     "round_b": rb, "n": 0, "note": "no paired seeds"})
                        continue
                    rows.append({**base, "metric": metric, "level": level, "round_a": ra,
                                 "round_b": rb, **tested[level]})
    out = pd.DataFrame(rows)
    for col in COLUMNS:
        if col not in out:
            out[col] = np.nan
    if len(out):
        out = stats.holm_table(out, test=test, alpha=alpha)
    return out[list(COLUMNS) + [c for c in out if c not in COLUMNS]]


def verdict(rows: pd.DataFrame, expect: str = "differ", *, alpha: float = 0.05) -> str:
    """One-line verdict for the rows of one contrast and metric (or one question).

    * ``supported``: a Holm-significant difference in the expected direction and none
      against it;
    * ``not supported``: a Holm-significant difference against the expected direction,
      or no significant difference with enough seeds to detect ``|d_z| >= 1`` with 80 %
      power;
    * ``inconclusive``: nothing significant and too few seeds (the power caveat gives
      the smallest effect the test could detect), or nothing testable: fewer than
      :data:`~workbench.experiments.analysis.stats.MIN_TEST_N` paired seeds (the reason
      is given), zero variance of the paired differences, or no data.
    """
    tested = rows[rows["p_holm"].notna()] if len(rows) else rows
    if not len(tested):
        n = rows["n"].fillna(0) if len(rows) and "n" in rows else pd.Series(0, index=rows.index)
        const = rows[(n >= stats.MIN_TEST_N) & rows.get("mean_diff", np.nan).notna()
                     & (rows.get("mean_diff", 0) != 0)] if len(rows) and "n" in rows else rows[:0]
        few = rows[(n > 0) & (n < stats.MIN_TEST_N)]
        if len(few) and not len(const):
            return f"inconclusive ({stats.not_testable_note(int(few['n'].max()))})"
        if len(const):
            diffs = ", ".join(f"{d:+.3g}" for d in const["mean_diff"].astype(float))
            return (f"inconclusive (untestable): b - a = {diffs} identically in every seed "
                    f"(zero variance, n={int(const['n'].min())})")
        notes = sorted({str(n) for n in rows.get("note", pd.Series([], dtype=object)).dropna()
                        if str(n)})
        return "inconclusive: nothing testable" + (f" ({'; '.join(notes)})" if notes else "")
    sig = tested[tested["significant"].astype(bool)]
    sign = np.sign(sig["mean_diff"].astype(float))
    want = {"higher": 1, "lower": -1}.get(expect)
    if len(sig):
        if want is None:
            ups, downs = int((sign > 0).sum()), int((sign < 0).sum())
            way = ("higher" if ups and not downs else "lower" if downs and not ups
                   else "higher and lower")
            return (f"supported: b is {way} than a ({len(sig)} of {len(tested)} tests "
                    f"significant after Holm)")
        if (sign == want).all():
            return f"supported: b is {expect} ({len(sig)} of {len(tested)} tests, Holm)"
        if (sign == -want).all():
            return (f"not supported: b is significantly "
                    f"{'lower' if want == 1 else 'higher'}, against the expectation")
        return "inconclusive: significant differences in both directions"
    n = int(tested["n"].min())
    mde = stats.minimal_detectable_effect(n, alpha)
    if mde <= 1.0:
        return f"not supported: no significant difference (n={n} detects |d_z| >= {mde:.2f})"
    return (f"inconclusive: no significant difference, but with n={n} seeds the paired "
            f"t-test only detects |d_z| >= {mde:.1f} with 80 % power")
