"""prune(): sequential Wanda vs a brute-force full-model reference, modes, errors, sweep."""

import math

import pytest
import torch

from workbench.pruning.masks import prunable_modules
from workbench.core.models import forward_logits, load_model, transformer_blocks
from workbench.pruning.methods import PruneResult, prune
from workbench.pruning.sweeps import sweep
from workbench.pruning.sequential import capture_block_inputs


def _data(n=4, seq=24, seed=0):
    return torch.randint(0, 256, (n, seq), generator=torch.Generator().manual_seed(seed))


def _brute_sequential_wanda(model, data, sparsity):
    """Reference: for each block, a FULL forward of the current (partly pruned) model with
    hooks storing that block's linear inputs; score |W| * ||X_j||; torch.sort per row."""
    modules = prunable_modules(model)
    masks = {}
    for block in transformer_blocks(model):
        mine = {n: m for n, m in modules.items() if any(m is x for x in block.modules())}
        store = {n: [] for n in mine}
        hs = [m.register_forward_pre_hook(lambda mod, a, n=n: store[n].append(a[0].detach()))
              for n, m in mine.items()]
        with torch.no_grad():
            for b in data.split(2):
                forward_logits(model, b)
        for h in hs:
            h.remove()
        for n, m in mine.items():
            X = torch.cat([x.reshape(-1, x.shape[-1]) for x in store[n]])
            score = m.weight.detach().abs() * X.norm(dim=0)[None, :]
            k = int(score.shape[1] * sparsity)
            idx = torch.sort(score, dim=1, stable=True).indices[:, :k]
            keep = torch.ones_like(score, dtype=torch.bool).scatter_(1, idx, False)
            with torch.no_grad():
                m.weight.mul_(keep)
            masks[n] = keep
    return masks


def test_sequential_wanda_matches_brute_force_full_forward():
    data = _data()
    ref_model, _ = load_model("tiny-llama", device="cpu")
    ref = _brute_sequential_wanda(ref_model, data, 0.5)
    model, _ = load_model("tiny-llama", device="cpu")
    res = prune(model, "wanda", 0.5, calibration_tokens=data, batch_size=2)
    assert isinstance(res, PruneResult) and res.info["mode"] == "sequential"
    for n in ref:
        agree = (res.masks[n] == ref[n]).float().mean()
        assert agree > 0.999, n
    with torch.no_grad():
        torch.testing.assert_close(forward_logits(model, data), forward_logits(ref_model, data),
                                   rtol=1e-3, atol=1e-3)


def test_sequential_and_all_at_once_agree_on_first_block_only():
    data = _data()
    a, _ = load_model("tiny-llama", device="cpu")
    b, _ = load_model("tiny-llama", device="cpu")
    ra = prune(a, "wanda", 0.5, calibration_tokens=data)
    rb = prune(b, "wanda", 0.5, calibration_tokens=data, sequential=False)
    assert rb.info["mode"] == "all-at-once"
    for n in ra.masks:
        if ".layers.0." in n:
            assert torch.equal(ra.masks[n], rb.masks[n])
    later = [n for n in ra.masks if ".layers.1." in n]
    assert any(not torch.equal(ra.masks[n], rb.masks[n]) for n in later)


def test_wanda_obs_keeps_wanda_masks_in_block0_and_changes_kept_weights():
    data = _data()
    models = [load_model("tiny-llama", device="cpu")[0] for _ in range(3)]
    plain = prune(models[0], "wanda", 0.5, calibration_tokens=data)
    obs = prune(models[2], "wanda_obs", 0.5, calibration_tokens=data)
    p0 = dict(models[0].named_parameters())
    p2 = dict(models[2].named_parameters())
    for n in plain.masks:
        if ".layers.0." in n:  # same inputs -> same masks; corrected kept weights
            assert torch.equal(plain.masks[n], obs.masks[n])
            assert (p2[n][~obs.masks[n]] == 0).all()
            assert not torch.equal(p2[n], p0[n])


@pytest.mark.parametrize("model_name", ["tiny-gpt2", "tiny-llama"])
@pytest.mark.parametrize("method,kw", [("magnitude", {"scope": "global"}),
                                       ("wanda", {"scope": "2:4"}),
                                       ("wanda_obs", {}), ("taylor", {})])
def test_methods_hit_exact_sparsity(model_name, method, kw):
    model, _ = load_model(model_name, device="cpu")
    res = prune(model, method, 0.5, calibration_tokens=_data(2, 16), **kw)
    assert res.info["achieved_sparsity"] == pytest.approx(0.5, abs=1e-9)
    params = dict(model.named_parameters())
    for n, mk in res.masks.items():
        assert (params[n][~mk] == 0).all()
    assert res.report.iloc[-1]["name"] == "total"


