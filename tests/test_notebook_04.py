"""Papermill smoke run of notebook 04 (one lottery-ticket run) with tiny parameters."""

import json

import pandas as pd

from workbench.experiments.notebooks import notebook_parameters, run_notebook

CONTRACT = {
    "model", "corpus", "experiment", "init", "rewind_step", "schedule", "prune_pct",
    "targets", "n_rounds", "scope", "importance_kind", "steps_per_round", "lr",
    "lr_schedule", "warmup_steps", "batch_size", "seq_len", "grad_accum", "n_val_blocks",
    "val_seq_len", "eval_pruned", "protect_sw", "control", "seed", "output_dir",
}


def test_parameters_cell_matches_the_grid_contract():
    params = notebook_parameters("04_lottery_run")
    assert set(params) == CONTRACT
    assert params["model"] == "smollm2-135m" and params["targets"] is None


def test_lottery_notebook_runs(tmp_path):
    out = tmp_path / "run"
    params = dict(model="tiny-llama", corpus="lee", experiment="D1", schedule="gradual",
                  targets=[0.1, 0.2], steps_per_round=2, seq_len=32, n_val_blocks=2,
                  val_seq_len=32, lr=1e-3, seed=1, output_dir=str(out))
    run_notebook("04_lottery_run", tmp_path / "04.ipynb", params)
    rec = pd.read_parquet(out / "records.parquet")
    assert rec["round"].tolist() == [0, 1, 2]
    assert rec["target_sparsity"].tolist() == [0.0, 0.1, 0.2]
    assert rec["sparsity"].round(3).tolist() == [0.0, 0.1, 0.2]
    assert set(rec["experiment"]) == {"D1"} and set(rec["seed"]) == {1}
    for col in ("val_ppl", "train_loss", "sw_total", "sw_kept", "sw_survival",
                "sw_value_drift", "mask_jaccard_prev", "init", "schedule", "scope",
                "steps_per_round", "lr_schedule"):
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
    assert manifest["resumed_from"] is None
    # only the small final checkpoint is left (resume itself: tests/test_lottery.py)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["complete.pt"]
