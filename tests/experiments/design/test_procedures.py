"""Procedure identity (workbench.experiments.design.procedures) and the design layer's
imports: design/ imports nothing of analysis/, and nothing inside design/ imports upward."""

import ast
from pathlib import Path

import pytest

from workbench.experiments.design import procedures
from workbench.lottery.schema import IMPConfig

BASE = dict(init="pretrained", schedule="constant", prune_pct=0.2, n_rounds=3,
            steps_per_round=4)
DESIGN_DIR = Path(procedures.__file__).parent


def test_round_targets_are_the_lottery_rule_and_ignore_run_names():
    params = {**BASE, "experiment": "B2", "seed": 1, "output_dir": "/x", "label": "?"}
    assert procedures.round_targets(params) == pytest.approx(
        list(IMPConfig.from_params(BASE).round_targets()))
    assert procedures.round_targets(params) == pytest.approx([0.2, 0.36, 0.488])


def test_procedure_key_ignores_reserved_keys_and_compares_schedules_after_round_one():
    a = {**BASE, "experiment": "A", "seed": 0, "run_dir": "a"}
    b = {**BASE, "experiment": "B", "seed": 3, "run_dir": "b"}
    assert procedures.procedure_key(a, 3) == procedures.procedure_key(b, 3)
    one = {**BASE, "schedule": "oneshot"}
    # round 1 prunes the dense model to 0.2 either way; round 2 differs
    assert procedures.procedure_key(BASE, 1) == procedures.procedure_key(one, 1)
    assert procedures.procedure_key(BASE, 2) != procedures.procedure_key(one, 2)
    assert procedures.procedure_key(BASE, 1) != procedures.procedure_key(
        {**BASE, "init": "xavier"}, 1)


def test_one_factor_pair():
    xav = {**BASE, "init": "xavier"}
    assert procedures.one_factor_pair("init", BASE, xav)
    assert not procedures.one_factor_pair("init", BASE, BASE)
    assert not procedures.one_factor_pair("init", BASE, {**xav, "steps_per_round": 1})
    # targets are ignored by a constant schedule: they move together with the schedule
    grad = {**BASE, "schedule": "gradual", "targets": [0.1, 0.2, 0.3]}
    assert procedures.one_factor_pair("schedule", {**BASE, "targets": None}, grad)
    assert procedures.baseline_level("init", ["xavier", "pretrained"]) == "pretrained"
    default = procedures.schema_fields()["steps_per_round"].default
    assert procedures.baseline_level("steps_per_round", [default + 1, default]) == default
    # not a default of the schema: the smallest level by its text
    assert procedures.baseline_level("steps_per_round", [default + 7, default + 5]) == min(
        [default + 7, default + 5], key=str)


def _imports(path: Path) -> set[str]:
    """Modules a file imports, top-level and function-local (``from a import b``: a, a.b)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_design_imports_nothing_of_analysis_or_running():
    for path in DESIGN_DIR.glob("*.py"):
        up = {n for n in _imports(path) if n.startswith(("workbench.experiments.analysis",
                                                           "workbench.experiments.running"))}
        assert up == set(), (path.name, up)


@pytest.mark.parametrize("module, allowed", [
    ("procedures", set()),
    ("profiles", {"procedures"}),
    ("contrasts", {"procedures"}),
])
def test_design_modules_import_downward_only(module, allowed):
    """procedures <- profiles, contrasts <- specs: no circle inside design/."""
    used = {n.split(".")[3] for n in _imports(DESIGN_DIR / f"{module}.py")
            if n.startswith("workbench.experiments.design.")}
    assert used <= allowed, (module, used)
