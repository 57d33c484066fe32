"""Papermill smoke runs of notebooks 02 and 03 with tiny parameters."""

import pandas as pd

from workbench.experiments.notebooks import notebook_parameters, run_notebook


def test_02_importance_runs(tmp_path):
    out = tmp_path / "02"
    params = dict(model="tiny-llama", corpus="lee", cal_windows=2, cal_seq_len=32,
                  batch_size=2, kinds=["magnitude", "taylor", "wanda"], output_dir=str(out),
                  figure_name="test_02_importance_overlap")
    assert set(params) <= set(notebook_parameters("02_importance"))
    run_notebook("02_importance", tmp_path / "02.ipynb", params)
    overlap = pd.read_parquet(out / "overlap.parquet").set_index("kind")
    assert list(overlap.index) == ["magnitude", "taylor", "wanda"]
    assert (overlap.values.diagonal() == 1.0).all()
    assert ((overlap.values >= 0) & (overlap.values <= 1)).all()
    corr = pd.read_parquet(out / "correlations.parquet")
    assert len(corr) == 14 * 3 and corr["spearman"].between(-1, 1).all()


def test_03_sparsity_sweep_runs(tmp_path):
    out = tmp_path / "03"
    params = dict(model="tiny-llama", corpus="lee", presets=["magnitude-layer", "wanda"],
                  sparsities=[0.0, 0.5], cal_windows=2, cal_seq_len=32, eval_blocks=2,
                  eval_seq_len=32, batch_size=2, output_dir=str(out),
                  figure_name="test_03_sparsity_sweep")
    assert set(params) <= set(notebook_parameters("03_sparsity_sweep"))
    run_notebook("03_sparsity_sweep", tmp_path / "03.ipynb", params)
    res = pd.read_parquet(out / "results.parquet")
    assert len(res) == 4
    assert res.groupby("sparsity")["achieved_sparsity"].first().round(3).tolist() == [0.0, 0.5]
    dense = res[res["sparsity"] == 0]["perplexity"]
    assert dense.nunique() == 1  # the model was restored between presets
