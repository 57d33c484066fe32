"""Declared questions and contrasts: what an experiment grid is meant to answer.

A spec lists its questions; each question names the contrasts that answer it::

    questions:
      schedule:
        question: "One-shot vs iterative: does a gradual schedule protect SW?"
        metrics: [sw_survival, val_nll]          # default metrics of its contrasts
        contrasts:
          schedule_oneshot_vs_gradual: {a: I1, b: D1, at: sparsity, levels: [0.2], take: last}
      variance:
        question: "How much run-to-run variance is there?"
        describe: [val_nll, sw_survival]         # per-experiment sd over seeds, no test

A **contrast** compares experiment ``b`` against the reference ``a`` on runs paired by
seed, matched by ``at``:

* ``sparsity``: the target sparsity both runs reached (``levels`` restricts it; the dense
  level 0 is never tested); ``take: first`` uses the first round that reached a level
  (default), ``take: last`` the last one (a one-shot run that keeps training at 0.2).
* ``round``: the same round (round 0, the dense training, is compared only when the two
  procedures already differ there, e.g. in their initial weights θ0).
* ``run``: one value per run from its summary (``winning_ticket_score``,
  ``optimal_sparsity``, ``critical_sparsity``).

``expect`` (``differ`` | ``higher`` | ``lower``: b relative to a) states the hypothesis
the verdict is judged against.

**Identical procedures are refused.** Two runs are the same procedure up to round ``k``
when every parameter that is not part of the pruning schedule is equal (the
experiment's resolved parameters, the schedule keys :data:`SCHEDULE_KEYS` excepted),
their per-round target sparsities (:meth:`workbench.lottery.schema.IMPConfig.round_targets`)
agree on rounds ``1..k`` and, for ``k > 1``, the schedule is the same (round 1 of every
schedule prunes the dense-trained model to its first target and rewinds; later rounds of
a one-shot schedule do not rewind). Comparing them tests noise against itself (e.g. I1
vs B2 at sparsity 0.20 with ``take: first``: same mask, same rewind, same batches).
Levels where the two procedures are identical are dropped; a contrast left with no
level is an error when the spec is loaded (as written) and a reported, untested row
when a profile makes them identical (e.g. 1k and 3k steps both scaled to 1 step).

Every name is checked when the spec is loaded, before anything runs: unknown
experiments, keys, ``at``/``take``/``expect`` values and metrics are ``ValueError`` s
naming the contrast and the allowed values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from workbench.core.checks import check_keys

AT = ("sparsity", "round", "run")
TAKE = ("first", "last")
EXPECT = ("differ", "higher", "lower")
QUESTION_KEYS = ("question", "metrics", "contrasts", "describe", "auto", "notes")
CONTRAST_KEYS = ("a", "b", "at", "metrics", "levels", "take", "expect", "notes")
#: Parameters that only shape the per-round target sparsities (compared through
#: ``round_targets`` instead of directly).
SCHEDULE_KEYS = ("schedule", "prune_pct", "targets", "n_rounds", "control",
                 "negative_prune_pct")
#: Parameters that name or place a run, never part of its procedure.
IDENTITY_KEYS = ("experiment", "seed", "output_dir", "run_dir")
#: Per-run summary scalars usable with ``at: run``.
RUN_METRICS = ("winning_ticket_score", "optimal_sparsity", "critical_sparsity")
#: Decimals of the sparsity used to match levels.
DECIMALS = 3


@dataclass(frozen=True)
class Contrast:
    """One declared comparison: experiment ``b`` against reference ``a``."""

    name: str
    question: str
    a: str
    b: str
    at: str = "sparsity"
    metrics: tuple[str, ...] = ()
    levels: tuple[float, ...] | None = None
    take: str = "first"
    expect: str = "differ"


@dataclass(frozen=True)
class Question:
    """A question of the spec, answered by its contrasts (or described)."""

    name: str
    text: str
    contrasts: tuple[Contrast, ...] = ()
    describe: tuple[str, ...] = ()
    auto: tuple[str, ...] = ()
    metrics: tuple[str, ...] = field(default=())


# ----------------------------------------------------------------------------- parsing
def _names(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where} must be a name or a list of names, got {value!r}")
    return tuple(value)


def _choice(value: Any, allowed: Sequence[str], key: str, where: str) -> str:
    if value not in allowed:
        raise ValueError(f"{where}: {key}={value!r} is not allowed; allowed: {list(allowed)}")
    return value


def parse_questions(raw: Any, experiments: Mapping[str, Mapping[str, Any]], *,
                    where: str = "questions",
                    metrics: Sequence[str] | None = None) -> dict[str, Question]:
    """Validate a spec's ``questions`` section.

    Args:
        raw: The mapping ``{question id: {question, metrics, contrasts, describe, auto}}``
            (``None``: no questions).
        experiments: ``{experiment: parameters}`` as written (no profile), to check the
            names and refuse identical procedures.
        where: Prefix of error messages (the spec file).
        metrics: Known metric names (record columns and summary scalars); ``None`` skips
            the check.

    Returns:
        ``{question id: Question}`` in spec order.

    Raises:
        ValueError: Naming the question/contrast, the bad key or value and what is allowed.
    """
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where} must be a mapping of question id -> question")
    out: dict[str, Question] = {}
    seen: set[str] = set()
    for qid, body in raw.items():
        w = f"{where}.{qid}"
        check_keys(body, QUESTION_KEYS, w)
        text = body.get("question")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{w}: 'question' (the question in words) is required")
        qmetrics = _names(body.get("metrics", ()), f"{w}.metrics")
        describe = _names(body.get("describe", ()), f"{w}.describe")
        auto = _names(body.get("auto", ()), f"{w}.auto")
        _check_auto_factors(auto, experiments, f"{w}.auto")
        for m in (*qmetrics, *describe):
            _check_metric(m, metrics, f"{w}")
        items = body.get("contrasts") or {}
        if not isinstance(items, Mapping):
            raise ValueError(f"{w}.contrasts must be a mapping of contrast name -> "
                             "{a, b, at, ...}")
        if not items and not describe and not auto:
            raise ValueError(f"{w}: a question needs contrasts, describe or auto")
        contrasts = []
        for cname, c in items.items():
            cw = f"{w}.contrasts.{cname}"
            if cname in seen:
                raise ValueError(f"{cw}: contrast name {cname!r} is used twice")
            seen.add(cname)
            contrasts.append(_parse_contrast(str(cname), str(qid), c, experiments, qmetrics,
                                             metrics, cw))
        out[str(qid)] = Question(str(qid), text.strip(), tuple(contrasts), describe, auto,
                                 qmetrics)
    return out


def _check_auto_factors(auto: Sequence[str], experiments: Mapping[str, Mapping[str, Any]],
                        where: str) -> None:
    """``auto`` factors are parameters the experiments set (``[inti]`` is a typo).

    Raises:
        ValueError: Naming the unknown factors and the allowed ones.
    """
    known = sorted({k for params in experiments.values() for k in params})
    unknown = [f for f in auto if f not in known]
    if unknown:
        raise ValueError(f"{where}: {unknown} are not parameters of the experiments; "
                         f"allowed factors: {known}")


def _check_levels_reached(levels: Sequence[float], a: str, b: str,
                          experiments: Mapping[str, Mapping[str, Any]], at: str, take: str,
                          where: str) -> None:
    """Every requested level is reached by both experiments (else it is never compared).

    Raises:
        ValueError: Naming the levels, the experiment that does not reach them and the
            levels both reach.
    """
    pa = planned_rounds(experiments[a], at, take)
    pb = planned_rounds(experiments[b], at, take)
    both = sorted(set(pa) & set(pb))
    for lv in levels:
        missing = [e for e, p in ((a, pa), (b, pb)) if lv not in p]
        if missing:
            raise ValueError(f"{where}: levels: {at} level {lv} is never reached by "
                             f"{' and '.join(missing)}; levels both reach: {both}")


def _check_metric(metric: str, known: Sequence[str] | None, where: str) -> None:
    if known is not None and metric not in known:
        raise ValueError(f"{where}: unknown metric {metric!r}; allowed: {sorted(known)}")


def _parse_contrast(name: str, qid: str, c: Any, experiments, qmetrics, known,
                    where: str) -> Contrast:
    check_keys(c, CONTRAST_KEYS, where)
    for key in ("a", "b"):
        if key not in c:
            raise ValueError(f"{where}: missing {key!r} (an experiment id)")
        if c[key] not in experiments:
            raise ValueError(f"{where}: {key}={c[key]!r} is not an experiment of the spec; "
                             f"allowed: {sorted(experiments)}")
    if c["a"] == c["b"]:
        raise ValueError(f"{where}: a and b are both {c['a']!r}")
    at = _choice(c.get("at", "sparsity"), AT, "at", where)
    take = _choice(c.get("take", "first"), TAKE, "take", where)
    expect = _choice(c.get("expect", "differ"), EXPECT, "expect", where)
    cmetrics = _names(c.get("metrics", qmetrics), f"{where}.metrics")
    if not cmetrics:
        raise ValueError(f"{where}: no metrics (give 'metrics' here or in the question)")
    for m in cmetrics:
        if at == "run" and m not in RUN_METRICS:
            raise ValueError(f"{where}: metric {m!r} is not a per-run summary; with at='run' "
                             f"allowed: {list(RUN_METRICS)}")
        if at != "run":
            _check_metric(m, known, where)
    levels = c.get("levels")
    if levels is not None:
        if at == "run":
            raise ValueError(f"{where}: levels do not apply to at='run'")
        if (not isinstance(levels, (list, tuple)) or not levels
                or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in levels)):
            raise ValueError(f"{where}: levels must be a non-empty list of numbers, "
                             f"got {levels!r}")
        levels = tuple(round(float(v), DECIMALS) if at == "sparsity" else int(v)
                       for v in levels)
    if levels is not None:
        _check_levels_reached(levels, c["a"], c["b"], experiments, at, take, where)
    contrast = Contrast(name, qid, c["a"], c["b"], at, cmetrics, levels, take, expect)
    testable = testable_levels(contrast, experiments[c["a"]], experiments[c["b"]])
    if not testable:
        raise ValueError(
            f"{where}: {c['a']} and {c['b']} are the same procedure at every matched "
            f"{at} level{'' if levels is None else f' {list(levels)}'} "
            f"(take={take!r}); comparing them tests noise against itself. Match on "
            f"another level, use take: last, or compare other experiments")
    return contrast


def questions_to_raw(questions: Mapping[str, Question]) -> dict[str, Any]:
    """The spec-file form of parsed questions (inverse of :func:`parse_questions`)."""
    out: dict[str, Any] = {}
    for q in questions.values():
        body: dict[str, Any] = {"question": q.text}
        for key in ("metrics", "describe", "auto"):
            if getattr(q, key):
                body[key] = list(getattr(q, key))
        if q.contrasts:
            body["contrasts"] = {
                c.name: {"a": c.a, "b": c.b, "at": c.at, "metrics": list(c.metrics),
                         "take": c.take, "expect": c.expect,
                         **({"levels": list(c.levels)} if c.levels is not None else {})}
                for c in q.contrasts}
        out[q.name] = body
    return out


# ----------------------------------------------------------------------------- procedures
def round_targets(params: Mapping[str, Any]) -> list[float]:
    """Cumulative target sparsity of rounds 1..R of a run with these parameters, from
    :meth:`workbench.lottery.schema.IMPConfig.round_targets` (the lottery's own rule)."""
    from workbench.lottery import schema

    names = {f.name for f in schema.config_fields()}
    cfg = {k: v for k, v in params.items() if k in names and k not in IDENTITY_KEYS}
    return list(schema.IMPConfig.from_params(cfg).round_targets())


def _procedure_key(params: Mapping[str, Any], rnd: int) -> tuple:
    """Everything that determines a run up to round ``rnd`` (see the module docstring)."""
    other = tuple(sorted((k, repr(v)) for k, v in params.items()
                         if k not in SCHEDULE_KEYS and k not in IDENTITY_KEYS))
    targets = tuple(round(t, 9) for t in round_targets(params)[:rnd])
    schedule = params.get("schedule") if rnd > 1 else None
    return other, targets, schedule


def planned_rounds(params: Mapping[str, Any], at: str, take: str = "first") -> dict:
    """``{level: round}`` a run reaches: sparsity levels (rounded to :data:`DECIMALS`,
    dense excluded) with the first or last round at each, or rounds 0..R."""
    targets = round_targets(params)
    if at == "round":  # round 0 (dense training) too: it differs when e.g. theta0 does
        return {r: r for r in range(0, len(targets) + 1)}
    out: dict = {}
    for r, t in enumerate(targets, start=1):
        level = round(float(t), DECIMALS)
        if level == 0:
            continue
        if take == "last" or level not in out:
            out[level] = r
    return out


def testable_levels(contrast: Contrast, params_a: Mapping[str, Any],
                    params_b: Mapping[str, Any]) -> dict:
    """``{level: (round_a, round_b)}`` of the contrast's matched levels at which the two
    procedures differ (``at='run'``: ``{"run": (R_a, R_b)}`` unless the whole runs are
    identical). Levels where they are the same procedure are left out."""
    if contrast.at == "run":
        ra, rb = len(round_targets(params_a)), len(round_targets(params_b))
        same = _procedure_key(params_a, ra) == _procedure_key(params_b, rb)
        return {} if same else {"run": (ra, rb)}
    pa = planned_rounds(params_a, contrast.at, contrast.take)
    pb = planned_rounds(params_b, contrast.at, contrast.take)
    levels = sorted(set(pa) & set(pb))
    if contrast.levels is not None:
        levels = [lv for lv in levels if lv in contrast.levels]
    return {lv: (pa[lv], pb[lv]) for lv in levels
            if _procedure_key(params_a, pa[lv]) != _procedure_key(params_b, pb[lv])}


# ----------------------------------------------------------------------------- analysis
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
        summaries: Per-run summaries (:func:`workbench.experiments.analysis.aggregate.load_summaries`)
            for ``at='run'`` contrasts.
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
    from workbench.experiments.analysis import stats

    if test not in stats.TESTS:
        raise ValueError(f"test={test!r} is not allowed; allowed: {list(stats.TESTS)}")
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
                both = pd.concat({"a": va, "b": vb}, axis=1, join="inner")
                both = both[np.isfinite(both).all(axis=1)]
                for level, (ra, rb) in levels.items():
                    if level not in both.index.get_level_values("level"):
                        rows.append({**base, "metric": metric, "level": level, "round_a": ra,
                                     "round_b": rb, "n": 0, "note": "no paired seeds"})
                        continue
                    part = both.xs(level, level="level")
                    res = stats.paired_test(part["a"].to_numpy(), part["b"].to_numpy(),
                                            alpha=alpha, **kwargs)
                    rows.append({**base, "metric": metric, "level": level, "round_a": ra,
                                 "round_b": rb, **res,
                                 "sd_a": float(part["a"].std(ddof=1)) if len(part) > 1
                                 else math.nan,
                                 "sd_b": float(part["b"].std(ddof=1)) if len(part) > 1
                                 else math.nan})
    out = pd.DataFrame(rows)
    for col in COLUMNS:
        if col not in out:
            out[col] = np.nan
    if len(out):
        reject, padj = stats.holm(out["p_t" if test == "t" else "p_wilcoxon"], alpha=alpha)
        out["p_holm"], out["significant"], out["test"] = padj, reject, test
    return out[list(COLUMNS) + [c for c in out if c not in COLUMNS]]


def minimal_detectable_effect(n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest |d_z| a two-sided paired t-test with ``n`` pairs detects with ``power``
    (:class:`statsmodels.stats.power.TTestPower`); ``inf`` for n < 2."""
    if n < 2:
        return math.inf
    from statsmodels.stats.power import TTestPower

    return float(TTestPower().solve_power(nobs=n, alpha=alpha, power=power))


def verdict(rows: pd.DataFrame, expect: str = "differ", *, alpha: float = 0.05) -> str:
    """One-line verdict for the rows of one contrast and metric (or one question).

    * ``supported``: a Holm-significant difference in the expected direction and none
      against it;
    * ``not supported``: a Holm-significant difference against the expected direction,
      or no significant difference with enough seeds to detect ``|d_z| >= 1`` with 80 %
      power;
    * ``inconclusive``: nothing significant and too few seeds (the power caveat gives
      the smallest effect the test could detect), or nothing testable.
    """
    tested = rows[rows["p_holm"].notna()] if len(rows) else rows
    if not len(tested):
        const = rows[(rows.get("n", 0) > 1) & rows.get("mean_diff", np.nan).notna()
                     & (rows.get("mean_diff", 0) != 0)] if len(rows) and "n" in rows else rows[:0]
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
    mde = minimal_detectable_effect(n, alpha)
    if mde <= 1.0:
        return f"not supported: no significant difference (n={n} detects |d_z| >= {mde:.2f})"
    return (f"inconclusive: no significant difference, but with n={n} seeds the paired "
            f"t-test only detects |d_z| >= {mde:.1f} with 80 % power")
