"""Procedures and their identity: which parameters make two runs the same experiment.

The one place that says what a run's parameters mean for the design of a grid:

* :func:`schema_fields`, :func:`design_keys`, :func:`scalable_keys`: the lottery schema's
  fields, its design factors and those a profile may scale
  (:mod:`workbench.lottery.schema` is the source; nothing is restated here);
* :data:`RESERVED_KEYS`: parameters the grid fills in per cell; they name or place a run
  and are never part of its procedure;
* :data:`SCHEDULE_KEYS`: parameters that only shape the per-round target sparsities
  (:func:`round_targets`), compared through those targets rather than one by one;
* :func:`procedure_key`: everything that determines a run up to round ``k`` (two runs
  with equal keys are the same procedure: comparing them tests noise against itself);
* :func:`one_factor_pair`: do two runs differ in one factor and nothing else that
  matters?

Nothing here reads runs or tests anything: :mod:`workbench.experiments.design.contrasts`
(what a grid declares to compare) and :mod:`workbench.experiments.analysis` (the
computation) build on it.
"""

from __future__ import annotations

from typing import Any, Mapping

#: Parameters the grid fills in per cell (a spec may not set them). They name or place a
#: run (``experiment``, ``seed``, ``output_dir``, ``run_dir``) or carry the parameters
#: themselves (``config``, notebook 04), so they are never part of its procedure.
RESERVED_KEYS = ("experiment", "seed", "output_dir", "run_dir", "config")
#: Parameters that only shape the per-round target sparsities (compared through
#: :func:`round_targets` instead of directly).
SCHEDULE_KEYS = ("schedule", "prune_pct", "targets", "n_rounds", "control",
                 "negative_prune_pct")


def _schema():
    """The lottery schema module (imported on use: it loads torch through
    :mod:`workbench.lottery.train`)."""
    from workbench.lottery import schema

    return schema


def schema_fields() -> dict[str, Any]:
    """``{name: FieldSpec}`` of the lottery schema's fields
    (:func:`workbench.lottery.schema.config_fields`)."""
    return {f.name: f for f in _schema().config_fields()}


def design_keys() -> tuple[str, ...]:
    """Design factors of the lottery schema (:func:`workbench.lottery.schema.design_keys`):
    the parameters that define an experiment's design (a profile may not set them)."""
    return tuple(_schema().design_keys())


def scalable_keys() -> tuple[str, ...]:
    """Design keys a profile may scale (:func:`workbench.lottery.schema.scalable_keys`)."""
    return tuple(_schema().scalable_keys())


def renamed_keys() -> dict[str, str]:
    """Renamed config keys, old -> new (:data:`workbench.lottery.schema.RENAMED_KEYS`): an
    old key is refused naming the new one."""
    return dict(_schema().RENAMED_KEYS)


def from_params(params: Mapping[str, Any]):
    """:meth:`workbench.lottery.schema.IMPConfig.from_params` of ``params`` (the schema's
    per-field checks and cross-field rules).

    Raises:
        TypeError, ValueError: As the schema raises them.
    """
    return _schema().IMPConfig.from_params(params)


def round_targets(params: Mapping[str, Any]) -> list[float]:
    """Cumulative target sparsity of rounds 1..R of a run with these parameters, from
    :meth:`workbench.lottery.schema.IMPConfig.round_targets` (the lottery's own rule).

    Keys that are not schema fields, and :data:`RESERVED_KEYS`, are ignored.
    """
    names = set(schema_fields())
    cfg = {k: v for k, v in params.items() if k in names and k not in RESERVED_KEYS}
    return list(from_params(cfg).round_targets())


def procedure_key(params: Mapping[str, Any], rnd: int) -> tuple:
    """Everything that determines a run up to round ``rnd``.

    Two runs are the same procedure up to round ``k`` when every parameter that is not
    part of the pruning schedule is equal (:data:`SCHEDULE_KEYS` and
    :data:`RESERVED_KEYS` excepted), their per-round targets (:func:`round_targets`)
    agree on rounds ``1..k`` and, for ``k > 1``, the schedule is the same (round 1 of
    every schedule prunes the dense-trained model to its first target and rewinds; later
    rounds of a one-shot schedule do not rewind).

    Returns:
        ``(other parameters, targets of rounds 1..rnd, schedule or None)``, comparable
        with ``==``.
    """
    other = tuple(sorted((k, repr(v)) for k, v in params.items()
                         if k not in SCHEDULE_KEYS and k not in RESERVED_KEYS))
    targets = tuple(round(t, 9) for t in round_targets(params)[:rnd])
    schedule = params.get("schedule") if rnd > 1 else None
    return other, targets, schedule


def one_factor_pair(factor: str, pa: Mapping[str, Any], pb: Mapping[str, Any]) -> bool:
    """Do two runs differ in ``factor`` and in nothing else that matters?

    Every other parameter must be equal, except a schedule-shaping key
    (:data:`SCHEDULE_KEYS`) that one of the two runs ignores: giving it the other run's
    value leaves that run's per-round targets unchanged (``targets`` under a constant
    schedule, ``n_rounds`` under a gradual one). That is what moves together with a
    factor, derived from the lottery's own :func:`round_targets` rather than listed here.
    """
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


def baseline_level(factor: str, levels) -> Any:
    """Reference level of a factor: the schema's default for that field when some run has
    it (``init=pretrained``, ``schedule=constant``, ``protect_sw=False``, ...), else the
    smallest level (by its text)."""
    levels = list(levels)
    spec = schema_fields().get(factor)
    if spec is not None and str(spec.default) in {str(v) for v in levels}:
        return next(v for v in levels if str(v) == str(spec.default))
    return sorted(set(levels), key=str)[0]
