"""Papermill smoke run of the Fisher / GGN notebook with tiny parameters."""

import json

import pandas as pd

from workbench.experiments.design.notebook_contract import notebook_parameters
from workbench.experiments.running.notebooks import run_notebook


def test_fisher_ggn_notebook_runs_under_papermill(tmp_path):
    out, figs = tmp_path / "run", tmp_path / "figs"
    params = dict(model="tiny-llama", data="lee", hidden=3, epochs=5, n_curvature=16, batch_size=4,
                  mc_grid=[1, 4, 16], mc_seeds=2, seq_len=16, n_blocks=2, threads=1,
                  output_dir=str(out), figures_dir=str(figs))
    assert set(params) <= set(notebook_parameters("01_fisher_ggn"))
    run_notebook("01_fisher_ggn", tmp_path / "01.ipynb", params)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fisher_vs_ggn_fp64"] < 1e-12
    assert summary["fisher_vs_ggn_fp32"] < 1e-4
    assert summary["ef_vs_fisher_rel_fro"] > 1e-3  # EF differs from the Fisher
    assert -1.0 < summary["mc_slope"] < 0.0
    hvp = summary["hvp_rel_error_by_k"]  # keys 1, 2 (k < 4 batches)
    assert hvp["1"] > hvp["2"] > 0
    verify = pd.read_parquet(out / "verify.parquet")
    assert verify.passed.dropna().all()
    layers = pd.read_parquet(out / "lm_diagonal.parquet")
    assert set(layers.layer) >= {0, 1}  # tiny-llama has two blocks
    assert (layers[["empirical", "true"]] > 0).all().all()
    for stem in ("01_fisher_ef_matrices", "01_mc_fisher_convergence",
                 "01_lm_diagonal_fisher_layers"):
        assert (figs / f"{stem}.pdf").stat().st_size > 0
        assert (figs / f"{stem}.png").stat().st_size > 0
