"""Multi-seed one-shot sweeps: rows equal fresh pruning runs and carry their settings."""

import pytest
import torch

import workbench as wb
from workbench.pruning import oneshot
from workbench.pruning.oneshot import oneshot_sweep, parse_pattern, tensor_hash

SIZES = dict(n_calibration=2, calibration_seq_len=16, n_eval=2, eval_seq_len=32, batch_size=2)


def test_rows_equal_fresh_runs_from_the_dense_model(sweep):
    model, tok, corpus, dense, df = sweep
    assert len(df) == 2 + 2 * 2 * 2  # dense per seed + methods x patterns x seeds
    assert list(df.columns) == list(oneshot.COLUMNS)
    # the sweep left the model dense
    for n, p in model.named_parameters():
        assert torch.equal(p, dense[n]), n
    fresh, _ = wb.load_model("tiny-llama", device="cpu", seed=0)
    val = wb.token_blocks(tok, corpus.validation, 32, n_blocks=2, seed=0)
    for method, pattern, seed in [("wanda", "2:4", 1), ("wanda", "unstructured", 0)]:
        cal = wb.calibration_windows(tok, corpus.train, 16, 2, seed=seed)
        wb.restore(fresh, dense)
        wb.prune(fresh, method, 0.5, scope="2:4" if pattern == "2:4" else None,
                 calibration_tokens=cal, batch_size=2)
        row = df[(df.method == method) & (df.pattern == pattern) & (df.seed == seed)].iloc[0]
        assert row["val_ppl"] == pytest.approx(wb.perplexity(fresh, val, batch_size=2,
                                                             progress=False), rel=1e-5)
        assert row["calibration_hash"] == tensor_hash(cal)
        assert row["achieved_sparsity"] == pytest.approx(0.5, abs=1e-6)
    dense_ppl = wb.perplexity(model, val, batch_size=2, progress=False)
    assert df[df.method == "dense"]["val_ppl"].to_numpy() == pytest.approx([dense_ppl] * 2)


def test_rows_carry_the_evaluation_settings(sweep):
    *_, df = sweep
    assert (df["eval_n_tokens"] == 2 * 31).all() and (df["eval_context_length"] == 32).all()
    assert (df["eval_split"] == "validation").all() and df["eval_hash"].nunique() == 1
    assert df.groupby("seed")["calibration_hash"].nunique().eq(1).all()
    assert df["calibration_hash"].nunique() == 2  # seeds draw different windows
    assert df["torch_version"].iloc[0] == torch.__version__
    assert df["transformers_version"].notna().all() and df["lm_eval_version"].notna().all()
    assert (df.loc[df.method != "dense", "prune_seconds"] > 0).all()
    mag = df[(df.method == "magnitude") & (df.pattern == "unstructured")]
    assert not mag["depends_on_calibration"].any() and mag["val_ppl"].nunique() == 1
    wanda = df[(df.method == "wanda") & (df.pattern == "unstructured")]
    assert wanda["depends_on_calibration"].all()


def test_bad_inputs_are_clear(sweep):
    model, tok, corpus, *_ = sweep
    with pytest.raises(ValueError, match="method.*magnitude"):
        oneshot_sweep(model, tok, corpus, methods=["nope"], **SIZES)
    with pytest.raises(ValueError, match="allocations must be one of.*owl"):
        oneshot_sweep(model, tok, corpus, methods=["wanda"], allocations=["even"], **SIZES)
    with pytest.raises(ValueError, match="'gradprobe' does not support allocation"):
        oneshot_sweep(model, tok, corpus, methods=["gradprobe"], allocations=["owl"], **SIZES)
    with pytest.raises(ValueError, match="sparsity"):
        parse_pattern(1.0)
    with pytest.raises(ValueError, match="2:4"):
        parse_pattern("row")
    assert parse_pattern("2:4") == ("2:4", 0.5, "2:4")
    with pytest.raises(ValueError, match="method_options"):
        oneshot_sweep(model, tok, corpus, methods=["wanda"], method_options={"magnitude": {}},
                      **SIZES)


