"""Papermill smoke runs of notebooks 02 and 03 with tiny parameters."""

from pathlib import Path

import pandas as pd

from workbench.core import paths
from workbench.experiments.running import runs

from workbench.experiments.design.notebook_contract import notebook_parameters
from workbench.experiments.running.notebooks import run_notebook


def test_02_importance_runs(tmp_path):
    out = tmp_path / "02"
    params = dict(model="tiny-llama", corpus="lee", cal_windows=2, cal_seq_len=32,
                  batch_size=2, score_kinds=["magnitude", "taylor", "wanda"], output_dir=str(out),
                  figure_name=str(tmp_path / "figures" / "02_importance_overlap"))
    assert set(params) <= set(notebook_parameters("02_importance"))
    run_notebook("02_importance", tmp_path / "02.ipynb", params)
    overlap = pd.read_parquet(out / "overlap.parquet").set_index("score_kind")
    assert list(overlap.index) == ["magnitude", "taylor", "wanda"]
    assert (overlap.values.diagonal() == 1.0).all()
    assert ((overlap.values >= 0) & (overlap.values <= 1)).all()
    corr = pd.read_parquet(out / "correlations.parquet")
    assert len(corr) == 14 * 3 and corr["spearman"].between(-1, 1).all()


def test_03_sparsity_sweep_runs(tmp_path):
    out = tmp_path / "03"
    params = dict(model="tiny-llama", corpus="lee", methods=["magnitude", "wanda"],
                  allocations=["uniform"], sparsities=[0.5, "2:4"], seeds=[0, 1],
                  n_calibration=2, seq_len=16, n_eval=2, eval_seq_len=32,
                  zeroshot_task="wiki_lastword", zeroshot_limit=3, batch_size=2,
                  output_dir=str(out), figure_name=str(tmp_path / "figures" / "03_sweep"))
    assert set(params) <= set(notebook_parameters("03_sparsity_sweep"))
    nb = run_notebook("03_sparsity_sweep", tmp_path / "03.ipynb", params)
    assert runs.is_complete(out)
    res = pd.read_parquet(out / runs.RECORDS)
    assert len(res) == 2 + 2 * 2 * 2  # dense per seed + methods x patterns x seeds
    pruned = res[res["method"] != "dense"]
    assert pruned["achieved_sparsity"].round(3).eq(0.5).all()
    assert (res["zeroshot_n"] == 3).all() and res["zeroshot_acc"].between(0, 1).all()
    assert res["calibration_hash"].nunique() == 2
    sig = pd.read_parquet(out / "significance.parquet")
    assert set(sig["metric"]) <= {"val_nll", "zeroshot_acc"} and len(sig) >= 2
    text = Path(nb).read_text()
    # n = 2 seeds: reported as not testable, with the reason, and no p-value
    assert "paired comparisons, not testable: n = 2 calibration seeds" in text
    assert sig["p_holm"].isna().all() and not sig["significant"].any()
    assert (tmp_path / "figures" / "03_sweep.png").is_file()  # only the temporary folder
    assert not list(paths.FIGURES_DIR.glob("*03_sweep*"))


def test_03_grid_spec_is_valid():
    from workbench.experiments.design.specs import load_spec

    spec = load_spec("oneshot_calibration")  # checked against notebook 03's parameters
    assert spec.notebook == "03_sparsity_sweep"
    cpu = spec.resolve("cpu")
    assert {e: p["n_calibration"] for e, p in cpu.items()} == {"cal16": 16, "cal64": 64}


def test_03_reproduces_a_published_table_on_local_files(tmp_path):
    from tests.core.test_protocols import write_c4, write_wikitext

    data = tmp_path / "datasets"
    write_wikitext(data, ["Alpha beta gamma delta.", "", "Epsilon zeta eta theta."] * 8)
    write_c4(data, "c4-train.00000-of-01024.json.gz",
             [f"Document {i} " + "words and more words " * (1 + i % 4) for i in range(12)])
    out = tmp_path / "03r"
    params = dict(model="tiny-llama", corpus="lee", methods=["wanda"], sparsities=[0.5],
                  seeds=[0, 1], n_calibration=2, seq_len=16, n_eval=2, eval_seq_len=16,
                  zeroshot_task=None, batch_size=2, output_dir=str(out),
                  figure_name=str(tmp_path / "figures" / "03r"), eval_card="wikitext2",
                  calibration_card="c4", data=str(data), reproduce_table="wanda-llama2-7b",
                  reproduce_seq_len=16, reproduce_n_eval=2)
    assert set(params) <= set(notebook_parameters("03_sparsity_sweep"))
    nb = run_notebook("03_sparsity_sweep", tmp_path / "03r.ipynb", params)
    res = pd.read_parquet(out / runs.RECORDS)
    assert (res["eval_card"] == "wikitext2").all() and (res["calibration_card"] == "c4").all()
    rep = pd.read_parquet(out / "reproduction.parquet")
    assert len(rep) == 10 and rep["theirs"].iloc[0] == 5.12
    assert "NOT the table's model" in Path(nb).read_text()
