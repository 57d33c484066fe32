"""Spec loading, validation, profiles and hashing (workbench.experiments.design.specs)."""

import copy

import pytest
import yaml

from workbench.experiments.design import procedures, profiles, specs
from workbench.experiments.design.notebook_contract import notebook_source

BASE = {
    "name": "t",
    "notebook": "04_lottery_run",
    "seeds": [0, 1],
    "defaults": {"init": "pretrained", "schedule": "constant", "n_rounds": 3},
    "experiments": {"X": {"steps_per_round": 3000, "prune_pct": 0.2},
                    "Y": {"steps_per_round": 10000, "prune_pct": 0.1, "purpose": "p"}},
    "profiles": {"small": {"scale": {"steps_per_round": {"factor": 0.001, "min": 2}},
                           "set": {"batch_size": 2}}},
}
NB_DEFAULTS = {"experiment": "s", "seed": 0, "output_dir": "x", "init": "pretrained",
               "schedule": "constant", "prune_pct": 0.2, "targets": None, "n_rounds": 3,
               "steps_per_round": 4, "batch_size": 2, "scope": "global", "protect_sw": False}


def parse(raw, **kw):
    return specs.parse_spec(raw, notebook_defaults=kw.pop("defaults", NB_DEFAULTS), **kw)


def test_seed002_has_no_duplicate_procedures_and_covers_the_table():
    """Defects a typo in the YAML would cause: two experiments that are the same
    procedure (one arm silently missing), a table row without an experiment, or an
    experiment no question uses."""
    s = specs.load_spec("seed002", check_notebook=False)
    table_rows = ["A1", "A2", "B1", "B2", "C1", "C2", "D1", "D2", "E1", "E2", "F1", "G1",
                  "H1", "I1"]
    assert set(table_rows) <= set(s.experiments)
    design = procedures.design_keys()
    seen = {}
    for name, exp in s.experiments.items():
        key = tuple(repr(exp.parameters.get(k)) for k in design)
        assert key not in seen, f"{name} has the same design as {seen.get(key)}"
        seen[key] = name
        assert exp.meta.get("label") and exp.meta.get("purpose"), name
    used = {e for q in s.questions.values() for c in q.contrasts for e in (c.a, c.b)}
    assert set(s.experiments) - used == set(s.references())  # controls: reference lines


def test_pilot_is_a_subset_of_seed002_covering_init_budget_schedule():
    full = specs.load_spec("seed002", check_notebook=False)
    pilot = specs.load_spec("pilot", check_notebook=False)
    assert len(pilot.experiments) >= 3
    for name, exp in pilot.experiments.items():
        assert exp.parameters == full.experiments[name].parameters, name
        assert exp.seeds == [0, 1, 2]
    ref = pilot.experiments["B2"].parameters
    changed = {name: {k for k in set(ref) | set(e.parameters) if ref.get(k) != e.parameters.get(k)}
               for name, e in pilot.experiments.items() if name != "B2"}
    factors = {frozenset(v) for v in changed.values()}
    assert frozenset({"init"}) in factors and frozenset({"steps_per_round"}) in factors
    assert any("schedule" in f for f in factors)


def test_real_specs_match_the_lottery_notebook_when_present():
    try:
        notebook_source("04_lottery_run")
    except FileNotFoundError:
        pytest.skip("notebooks/04_lottery_run.py not written yet")
    for name in ("seed002", "pilot"):
        s = specs.load_spec(name)  # checks names and types against the parameters cell
        assert s.resolve("cpu") and s.resolve("gpu")


def test_cpu_profile_scales_budget_and_keeps_design():
    s = specs.load_spec("seed002", check_notebook=False)
    cpu, gpu = s.resolve("cpu"), s.resolve("gpu")
    scalable = set(procedures.scalable_keys())
    for name, params in cpu.items():
        for key in set(procedures.design_keys()) - scalable:
            assert params.get(key) == s.experiments[name].parameters.get(key), (name, key)
        assert gpu[name]["steps_per_round"] == s.experiments[name].parameters["steps_per_round"]
    # order of budgets kept: 1k <= 3k < 5k < 10k < 20k
    steps = [cpu[e]["steps_per_round"] for e in ("budget-1k", "A2", "budget-5k", "B2", "F1")]
    assert steps == sorted(steps) and steps[0] >= 1 and steps[1] < steps[3] < steps[4]
    assert cpu["B2"]["batch_size"] == 2
    assert cpu["B2"]["warmup_steps"] == 0 and cpu["H1"]["warmup_steps"] >= 1


def test_apply_profile_rounding_and_minimum():
    prof = {"scale": {"steps_per_round": {"factor": 0.001, "min": 2}, "lr": 0.5},
            "set": {"batch_size": 7}}
    out = profiles.apply_profile({"steps_per_round": 3000, "lr": 1e-3, "batch_size": 1}, prof)
    assert out == {"steps_per_round": 3, "lr": 5e-4, "batch_size": 7}
    assert profiles.apply_profile({"steps_per_round": 1000}, prof)["steps_per_round"] == 2
    assert profiles.apply_profile({"steps_per_round": 2500}, {"scale": {"steps_per_round": 0.001}}
                               )["steps_per_round"] == 3  # 2.5 rounds half up
    assert profiles.apply_profile({"steps_per_round": 0}, prof)["steps_per_round"] == 0


