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
experiment's resolved parameters, the schedule keys
:data:`~workbench.experiments.design.procedures.SCHEDULE_KEYS` excepted), their
per-round target sparsities (:meth:`workbench.lottery.schema.IMPConfig.round_targets`)
agree on rounds ``1..k`` and, for ``k > 1``, the schedule is the same
(:func:`workbench.experiments.design.procedures.procedure_key`). Comparing them tests
noise against itself (e.g. I1
vs B2 at sparsity 0.20 with ``take: first``: same mask, same rewind, same batches).
Levels where the two procedures are identical are dropped; a contrast left with no
level is an error when the spec is loaded (as written) and a reported, untested row
when a profile makes them identical (e.g. 1k and 3k steps both scaled to 1 step).

Every name is checked when the spec is loaded, before anything runs: unknown
experiments, keys, ``at``/``take``/``expect`` values and metrics are ``ValueError`` s
naming the contrast and the allowed values.

This module only declares: the contrasts are computed, tested and judged by
:mod:`workbench.experiments.analysis.contrasts`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from workbench.core.checks import check_keys
from workbench.experiments.design.procedures import procedure_key, round_targets

AT = ("sparsity", "round", "run")
TAKE = ("first", "last")
EXPECT = ("differ", "higher", "lower")
QUESTION_KEYS = ("question", "metrics", "contrasts", "describe", "auto", "notes")
CONTRAST_KEYS = ("a", "b", "at", "metrics", "levels", "take", "expect", "notes")
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


# ----------------------------------------------------------------------------- levels
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
        same = procedure_key(params_a, ra) == procedure_key(params_b, rb)
        return {} if same else {"run": (ra, rb)}
    pa = planned_rounds(params_a, contrast.at, contrast.take)
    pb = planned_rounds(params_b, contrast.at, contrast.take)
    levels = sorted(set(pa) & set(pb))
    if contrast.levels is not None:
        levels = [lv for lv in levels if lv in contrast.levels]
    return {lv: (pa[lv], pb[lv]) for lv in levels
            if procedure_key(params_a, pa[lv]) != procedure_key(params_b, pb[lv])}
