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


# ----------------------------------------------------------------------------- integrity on load
@pytest.fixture
def saved(tmp_path):
    model, tok = wb.load_model("tiny-llama", device="cpu", seed=0)
    res = wb.prune(model, "magnitude", 0.5)
    return save_pruned(model, tok, res.masks, tmp_path / "ckpt"), res.masks


def _flip(path, at):
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_manifest_holds_the_sha256_of_every_file(saved):
    import hashlib

    out, _ = saved
    files = json.loads((out / "manifest.json").read_text())["files"]
    assert {"model.safetensors", "masks.safetensors", "config.json"} <= files.keys()
    for name, record in files.items():
        assert record["sha256"] == hashlib.sha256((out / name).read_bytes()).hexdigest()


def test_flipped_weight_bytes_are_detected(saved):
    out, _ = saved
    _flip(out / "model.safetensors", -7)
    with pytest.raises(ValueError, match=r"model.safetensors is corrupted.*SHA-256"):
        load_pruned(out)


def test_another_models_masks_are_detected(saved, tmp_path):
    """Masks of a different pruning, with the manifest's checksum rewritten to match: the
    masks are checked against the weights' zeros."""
    from workbench.pruning.checkpoint import file_checksums

    out, masks = saved
    other = {n: ~m for n, m in masks.items()}
    wb.save_masks(other, out / "masks.safetensors")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"] = file_checksums(out)
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"masks.safetensors does not match the weights.*"
                                         r"non-zero"):
        load_pruned(out)


def test_masks_naming_unknown_parameters_are_detected(saved):
    out, masks = saved
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["files"]  # an old folder: no checksums, the masks are still checked
    (out / "manifest.json").write_text(json.dumps(manifest))
    wb.save_masks({"model.no_such.weight": next(iter(masks.values()))},
                  out / "masks.safetensors")
    with pytest.warns(UserWarning, match="no file checksums"):
        with pytest.raises(ValueError, match="model.no_such.weight"):
            load_pruned(out)


def test_cut_off_manifest_and_truncated_weights_are_named(saved):
    out, _ = saved
    text = (out / "manifest.json").read_text()
    (out / "manifest.json").write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match=r"manifest.json is cut off"):
        load_pruned(out)
    (out / "manifest.json").write_text(text)
    raw = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(raw[: len(raw) - 100])
    with pytest.raises(ValueError, match=r"model.safetensors has \d+ bytes.*truncated"):
        load_pruned(out)
    with pytest.raises(ValueError, match=r"model.safetensors is truncated"):
        wb.load_model(out)  # load_model alone checks the safetensors layout


def test_a_checkpoint_missing_a_tensor_is_an_error(saved):
    from safetensors.torch import load_file, save_file

    out, _ = saved
    tensors = load_file(out / "model.safetensors")
    dropped = sorted(tensors)[3]
    del tensors[dropped]
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"lack 1 tensors.*{dropped}.*incomplete"):
        wb.load_model(out)


def test_a_folder_without_tokenizer_files_is_named(saved):
    out, _ = saved
    for f in out.glob("tokenizer*"):
        f.unlink()
    with pytest.raises(FileNotFoundError, match=r"ckpt has no tokenizer files"):
        wb.load_model(out)
