"""Papermill smoke run of the quickstart notebook with tiny parameters."""

import json

import pandas as pd

from workbench.experiments.design.notebook_contract import notebook_parameters
from workbench.experiments.running.notebooks import run_notebook


def test_quickstart_runs_under_papermill(tmp_path):
    out = tmp_path / "run"
    params = dict(model="tiny-llama", corpus="lee", seq_len=32, n_blocks=2, batch_size=2,
                  output_dir=str(out))
    assert set(params) <= set(notebook_parameters("00_quickstart"))
    run_notebook("00_quickstart", tmp_path / "00.ipynb", params)
    results = pd.read_parquet(out / "results.parquet")
    assert list(results["split"]) == ["validation", "test"]
    # An untrained byte-level model is close to uniform over its 260-token vocabulary.
    assert ((results["perplexity"] > 50) & (results["perplexity"] < 1000)).all()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parameters"]["model"] == "tiny-llama"
    assert "torch" in manifest["environment"]


def test_relative_output_dir_resolves_against_the_project_root(tmp_path, monkeypatch):
    """Run as JupyterLab does (kernel working directory ``notebooks/``): a relative
    ``output_dir`` lands under the project root (here ``WORKBENCH_HOME``), not the CWD."""
    from workbench.core import paths

    home = tmp_path / "home"
    monkeypatch.setenv("WORKBENCH_HOME", str(home))
    params = dict(model="tiny-llama", corpus="lee", seq_len=32, n_blocks=1, batch_size=1,
                  output_dir="data/runs/quickstart-rel")
    run_notebook("00_quickstart", tmp_path / "00.ipynb", params, cwd=paths.NOTEBOOKS_DIR)
    assert (home / "data/runs/quickstart-rel/results.parquet").is_file()
    assert not (paths.NOTEBOOKS_DIR / "data/runs/quickstart-rel").exists()
