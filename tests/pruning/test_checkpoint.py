"""Pruned checkpoints: load_model(saved folder) gives the same perplexity and zeros."""

import json

import pytest
import torch

import workbench as wb
from workbench.pruning.checkpoint import load_pruned, save_pruned


def _round_trip(model, tok, method, tmp_path, *, cal=None, seq=32):
    text = wb.load_corpus("lee")
    val = wb.token_blocks(tok, text.validation, seq, n_blocks=2, seed=0)
    res = wb.prune(model, method, 0.5, calibration_tokens=cal, batch_size=2)
    ppl = wb.perplexity(model, val, batch_size=2, progress=False)
    out = save_pruned(model, tok, res.masks, tmp_path / "ckpt",
                      dict(method=method, sparsity=0.5))
    loaded, tok2 = wb.load_model(out, device="cpu")
    assert type(loaded) is type(model)
    assert wb.perplexity(loaded, val, batch_size=2, progress=False) == pytest.approx(ppl,
                                                                                     rel=1e-6)
    params = dict(loaded.named_parameters())
    for name, keep in res.masks.items():
        assert torch.equal(params[name] == 0, ~keep | (dict(model.named_parameters())[name] == 0))
        assert not params[name][~keep].any()
    for name, p in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], p), name
    probe = "Pruned checkpoints keep the tokenizer."
    assert list(tok2.encode(probe, add_special_tokens=False)) == list(
        tok.encode(probe, add_special_tokens=False))
    _, _, masks, manifest = load_pruned(out)
    assert masks.keys() == res.masks.keys()
    assert all(torch.equal(masks[n], res.masks[n].cpu()) for n in masks)
    assert manifest["parameters"] == dict(method=method, sparsity=0.5)
    assert manifest["masks"]["sparsity"] == pytest.approx(res.info["achieved_sparsity"])
    assert "torch" in manifest["environment"]
    return out


def test_round_trip_tiny_llama_wanda(tmp_path):
    model, tok = wb.load_model("tiny-llama", device="cpu", seed=0)
    cal = wb.calibration_windows(tok, wb.load_corpus("lee").train, 16, 2, seed=0)
    _round_trip(model, tok, "wanda", tmp_path, cal=cal)


def test_round_trip_tiny_gpt2_magnitude(tmp_path):
    model, tok = wb.load_model("tiny-gpt2", device="cpu", seed=0)
    _round_trip(model, tok, "magnitude", tmp_path)


def test_bad_inputs(tmp_path):
    model, tok = wb.load_model("tiny-llama", device="cpu", seed=0)
    res = wb.prune(model, "magnitude", 0.5)
    name = next(iter(res.masks))
    with torch.no_grad():
        dict(model.named_parameters())[name][~res.masks[name]] = 1.0
    with pytest.raises(ValueError, match="non-zero"):
        save_pruned(model, tok, res.masks, tmp_path / "x")
    with pytest.raises(ValueError, match="does not have"):
        save_pruned(model, tok, {"nope.weight": res.masks[name]}, tmp_path / "x")
    (tmp_path / "exists").mkdir()
    wb.apply_masks(model, res.masks)
    with pytest.raises(FileExistsError, match="exists"):
        save_pruned(model, tok, res.masks, tmp_path / "exists")
    assert save_pruned(model, tok, res.masks, tmp_path / "exists", overwrite=True).is_dir()
    assert not list(tmp_path.glob(".x.*"))  # failed saves leave nothing behind
    with pytest.raises(FileNotFoundError, match="masks.safetensors"):
        load_pruned(tmp_path / "x" if (tmp_path / "x").exists() else tmp_path)


@pytest.mark.slow
def test_round_trip_default_model(tmp_path):
    model, tok = wb.load_model("smollm2-135m", device="cpu")
    out = _round_trip(model, tok, "magnitude", tmp_path, seq=64)
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["tie_word_embeddings"]