def test_capture_records_position_embeddings_kwargs():
    model, _ = load_model("tiny-llama", device="cpu")
    items = capture_block_inputs(model, [_data(2, 10)])
    hidden, rest, kwargs = items[0]
    assert hidden.shape == (2, 10, 64)
    assert "position_embeddings" in kwargs and len(kwargs["position_embeddings"]) == 2


def test_errors():
    model, _ = load_model("tiny-llama", device="cpu")
    data = _data(2, 16)
    for bad in (-0.1, 1.0, 2):
        with pytest.raises(ValueError, match="sparsity"):
            prune(model, "magnitude", bad)
    with pytest.raises(ValueError, match="scope must be one of"):
        prune(model, "magnitude", 0.5, scope="column")
    with pytest.raises(ValueError, match="method must be one of"):
        prune(model, "obd", 0.5)
    with pytest.raises(ValueError, match="needs calibration"):
        prune(model, "wanda", 0.5)
    with pytest.raises(ValueError, match="divisible"):
        prune(torch.nn.Sequential(torch.nn.Linear(6, 4)), "magnitude", 0.5, scope="2:4")
    with pytest.raises(TypeError, match=r"unknown keyword argument\(s\) \['scop'\]"):
        prune(model, "magnitude", 0.5, scop="row")
    with pytest.raises(TypeError, match="corection"):
        prune(model, "wanda", 0.5, calibration_tokens=data, corection="obs")
    with pytest.raises(TypeError, match="max_samples"):  # a PRAC option, not Wanda's
        prune(model, "wanda", 0.5, calibration_tokens=data, max_samples=3)
    with pytest.raises(ValueError, match="allocation must be one of"):
        prune(model, "magnitude", 0.5, allocation="owl2")
    with pytest.raises(ValueError, match="scope='global' is not supported"):
        prune(model, "wanda_obs", 0.5, calibration_tokens=data, scope="global")


def test_sweep_reuses_and_restores():
    model, _ = load_model("tiny-llama", device="cpu")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    data = _data(2, 16)
    ppl = []

    def evaluate(m):
        with torch.no_grad():
            logits = forward_logits(m, data)[:, :-1]
            ppl.append(math.exp(torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), data[:, 1:].reshape(-1)).item()))
        return ppl[-1]

    frame = sweep(model, "magnitude", [0.0, 0.3, 0.6], evaluate=evaluate)
    assert list(frame["achieved_sparsity"].round(3)) == [0.0, 0.3, 0.6]
    assert frame["metric"].iloc[0] == pytest.approx(ppl[0])
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n])
    f2 = sweep(model, "wanda", [0.5], calibration_tokens=data)
    assert f2["achieved_sparsity"].iloc[0] == pytest.approx(0.5)


@pytest.mark.slow
def test_real_model_sequential_wanda_smoke():
    from workbench.core.data import calibration_windows, load_corpus, token_blocks
    from workbench.core.evaluate import perplexity

    model, tok = load_model("smollm2-135m", device="cpu")
    corpus = load_corpus("wiki-excerpt")
    cal = calibration_windows(tok, corpus.train[:20], 32, 2, seed=0)
    val = token_blocks(tok, corpus.validation, 32, n_blocks=2)
    dense = perplexity(model, val, progress=False)
    res = prune(model, "wanda", 0.5, calibration_tokens=cal,
                include=[r"model\.layers\.[0-2]\..*proj"])
    assert res.info["achieved_sparsity"] == pytest.approx(0.5)
    assert len(res.masks) == 3 * 7
    pruned = perplexity(model, val, progress=False)
    assert math.isfinite(pruned) and pruned > dense


def _block0_inputs(model, data):
    """Brute force: every input row of block 0's linear layers in the dense model."""
    mods = {n: m for n, m in prunable_modules(model).items() if ".layers.0." in n}
    store = {n: [] for n in mods}
    hs = [m.register_forward_pre_hook(lambda mod, a, n=n: store[n].append(a[0].detach()))
          for n, m in mods.items()]
    with torch.no_grad():
        forward_logits(model, data)
    for h in hs:
        h.remove()
    return {n: torch.cat([x.reshape(-1, x.shape[-1]) for x in v]) for n, v in store.items()}