def test_method_options_scope_replaces_the_default_for_unstructured_levels(sweep):
    model, tok, corpus, dense, df = sweep
    kw = dict(SIZES, methods=["magnitude"], seeds=[0], dense=False, progress=False)
    glob = oneshot_sweep(model, tok, corpus, sparsities=[0.5],
                         method_options={"magnitude": {"scope": "global"}}, **kw)
    assert glob["scope"].tolist() == ["global"]
    layer = df[(df.method == "magnitude") & (df.pattern == "unstructured")].iloc[0]
    assert layer["scope"] == "layer" and glob["val_ppl"].iloc[0] != layer["val_ppl"]
    fresh, _ = wb.load_model("tiny-llama", device="cpu", seed=0)
    wb.restore(fresh, dense)
    wb.prune(fresh, "magnitude", 0.5, scope="global")
    val = wb.token_blocks(tok, corpus.validation, 32, n_blocks=2, seed=0)
    assert glob["val_ppl"].iloc[0] == pytest.approx(
        wb.perplexity(fresh, val, batch_size=2, progress=False), rel=1e-5)
    with pytest.raises(ValueError, match="fixes the scope"):
        oneshot_sweep(model, tok, corpus, sparsities=["2:4"],
                      method_options={"magnitude": {"scope": "row"}}, **kw)


def test_rows_record_their_protocol(sweep):
    *_, corpus, dense, df = sweep
    from workbench.core.protocols import fingerprint

    val = wb.token_blocks(sweep[1], corpus.validation, 32, n_blocks=2, seed=0)
    assert (df["eval_card"] == "corpus-blocks:lee").all()
    assert (df["eval_fingerprint"] == str(fingerprint(val))).all()
    assert (df["eval_ppl_level"] == "token").all() and (df["zeroshot_metric"] == "acc").all()
    assert (df["calibration_card"] == "corpus-windows:lee").all()


def test_sweep_with_cards_equals_fresh_runs_on_the_cards_windows(tmp_path, one_thread):
    from tests.core.test_protocols import write_c4, write_wikitext
    from workbench.core import protocols

    model, tok = wb.load_model("tiny-llama", device="cpu", seed=0)
    dense = {n: p.detach().clone() for n, p in model.named_parameters()}
    write_wikitext(tmp_path, ["Alpha beta gamma delta.", "", "Epsilon zeta eta theta."] * 8)
    write_c4(tmp_path, "c4-train.00000-of-01024.json.gz",
             [f"Document {i} " + "words and more words " * (i % 4) for i in range(12)])
    df = oneshot_sweep(model, tok, None, methods=["wanda"], sparsities=[0.5], seeds=[0, 1],
                       n_calibration=2, calibration_seq_len=16, n_eval=None, eval_seq_len=32,
                       batch_size=2, eval_card="wikitext2", calibration_card="c4",
                       data=tmp_path, progress=False)
    w = protocols.perplexity_windows("wikitext2", tok, 32, data=tmp_path)
    assert (df["eval_card"] == "wikitext2").all() and (df["calibration_card"] == "c4").all()
    assert (df["eval_fingerprint"] == str(w.fingerprint)).all()
    assert (df["eval_n_blocks"] == w.n_available).all()
    for seed in (0, 1):
        cal = protocols.calibration_windows("c4", tok, 16, n_windows=2, seed=seed,
                                            data=tmp_path).tokens
        wb.restore(model, dense)
        wb.prune(model, "wanda", 0.5, calibration_tokens=cal, batch_size=2)
        row = df[(df.method == "wanda") & (df.seed == seed)].iloc[0]
        assert row["calibration_hash"] == tensor_hash(cal)
        assert row["val_ppl"] == pytest.approx(
            wb.perplexity(model, w.tokens, batch_size=2, progress=False), rel=1e-5)
    with pytest.raises(FileNotFoundError, match="'wikitext2'.*test-00000-of-00001.parquet"):
        oneshot_sweep(model, tok, None, methods=["wanda"], eval_card="wikitext2",
                      calibration_card="c4", data=tmp_path / "nowhere", progress=False)
