"""Declared contrasts: validation, identical procedures
(workbench.experiments.design.contrasts)."""

import copy

import pytest

from workbench.experiments.design import contrasts, specs

BASE = dict(init="pretrained", schedule="constant", prune_pct=0.2, n_rounds=5,
            steps_per_round=10000)
EXPS = {
    "B1": {**BASE, "prune_pct": 0.1},
    "B2": dict(BASE),
    "A2": {**BASE, "steps_per_round": 3000},
    "D1": {**BASE, "schedule": "gradual", "targets": [0.05, 0.1, 0.15, 0.2], "n_rounds": 4},
    "I1": {**BASE, "schedule": "oneshot"},
    "G": {**BASE, "schedule": "gradual", "targets": [0.2, 0.3], "n_rounds": 2},
    "B2-short": {**BASE, "n_rounds": 3},
}


def parse(contrast, metrics=("sw_survival", "val_nll")):
    raw = {"q": {"question": "why?", "metrics": list(metrics), "contrasts": {"c": contrast}}}
    return contrasts.parse_questions(raw, EXPS, metrics=specs.known_metrics())


@pytest.mark.parametrize("contrast, words", [
    ({"a": "B2", "b": "Z9"}, ["Z9", "not an experiment", "B1"]),
    ({"a": "B2"}, ["missing", "'b'"]),
    ({"a": "B2", "b": "B2"}, ["both"]),
    ({"a": "B2", "b": "C2", "colour": 1}, ["colour", "allowed"]),
    ({"a": "B2", "b": "A2", "at": "step"}, ["at", "sparsity"]),
    ({"a": "B2", "b": "A2", "take": "mean"}, ["take", "first"]),
    ({"a": "B2", "b": "A2", "metrics": ["accuracy"]}, ["accuracy", "val_ppl"]),
    ({"a": "B2", "b": "A2", "at": "run", "metrics": ["val_ppl"]}, ["per-run", "optimal_sparsity"]),
    ({"a": "B2", "b": "A2", "levels": "0.2"}, ["levels"]),
    # I1 and B2 are the same procedure up to their first arrival at 0.20
    ({"a": "B2", "b": "I1", "at": "sparsity", "levels": [0.2]}, ["same procedure", "B2", "I1"]),
    ({"a": "B2", "b": "I1", "at": "sparsity"}, ["same procedure"]),
    # n_rounds alone never changes what happened up to a round
    ({"a": "B2", "b": "B2-short", "at": "round"}, ["same procedure"]),
])
def test_bad_contrasts_are_rejected_naming_the_problem(contrast, words):
    with pytest.raises(ValueError) as err:
        parse(contrast)
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_unknown_experiment_in_a_spec_file_fails_before_anything_runs(tmp_path):
    raw = {"name": "t", "notebook": "nb", "experiments": copy.deepcopy(EXPS),
           "questions": {"q": {"question": "?", "metrics": ["val_nll"],
                               "contrasts": {"x": {"a": "B2", "b": "C7"}}}}}
    with pytest.raises(ValueError, match="questions.q.contrasts.x: b='C7'"):
        specs.parse_spec(raw)


def test_levels_and_rounds_of_matched_procedures():
    q = parse({"a": "I1", "b": "D1", "at": "sparsity", "levels": [0.2], "take": "last"})
    (c,) = q["q"].contrasts
    # last round at 0.20: I1 round 5 (trained on after its one-shot prune), D1 round 4
    assert contrasts.testable_levels(c, EXPS["I1"], EXPS["D1"]) == {0.2: (5, 4)}
    c = contrasts.Contrast("c", "q", "B2", "D1", "sparsity")
    assert contrasts.testable_levels(c, EXPS["B2"], EXPS["D1"]) == {0.2: (1, 4)}
    # constant 20 % vs gradual [0.2, 0.3]: round 1 is the same procedure, round 2 is not
    c = contrasts.Contrast("c", "q", "B2", "G", "round")
    assert contrasts.testable_levels(c, EXPS["B2"], EXPS["G"]) == {2: (2, 2)}
    c = contrasts.Contrast("c", "q", "B1", "B2", "round")
    assert list(contrasts.testable_levels(c, EXPS["B1"], EXPS["B2"])) == [1, 2, 3, 4, 5]
    # a budget that differs makes every level a different procedure
    c = contrasts.Contrast("c", "q", "B2", "A2", "sparsity")
    assert contrasts.testable_levels(c, EXPS["B2"], EXPS["A2"]) == {
        0.2: (1, 1), 0.36: (2, 2), 0.488: (3, 3), 0.59: (4, 4), 0.672: (5, 5)}


def test_real_specs_declare_their_questions():
    full = specs.load_spec("seed002", check_notebook=False)
    pilot = specs.load_spec("pilot", check_notebook=False)
    names = {c.name for q in full.questions.values() for c in q.contrasts}
    for q in pilot.questions.values():  # the pilot asks a subset of the same contrasts
        assert q.name in full.questions
        for c in q.contrasts:
            assert c.name in names and {c.a, c.b} <= set(pilot.experiments)
    # every contrast of the pilot has a testable level under the cpu profile
    cpu = pilot.resolve("cpu")
    for q in pilot.questions.values():
        for c in q.contrasts:
            assert contrasts.testable_levels(c, cpu[c.a], cpu[c.b]), c.name
