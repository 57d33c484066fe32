"""Published tables as data and their reproduction: ours next to theirs, labelled."""

import pytest
import torch

import workbench as wb
from tests.core.test_protocols import write_c4, write_wikitext
from workbench import cli
from workbench.core import protocols
from workbench.pruning import reproduce


def test_tables_hold_the_published_numbers_with_their_protocol():
    t = reproduce.load_table("wanda-llama2-7b")
    assert t.eval_card == "wikitext2" and t.calibration_card == "c4"
    assert t.seq_len == 4096 and t.n_calibration == 128 and "locuslab/wanda" in t.source
    values = {(r["method"], str(r["pattern"])): r["value"] for r in t.rows}
    # spot checks typed from the README table (locuslab/wanda, "LLaMA-2 results")
    assert values[("dense", "dense")] == 5.12 and values[("wanda", "0.5")] == 6.42
    assert values[("sparsegpt", "2:4")] == 10.17 and values[("magnitude", "4:8")] == 16.48
    assert len(t.rows) == 10
    assert reproduce.load_table("wanda-llama2-70b").rows[0]["value"] == 3.12
    owl = reproduce.load_table("owl-llama1-7b")
    assert owl.seq_len == 2048
    assert {(r["method"], r["allocation"]): r["value"] for r in owl.rows}[("wanda", "owl")] \
        == 24.55
    with pytest.raises(ValueError, match="unknown published table 'wanda-7b'.*wanda-llama2-7b"):
        reproduce.load_table("wanda-7b")


def test_reproduce_runs_the_table_with_its_cards_and_labels_the_model(tmp_path):
    write_wikitext(tmp_path, ["Alpha beta gamma delta.", "", "Epsilon zeta eta theta."] * 8)
    write_c4(tmp_path, "c4-train.00000-of-01024.json.gz",
             [f"Document {i} " + "words and more words " * (1 + i % 4) for i in range(12)])
    model, tok = wb.load_model("tiny-llama", device="cpu", seed=0)
    dense = {n: p.detach().clone() for n, p in model.named_parameters()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = reproduce.reproduce("wanda-llama2-7b", model, tok, data=tmp_path, seq_len=16,
                                  n_eval=4, n_calibration=2, seeds=[0, 1], batch_size=2,
                                  model_name="tiny-llama", progress=False)
    finally:
        torch.set_num_threads(threads)
    c = res.comparison
    assert len(c) == 10 and not res.model_matches
    assert "NOT the table's model (meta-llama/Llama-2-7b-hf)" in res.text()
    assert any("seq_len 16 instead of the table's 4096" in d for d in res.deviations)
    assert any("4 of the card's" in d for d in res.deviations)
    w = protocols.perplexity_windows("wikitext2", tok, 16, data=tmp_path, n_windows=4)
    assert (res.rows["eval_fingerprint"] == str(w.fingerprint)).all()
    # ours = the mean over seeds of fresh runs on the card's windows; diff = ours - theirs
    ppl = []
    for seed in (0, 1):
        cal = protocols.calibration_windows("c4", tok, 16, n_windows=2, seed=seed,
                                            data=tmp_path).tokens
        wb.restore(model, dense)
        wb.prune(model, "wanda", 0.5, scope="4:8", calibration_tokens=cal, batch_size=2)
        ppl.append(wb.perplexity(model, w.tokens, batch_size=2, progress=False))
    row = c[(c.method == "wanda") & (c.pattern == "4:8")].iloc[0]
    assert row["ours_mean"] == pytest.approx(sum(ppl) / 2, rel=1e-5)
    assert row["ours_sd"] == pytest.approx(abs(ppl[0] - ppl[1]) / 2 ** 0.5, rel=1e-4)
    assert row["diff"] == pytest.approx(row["ours_mean"] - 7.97)
    assert row["theirs"] == 7.97 and row["n_seeds"] == 2
    assert c[c.method == "dense"].iloc[0]["ours_sd"] == 0.0


def test_cli_reproduce_checks_before_loading_a_model(tmp_path, capsys):
    assert cli.main(["reproduce", "nope", "--model", str(tmp_path)]) == 2
    assert "unknown published table 'nope'" in capsys.readouterr().err
    assert cli.main(["reproduce", "wanda-llama2-7b", "--model", str(tmp_path / "none"),
                     "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "card 'wikitext2' needs the file" in err and "test-00000-of-00001.parquet" in err