@pytest.mark.parametrize("mutate, words", [
    (lambda r: r.update(bogus=1), ["bogus", "allowed"]),
    (lambda r: r["experiments"]["X"].update(learning_rate=1), ["learning_rate", "X"]),
    (lambda r: r["experiments"]["X"].update(init="orthogonal"), ["init", "xavier"]),
    (lambda r: r["experiments"]["X"].update(schedule="gradual"), ["targets"]),
    (lambda r: r["experiments"]["X"].update(schedule="gradual", targets=[0.2, 0.1]), ["targets"]),
    (lambda r: r["experiments"]["X"].update(scope="rows"), ["scope", "global"]),
    (lambda r: r["experiments"]["X"].update(prune_pct=1.5), ["prune_pct"]),
    (lambda r: r["experiments"]["X"].update(n_rounds=0), ["n_rounds"]),
    (lambda r: r["experiments"]["X"].update(steps_per_round="many"), ["steps_per_round"]),
    (lambda r: r["experiments"]["X"].update(protect_sw="yes"), ["protect_sw", "true or false"]),
    (lambda r: r["experiments"]["X"].update(seed=3), ["seed", "filled in"]),
    (lambda r: r.update(seeds=[0, 0]), ["duplicate"]),
    (lambda r: r.update(seeds=[-1]), ["seeds"]),
    (lambda r: r["profiles"]["small"].update(set={"init": "xavier"}), ["design", "init"]),
    (lambda r: r["profiles"]["small"].update(set={"steps_per_round": 3}), ["design"]),
    (lambda r: r["profiles"]["small"].update(scale={"prune_pct": 0.5}), ["design", "prune_pct"]),
    (lambda r: r["profiles"]["small"].update(shrink=2), ["shrink", "allowed"]),
    (lambda r: r["profiles"]["small"]["scale"].update(steps_per_round={"factor": 0}), ["factor"]),
    (lambda r: r.pop("notebook"), ["notebook"]),
])
def test_bad_specs_are_rejected_with_the_key(mutate, words):
    raw = copy.deepcopy(BASE)
    mutate(raw)
    with pytest.raises(ValueError) as err:
        parse(raw)
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_unknown_profile_names_the_allowed_ones():
    s = parse(copy.deepcopy(BASE))
    with pytest.raises(ValueError, match="small"):
        s.resolve("huge")
    assert s.resolve("small")["X"]["steps_per_round"] == 3
    assert s.resolve("small")["Y"]["steps_per_round"] == 10
    assert s.resolve(None)["X"]["steps_per_round"] == 3000


def test_hash_is_canonical():
    a = parse(copy.deepcopy(BASE))
    raw = copy.deepcopy(BASE)
    raw["name"], raw["seeds"] = "other", [5, 6, 7]
    raw["experiments"] = dict(reversed(list(raw["experiments"].items())))
    raw["experiments"]["X"]["purpose"] = "different words"
    raw["experiments"]["X"]["prune_pct"] = 0.20
    b = parse(raw)
    assert a.hash("small") == b.hash("small")
    assert a.hash("small") != a.hash(None)
    raw["experiments"]["X"]["prune_pct"] = 0.25
    assert parse(raw).hash("small") != a.hash("small")
    assert len(a.hash()) == 12 and a.runs_dir("small", "/r").as_posix() == f"/r/{a.hash('small')}"


def test_load_spec_from_file_checks_the_notebook(tmp_path):
    raw = copy.deepcopy(BASE)
    raw["notebook"] = "nb.py"
    (tmp_path / "nb.py").write_text(
        '# %% tags=["parameters"]\nexperiment = "s"\nseed = 0\noutput_dir = "x"\n'
        'init = "pretrained"\nschedule = "constant"\nn_rounds = 3\nsteps_per_round = 4\n'
        'prune_pct = 0.2\n')
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="batch_size"):  # profile sets an undeclared name
        specs.load_spec(tmp_path / "s.yaml")
    raw["profiles"]["small"].pop("set")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    s = specs.load_spec(tmp_path / "s.yaml")
    assert s.notebook == str(tmp_path / "nb.py")
    with pytest.raises(FileNotFoundError, match="available"):
        specs.load_spec("no-such-spec")


def test_profiles_resolve_for_a_spec_outside_the_project(tmp_path):
    """profiles.yaml beside the spec first, then data/experiments/profiles.yaml."""
    from workbench.core import paths

    raw = copy.deepcopy(BASE)
    raw.pop("profiles")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    project = profiles.load_profiles(paths.EXPERIMENTS_DIR / "profiles.yaml")
    s = specs.load_spec(tmp_path / "s.yaml", check_notebook=False)
    assert set(s.profiles) == set(project) and "cpu" in project
    (tmp_path / "profiles.yaml").write_text(yaml.safe_dump(
        {"tiny": {"scale": {"steps_per_round": {"factor": 0.5, "min": 1}}}}))
    s = specs.load_spec(tmp_path / "s.yaml", check_notebook=False)
    assert set(s.profiles) == {"tiny"}
    assert s.resolve("tiny")["X"]["steps_per_round"] == 1500


def test_yaml_syntax_error_names_the_file_and_line(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: x\nexperiments: {A: [1, 2}\n")
    with pytest.raises(ValueError, match=r"broken\.yaml: YAML syntax error at line 2"):
        specs.load_spec(bad, check_notebook=False)
