"""Papermill smoke runs of the analysis and explorer notebooks on a synthetic runs folder."""

import pandas as pd

from tests.fixtures.runs import make_runs
from workbench.experiments.notebooks import notebook_parameters, run_notebook


def test_pilot_analysis_writes_figures_tables_and_findings(tmp_path):
    runs = make_runs(tmp_path / "runs")
    out = tmp_path / "out"
    params = dict(runs=str(runs), out_dir=str(out))
    assert set(params) <= set(notebook_parameters("05_pilot_analysis"))
    run_notebook("05_pilot_analysis", tmp_path / "05.ipynb", params)
    for name in ("pilot_sparsity", "pilot_losses"):
        assert (out / f"{name}.pdf").stat().st_size > 1000
        assert (out / f"{name}.png").stat().st_size > 1000
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 3 * 4 and set(summary.experiment) == {"A2", "B2", "C2"}
    table = pd.read_csv(out / "significance.csv")
    # the synthetic C2 (Xavier) is 40 * sparsity worse: significant at every level
    c2 = table[(table.experiment_b == "C2") & (table.metric == "val_nll")]
    assert len(c2) == 3 and c2.significant.all()
    budget = table[(table.factor == "steps_per_round") & (table.metric == "val_nll")]
    assert len(budget) == 3 and not budget.significant.any()
    findings = (out / "findings.md").read_text()
    assert "C2 (init=xavier) vs B2" in findings and "Wilcoxon" in findings


def test_explorer_runs_headless(tmp_path):
    runs = make_runs(tmp_path / "runs")
    nb = run_notebook("06_explorer", tmp_path / "06.ipynb",
                      dict(runs=str(runs), metric="sw_survival"))
    text = nb.read_text()
    assert "sw_survival" in text and "C2" in text
