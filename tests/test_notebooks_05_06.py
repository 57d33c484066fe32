"""Papermill smoke runs of the analysis and explorer notebooks on a synthetic runs folder."""

import pandas as pd

from tests.fixtures.runs import DESIGNS, make_runs, write_spec_record
from workbench.experiments.design.notebook_contract import notebook_parameters
from workbench.experiments.running.notebooks import run_notebook


def test_pilot_analysis_writes_findings_by_question(tmp_path):
    runs = make_runs(tmp_path / "runs")
    write_spec_record(runs)
    out = tmp_path / "out"
    params = dict(runs=str(runs), out_dir=str(out))
    assert set(params) <= set(notebook_parameters("05_pilot_analysis"))
    run_notebook("05_pilot_analysis", tmp_path / "05.ipynb", params)
    for name in ("pilot_sparsity", "pilot_losses"):
        assert (out / f"{name}.pdf").stat().st_size > 1000
        assert (out / f"{name}.png").stat().st_size > 1000
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 3 * 4 and set(summary.experiment) == {"A2", "B2", "C2"}
    table = pd.read_csv(out / "contrasts.csv")
    # exactly the declared contrasts; the synthetic C2 is 40 * sparsity worse
    assert set(table.contrast) == {"xavier_vs_pretrained", "budget_1_vs_4",
                                   "budget_sweet_spot", "sweet_xavier"}
    c2 = table[(table.contrast == "xavier_vs_pretrained") & (table.metric == "val_nll")]
    assert len(c2) == 3 and c2.significant.all()
    budget = table[(table.contrast == "budget_1_vs_4")]
    assert len(budget) == 3 and not budget.significant.any()
    findings = (out / "findings.md").read_text()
    # organised by question, stating the profile and the real steps per round
    assert findings.index("## Does Xavier init") < findings.index("## Does the budget")
    assert "Profile **cpu**" in findings and "4 for B2, C2 (design: 10000)" in findings
    assert "supported: b is higher than a" in findings
    assert "with n=3 seeds the paired t-test only detects |d_z| >= 3.3" in findings
    assert "Sweet spot per experiment" in findings and "never reached" in findings


def test_explorer_runs_headless(tmp_path):
    runs = make_runs(tmp_path / "runs")
    nb = run_notebook("06_explorer", tmp_path / "06.ipynb",
                      dict(runs=str(runs), metric="sw_survival"))
    text = nb.read_text()
    assert "sw_survival" in text and "C2" in text


def test_explorer_keeps_the_metric_and_lists_metrics_only(tmp_path, monkeypatch):
    """Run the explorer's cells in this process and drive its widgets like a user."""
    import jupytext
    import matplotlib

    from workbench.experiments.analysis import aggregate
    from workbench.experiments.design.notebook_contract import notebook_source

    matplotlib.use("Agg")
    monkeypatch.setattr("matplotlib.pyplot.show", lambda *a, **k: None)
    runs = make_runs(tmp_path / "runs")
    nb = jupytext.read(notebook_source("06_explorer"))
    ns = {}
    for cell in nb.cells:
        if cell.cell_type == "code":
            exec(cell.source, ns)
            if "parameters" in cell.metadata.get("tags", []):
                ns.update(runs=str(runs), metric="val_ppl")
    w_metric = ns["w_metric"]
    options = set(w_metric.options)
    assert {"val_ppl", "val_nll", "sw_survival", "train_loss"} <= options
    hyper = {"steps_per_round", "prune_pct", "n_rounds", "batch_size", "lr", "seed", "round"}
    assert not options & hyper, options & hyper
    w_metric.value = "sw_survival"
    other = aggregate.load_runs(make_runs(tmp_path / "other", designs={
        k: v for k, v in DESIGNS.items() if k != "A2"}))
    empty = pd.DataFrame()
    for data in (other, empty, other):  # another spec, one without runs, back again
        ns["runs_of"] = lambda *_a, _d=data: _d
        ns["w_profile"].value = "gpu" if ns["w_profile"].value != "gpu" else "none"
        if len(data):
            assert w_metric.value == "sw_survival"
            assert set(ns["w_exps"].options) == {"B2", "C2"}
        else:
            assert w_metric.value is None