def test_correction_lowers_each_first_block_layer_reconstruction_error():
    data = _data()
    dense, _ = load_model("tiny-llama", device="cpu")
    X = _block0_inputs(dense, data)
    W = {n: p.detach().clone() for n, p in dense.named_parameters()}
    plain_m, obs_m = (load_model("tiny-llama", device="cpu")[0] for _ in range(2))
    prune(plain_m, "wanda", 0.5, calibration_tokens=data)
    prune(obs_m, "wanda_obs", 0.5, calibration_tokens=data)
    plain, obs = dict(plain_m.named_parameters()), dict(obs_m.named_parameters())
    for n, x in X.items():
        err_plain = torch.linalg.norm(x @ (W[n] - plain[n].detach()).t())
        err_obs = torch.linalg.norm(x @ (W[n] - obs[n].detach()).t())
        assert err_obs < err_plain, n


def test_prac_with_all_samples_equals_full_hessian_and_norms_use_all_tokens():
    data = _data()
    n_tokens = data.numel()
    models = [load_model("tiny-llama", device="cpu")[0] for _ in range(3)]
    obs = prune(models[0], "wanda_obs", 0.5, calibration_tokens=data)
    prac_all = prune(models[1], "wanda_prac", 0.5, calibration_tokens=data, max_samples=n_tokens)
    prac_few = prune(models[2], "wanda_prac", 0.5, calibration_tokens=data, max_samples=8)
    p0, p1 = dict(models[0].named_parameters()), dict(models[1].named_parameters())
    for n in obs.masks:
        assert (obs.masks[n] == prac_all.masks[n]).float().mean() > 0.999, n
        if ".layers.0." in n:
            torch.testing.assert_close(p1[n], p0[n], rtol=1e-3, atol=1e-4)
            # Wanda norms come from all tokens, not from the 8 stored rows
            assert torch.equal(prac_few.masks[n], obs.masks[n])


def test_top_level_names_are_the_functions_after_submodule_imports():
    import workbench
    import workbench.pruning.gradient_probe
    import workbench.pruning.methods
    import workbench.pruning.scores

    assert workbench.prune is workbench.pruning.methods.prune
    assert workbench.importance is workbench.pruning.scores.importance
    assert workbench.gradprobe is workbench.pruning.gradient_probe.gradprobe


def test_bad_calibration_tokens_are_clear_errors():
    model, _ = load_model("tiny-llama", device="cpu")
    vocab = model.config.vocab_size
    with pytest.raises(TypeError, match="calibration_tokens must hold integer token ids"):
        prune(model, "wanda", 0.5, calibration_tokens=torch.rand(2, 8))
    with pytest.raises(ValueError, match=f"calibration_tokens holds token id {vocab}"):
        prune(model, "wanda", 0.5, calibration_tokens=torch.full((2, 8), vocab))
    with pytest.raises(ValueError, match="calibration_tokens is empty"):
        prune(model, "wanda", 0.5, calibration_tokens=torch.zeros(0, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="calibration_tokens must be a LongTensor"):
        prune(model, "wanda", 0.5, calibration_tokens="some text")


def test_every_method_is_registered_with_label_and_a_distinct_look_and_runs():
    from workbench.experiments.analysis.plots import style
    from workbench.pruning.registry import METHODS

    assert all(isinstance(e.props["label"], str) and e.props["label"] for e in METHODS)
    assert not any("color" in e.props for e in METHODS)  # presentation lives in plots.style
    looks = [(style(e.name).color, style(e.name).marker) for e in METHODS]
    assert all(c.startswith("#") and len(c) == 7 for c, _ in looks)
    assert len(set(looks)) == len(looks)  # every method drawn distinguishably
    data = _data(2, 16)
    for entry in METHODS:
        if entry.name in ("gradprobe", "obd_true", "obd_empirical"):
            continue  # covered by their own tests (slower)
        model, _ = load_model("tiny-llama", device="cpu")
        res = prune(model, entry.name, 0.5, calibration_tokens=data)
        assert res.info["method"] == entry.name
        assert res.info["scope"] == entry.props["default_scope"]
        assert res.info["achieved_sparsity"] == pytest.approx(0.5, abs=0.01)


def test_sweep_scores_once_for_reusable_methods(monkeypatch):
    from workbench.pruning import methods, sweeps

    calls = []
    real = methods.importance
    for module in (methods, sweeps):  # sweep scores once; prune must not score again
        monkeypatch.setattr(module, "importance",
                            lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    model, _ = load_model("tiny-llama", device="cpu")
    sweep(model, "taylor", [0.2, 0.4, 0.6], calibration_tokens=_data(2, 16))
    assert calls == ["taylor"]
    with pytest.raises(TypeError, match="scop"):
        sweep(model, "taylor", [0.2], calibration_tokens=_data(2, 16), scop="row")
