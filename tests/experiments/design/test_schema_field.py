"""Adding a field to the lottery schema makes it settable from a spec YAML and visible in
the analysis, with no edit to any experiments module (issue: one experiment schema)."""

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import yaml

from workbench.experiments.analysis import aggregate, factors, findings

from workbench.experiments.running import grid, runs

from workbench.experiments.design import procedures, specs
from workbench.lottery import schema

NOTEBOOK = '# %% tags=["parameters"]\nrun_dir = None\nconfig = {}\n'


@dataclass(frozen=True)
class Extended(schema.IMPConfig):
    dropout: float = schema.make_field(0.0, "design", "dropout during retraining",
                                       range=(0.0, 1.0), open=(False, True))


def write(tmp_path, experiments, profiles=None):
    (tmp_path / "nb.py").write_text(NOTEBOOK)
    raw = {"name": "ext", "notebook": "nb.py", "seeds": [0, 1, 2],
           "defaults": {"prune_pct": 0.2, "n_rounds": 2, "steps_per_round": 4},
           "experiments": experiments, "profiles": profiles or {},
           "questions": {"dropout": {"question": "Does dropout change perplexity?",
                                     "metrics": ["val_nll"],
                                     "contrasts": {"dropout_effect": {"a": "B2", "b": "DR"}}}}}
    path = tmp_path / "ext.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_new_schema_field_flows_from_yaml_to_findings(tmp_path, monkeypatch):
    monkeypatch.setattr(schema, "IMPConfig", Extended)
    exps = {"B2": {}, "DR": {"dropout": 0.1}}
    # bad values and profiles are rejected by the field's own metadata
    with pytest.raises(ValueError, match="dropout"):
        specs.load_spec(write(tmp_path, {"B2": {}, "DR": {"dropout": 1.5}}))
    with pytest.raises(ValueError, match="design key.*dropout"):
        specs.load_spec(write(tmp_path, exps, {"p": {"set": {"dropout": 0.0}}}))
    spec = specs.load_spec(write(tmp_path, exps))
    assert "dropout" in procedures.design_keys()
    cells = grid.plan(spec, None, tmp_path / "runs")
    assert {c.parameters["config"].get("dropout") for c in cells} == {None, 0.1}
    # what notebook 04 does with the injected config (without running a kernel)
    for cell in cells:
        cfg = Extended.from_params(cell.parameters["config"]).to_dict()
        rows = [{**cfg, "round": r, "target_sparsity": t, "sparsity": t,
                 "val_ppl": 20 * (1 + t) * (1 + 2 * cfg["dropout"] * r)
                 + np.random.default_rng([cell.seed, r]).normal(0, 0.05),
                 "sw_survival": 1.0, "targets": None}
                for r, t in enumerate([0.0, 0.2, 0.36])]
        records = pd.DataFrame(rows)
        runs.write_run(cell.directory, {"records": records}, {},
                       {"parameters": cfg, "environment": {}})
        (cell.directory / runs.PARAMS).write_text(pd.Series(cell.parameters).to_json())
    root = spec.runs_dir(None, tmp_path / "runs")
    (root / runs.SPEC_COPY).write_text(pd.Series(spec.to_record(None)).to_json())
    df = aggregate.load_runs(root)
    assert "dropout" in df and "dropout" not in aggregate.metric_columns(df)
    auto = factors.compare_factor(df, "dropout", "val_nll")
    assert set(zip(auto.experiment_a, auto.experiment_b)) == {("B2", "DR")}
    a = findings.analyse(root, None, n_resamples=200)
    tested = a.contrasts[a.contrasts.n > 0]
    assert set(tested.contrast) == {"dropout_effect"} and (tested.n == 3).all()
    assert tested.significant.all()  # +20 % / +40 % perplexity per round vs noise 0.05
    assert "## Does dropout change perplexity?" in findings.findings_markdown(a)
