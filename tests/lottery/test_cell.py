"""Tests for workbench.lottery.cell: one grid cell end to end on a tiny model."""

from __future__ import annotations

import pandas as pd
import pytest

from workbench.lottery import cell
from workbench.lottery.schema import IMPConfig, design_keys

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = dict(model="tiny-llama", corpus="lee", steps_per_round=1, n_rounds=1, seq_len=32,
            n_val_blocks=2, val_seq_len=32, sw_seq_len=32, lr=1e-3, sw_threshold=1e-3,
            sw_spike_ratio=1.0, experiment="X1", seed=2)


def test_one_imp_run_is_cell_run_and_run_cell_is_only_the_grids():
    assert callable(cell.run) and not hasattr(cell, "run_cell")


def test_as_config_validates_overrides():
    assert cell.as_config(None) == IMPConfig()
    cfg = IMPConfig(lr=0.5)
    assert cell.as_config(cfg) is cfg
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['stepz'\]"):
        cell.as_config({"stepz": 3})


def test_run_tables_manifest_and_resume(tmp_path):
    run = cell.run(TINY, tmp_path, progress=False)
    tables = run.tables
    assert set(tables) == {"records", "losses", "layer_sparsity", "super_weights"}
    rec = tables["records"]
    assert rec["round"].tolist() == [0, 1] and set(rec["experiment"]) == {"X1"}
    sw = tables["super_weights"]
    # threshold ~0 and ratio 1: every layer's largest entry is "detected", so both the
    # starting model's and the emergent rows are present and tell which is which
    pre, em = sw[sw["source"] == "pretrained"], sw[sw["source"] == "emergent"]
    assert len(pre) == len(run.super_weights) > 0 and pre["round"].isna().all()
    assert sorted(em["round"].unique().tolist()) == [0, 1]
    assert rec["esw_total"].tolist() == em.groupby("round").size().tolist()
    coincide = em.merge(pre[["param", "row", "col"]], on=["param", "row", "col"], how="left",
                        indicator=True)["_merge"].eq("both")
    assert em["pretrained"].tolist() == coincide.tolist()
    m = run.manifest
    assert m["seed"] == 2 and m["parameters"] == run.config.to_dict()
    assert list(m["design"]) == list(design_keys()) and m["resumed_from"] is None
    assert "X1 seed 2" in cell.sentence(run)
    again = cell.run(TINY, tmp_path, progress=False)
    assert again.result.resumed_from == 1
    pd.testing.assert_frame_equal(again.tables["records"], rec)


def test_a_run_on_token_shards_records_its_folder_and_windows(tmp_path):
    from workbench.core import shards
    from workbench.core.tokenizers import ByteTokenizer

    sh = shards.prepare_shards("lee", ByteTokenizer(), tmp_path / "lee", progress=False)
    cfg = dict(TINY, corpus=str(sh.path), seq_len=32, val_seq_len=32, n_val_blocks=3)
    run = cell.run(cfg, tmp_path / "run", progress=False)
    data = run.manifest["train_data"]
    assert data["manifest_sha256"] == sh.manifest_sha256 and data["n_tokens"] == sh.n_tokens(
        "train")
    ref, offsets = sh.fixed_windows("validation", 3, 32, seed=shards.VALIDATION_SEED)
    assert data["eval_windows"]["validation"]["offsets"] == offsets
    assert run.manifest["train_tokens"] == sh.n_tokens("train")
