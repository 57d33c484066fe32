"""Papermill smoke run of the LM Fisher / K-FAC / capacity notebook with tiny parameters."""

import json

import pandas as pd

from workbench.experiments.design.notebook_contract import notebook_parameters
from workbench.experiments.running.notebooks import run_notebook


def test_fisher_lm_notebook_runs_under_papermill(tmp_path):
    out, figs = tmp_path / "run", tmp_path / "figs"
    params = dict(model="tiny-llama", corpus="lee", tokens=32, seq_len=16, n_calibration=2,
                  sharpness_tokens=8, threads=1, output_dir=str(out), figures_dir=str(figs))
    assert set(params) <= set(notebook_parameters("07_fisher_lm"))
    run_notebook("07_fisher_lm", tmp_path / "07.ipynb", params)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["empirical_over_true_trace"] > 0
    heads = pd.read_parquet(out / "fisher_by_head.parquet")
    assert len(heads) == 2 * 4  # tiny-llama: 2 blocks x 4 query heads
    assert (heads[["true", "empirical"]] > 0).all().all()
    spectra = pd.read_parquet(out / "kfac_spectra.parquet")
    assert len(spectra) == 8 and (spectra.A_max > 0).all()  # q/k/v/o of 2 blocks
    cap = pd.read_parquet(out / "capacity.parquet").set_index("metric")
    assert cap.shape[1] == 2 and (cap.loc["lambda_max"] > 0).all()
    assert 0 < summary["damage"]["normalized"] < 1
    for stem in ("07_fisher_true_vs_empirical", "07_kfac_spectra"):
        assert (figs / f"{stem}.pdf").stat().st_size > 0
