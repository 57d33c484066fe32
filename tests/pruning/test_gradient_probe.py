"""Gradient probe against an independent gradient computation."""

import pytest
import torch

from workbench.pruning.gradient_probe import gradprobe
from workbench.pruning.masks import prunable_parameters, select_masks
from workbench.core.models import forward_logits, load_model


def _data():
    return torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(1))


def _abs_grad(model, names, data):
    params = dict(model.named_parameters())
    total = [torch.zeros_like(params[n]) for n in names]
    batches = data.split(2)
    for b in batches:
        logits = forward_logits(model, b)[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 b[:, 1:].reshape(-1))
        for t, g in zip(total, torch.autograd.grad(loss, [params[n] for n in names])):
            t += g
    return {n: (t / len(batches)).abs() for n, t in zip(names, total)}


@pytest.mark.parametrize("threshold", [0.0, 0.5])
def test_restores_exactly_the_candidates_whose_gradient_rose(threshold):
    data = _data()
    model, _ = load_model("tiny-llama", device="cpu")
    ref_model, _ = load_model("tiny-llama", device="cpu")
    res = gradprobe(model, 0.5, calibration_tokens=data, threshold=threshold, batch_size=2,
                    reduction_factor=0.1)
    # independent reference
    params = prunable_parameters(ref_model)
    names = list(params)
    cand = {n: ~m for n, m in select_masks({n: p.detach().abs() for n, p in params.items()},
                                           0.5, scope="global").items()}
    g0 = _abs_grad(ref_model, names, data)
    with torch.no_grad():
        for n in names:
            params[n][cand[n]] *= 0.1
    g1 = _abs_grad(ref_model, names, data)
    mismatch = 0
    for n in names:
        rose = (g1[n] - g0[n]) / (g0[n] + 1e-12) > threshold
        restored_ref = cand[n] & rose
        restored = cand[n] & res.masks[n]
        mismatch += int((restored != restored_ref).sum())
        assert torch.equal(res.candidates[n], cand[n])
    assert mismatch <= 2  # float-rounding ties at the threshold only
    assert res.info["achieved_sparsity"] <= 0.5
    pruned = sum(int((~m).sum()) for m in res.masks.values())
    assert res.info["restored"] == sum(int(c.sum()) for c in cand.values()) - pruned
    p = dict(model.named_parameters())
    for n, m in res.masks.items():
        assert (p[n][~m] == 0).all()


def test_layerwise_mode_and_threshold_sweep():
    data = _data()
    model, _ = load_model("tiny-llama", device="cpu")
    res = gradprobe(model, 0.5, calibration_tokens=data, mode="layerwise", base="wanda",
                    scope="row", apply=False, include=[r"layers\.0\.mlp"])
    assert len(res.g1) == 3
    frame = res.sweep([0.0, 0.1, 1.0, 1e9])
    assert frame["achieved_sparsity"].is_monotonic_increasing
    assert frame["achieved_sparsity"].iloc[-1] == pytest.approx(0.5)
    assert (frame["target_sparsity"] == 0.5).all()


def test_errors():
    model, _ = load_model("tiny-llama", device="cpu")
    with pytest.raises(ValueError, match="base must be one of"):
        gradprobe(model, 0.5, calibration_tokens=_data(), base="random")
    with pytest.raises(ValueError, match="mode must be one of"):
        gradprobe(model, 0.5, calibration_tokens=_data(), mode="blockwise")
    with pytest.raises(ValueError, match="calibration"):
        gradprobe(model, 0.5, calibration_tokens=None)


def test_exact_target_keeps_the_base_layer_counts_and_only_swaps_the_margin():
    data = _data()
    model, _ = load_model("tiny-llama", device="cpu")
    res = gradprobe(model, 0.5, calibration_tokens=data, exact_sparsity=True, guard=False,
                    pool_margin=0.2, batch_size=2, apply=False)
    scores = {n: p.detach().abs() for n, p in prunable_parameters(model).items()}
    base = select_masks(scores, 0.5, scope="global")
    core = select_masks(scores, 0.4, scope="global")
    outer = select_masks(scores, 0.6, scope="global")
    for n, keep in res.masks.items():
        assert int((~keep).sum()) == int((~base[n]).sum()), n  # base's per-layer count
        assert not (keep & ~core[n]).any()  # the surest base candidates always pruned
        assert not (~keep & outer[n]).any()  # nothing outside the band is pruned
        # inside the band, the pruned ones have the lowest relative gradient rise
        band = ~core[n] ^ ~outer[n]
        rise = (res.g1[n] - res.g0[n]) / (res.g0[n] + res.eps)
        chosen, left = rise[band & ~keep], rise[band & keep]
        if chosen.numel() and left.numel():
            assert chosen.max() <= left.min()
    assert res.info["achieved_sparsity"] == pytest.approx(0.5, abs=1e-3)


def test_exact_target_guard_never_worse_than_base_on_calibration():
    from workbench.pruning.gradient_probe import _calibration_loss

    data = _data()
    model, _ = load_model("tiny-llama", device="cpu")
    scores = {n: p.detach().abs() for n, p in prunable_parameters(model).items()}
    base = select_masks(scores, 0.5, scope="global")
    res = gradprobe(model, 0.5, calibration_tokens=data, exact_sparsity=True, batch_size=2,
                    apply=False)
    assert res.info["fallback"] in (True, False)
    assert (_calibration_loss(model, res.masks, data, 2)
            <= _calibration_loss(model, base, data, 2) + 1e-9)
    with pytest.raises(ValueError, match="exact_sparsity takes no"):
        gradprobe(model, 0.5, calibration_tokens=data, exact_sparsity=True, candidate_sparsity=0.7)
