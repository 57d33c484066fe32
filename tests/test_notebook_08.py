"""Papermill smoke run of the Fisher-uses notebook (percolation, forgetting) on tiny-llama."""

import json

import pandas as pd

from workbench.experiments.design.notebook_contract import notebook_parameters
from workbench.experiments.running.notebooks import run_notebook


def test_fisher_uses_notebook_runs_under_papermill(tmp_path):
    out, figs = tmp_path / "run", tmp_path / "figs"
    params = dict(model="tiny-llama", corpus="lee", corpus_b="wiki-excerpt", seq_len=16,
                  fisher_tokens=32, eval_tokens=32, concentrations=[0.1, 0.5], seeds=[0, 1],
                  steps_a=2, fisher_every=1, steps_b=2, lrs_b=[1e-3], probe_every=1,
                  threads=1, output_dir=str(out), figures_dir=str(figs))
    assert set(params) <= set(notebook_parameters("08_fisher_uses"))
    run_notebook("08_fisher_uses", tmp_path / "08.ipynb", params)
    perc = pd.read_parquet(out / "percolation.parquet")
    assert set(perc["rank"]) == {"none", "top", "random", "bottom"}
    assert len(perc) == 1 + 3 * 2 * 2 and (perc.ppl > 0).all()
    assert (perc[perc["rank"] != "none"].predicted > 0).all()
    forget = pd.read_parquet(out / "forgetting.parquet")
    assert len(forget) == 2 and (forget.damage > 0).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["forgetting"]["n"] == 2 and summary["fisher_underflow"] <= 0.01
    for stem in ("08_percolation", "08_forgetting"):
        assert (figs / f"{stem}.png").stat().st_size > 0
