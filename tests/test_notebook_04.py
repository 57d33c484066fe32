"""Papermill smoke run of notebook 04 (one lottery-ticket run) with tiny parameters."""

import json

import pandas as pd

from workbench.experiments.design.notebook_contract import notebook_parameters
from workbench.experiments.running import runs
from workbench.experiments.running.notebooks import run_notebook

def test_parameters_cell_is_a_run_folder_and_schema_overrides():
    # every run parameter lives in the schema (workbench.lottery.schema); the notebook
    # takes a dict of overrides, so a new schema field needs no notebook edit
    params = notebook_parameters("04_lottery_run")
    assert set(params) == {"run_dir", "config"}
    assert params["config"] == {} and params["run_dir"] is None


def test_lottery_notebook_runs(tmp_path):
    out = tmp_path / "run"
    config = dict(model="tiny-llama", corpus="lee", experiment="D1", schedule="gradual",
                  targets=[0.1, 0.2], steps_per_round=2, seq_len=32, n_val_blocks=2,
                  val_seq_len=32, sw_seq_len=32, lr=1e-3, seed=1, init="xavier")
    run_notebook("04_lottery_run", tmp_path / "04.ipynb",
                 dict(run_dir=str(out), config=config))
    assert runs.is_complete(out)
    rec = pd.read_parquet(out / "records.parquet")
    assert rec["round"].tolist() == [0, 1, 2]
    assert rec["target_sparsity"].tolist() == [0.0, 0.1, 0.2]
    assert rec["sparsity"].round(3).tolist() == [0.0, 0.1, 0.2]
    assert set(rec["experiment"]) == {"D1"} and set(rec["seed"]) == {1}
    assert set(rec["init"]) == {"xavier"} and set(rec["rank"]) == {"block_linear"}
    for col in ("val_ppl", "train_loss", "sw_total", "sw_kept", "sw_survival", "esw_total",
                "esw_survival", "mask_jaccard_prev", "schedule", "scope", "steps_per_round",
                "lr_schedule", "weight_decay", "n_calibration"):
        assert col in rec
    losses = pd.read_parquet(out / "losses.parquet")
    assert len(losses) == 3 * 2
    layers = pd.read_parquet(out / "layer_sparsity.parquet")
    assert set(layers["round"]) == {0, 1, 2}
    assert (out / "super_weights.parquet").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["curve"]) == 3
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parameters"]["targets"] == [0.1, 0.2]
    assert manifest["parameters"]["rank"] == "block_linear" == manifest["rank"]
    assert manifest["design"]["init"] == "xavier" and "batch_size" not in manifest["design"]
    assert manifest["resumed_from"] is None
    # only the small final checkpoint is left (resume itself: tests/lottery/test_checkpoint.py)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["complete.json"]
