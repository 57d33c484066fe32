"""Tests for workbench.lottery.superweights: detection, causal check, protection, tracking."""

from __future__ import annotations

import pytest
import torch

from workbench.pruning.masks import select_masks
from workbench.core.models import load_model
from workbench.lottery.superweights import (
    activation_profile,
    control_positions,
    find_super_weights,
    protect_scores,
    super_weight_effect,
    super_weight_status,
    track_super_weights,
    zeroed,
)

ROW, COL = 5, 17  # planted super weight: down_proj.weight[ROW, COL] of layer 0
PARAM = "model.layers.0.mlp.down_proj.weight"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def ids():
    return torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(1))


def planted_llama(second: bool = False):
    """tiny-llama with a massive activation on MLP channel COL of layer 0 that
    down_proj.weight[ROW, COL] writes into residual channel ROW (optionally a weaker
    second super weight at [ROW + 1, COL], hidden behind the first)."""
    model, _ = load_model("tiny-llama", device="cpu", seed=0)
    mlp = model.model.layers[0].mlp
    gen = torch.Generator().manual_seed(0)
    direction = torch.randn(mlp.up_proj.weight.shape[1], generator=gen) * 5
    with torch.no_grad():
        mlp.gate_proj.weight[COL] = direction
        mlp.up_proj.weight[COL] = direction
        mlp.down_proj.weight[ROW, COL] = 1.0
        if second:
            mlp.down_proj.weight[ROW + 1, COL] = 0.3
    return model


def test_planted_super_weight_is_found(ids):
    model = planted_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sws = find_super_weights(model, ids, threshold=50.0)
    assert [(s["param"], s["row"], s["col"], s["layer"]) for s in sws] == [(PARAM, ROW, COL, 0)]
    # independent reference for the recorded activations: hook the module ourselves
    seen = {}
    mod = model.model.layers[0].mlp.down_proj
    h = mod.register_forward_hook(lambda m, i, o: seen.update(x=i[0], y=o))
    with torch.no_grad():
        model(ids)
    h.remove()
    assert sws[0]["input_activation"] == pytest.approx(seen["x"].abs().max().item())
    assert sws[0]["output_activation"] == pytest.approx(seen["y"].abs().max().item())
    assert sws[0]["value"] == 1.0
    # the model is restored
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_no_super_weight_in_plain_model(ids):
    model, _ = load_model("tiny-llama", device="cpu", seed=0)
    assert find_super_weights(model, ids, threshold=50.0) == []
    prof = activation_profile(model, ids)
    assert len(prof) == 2 and max(p["output_max"] for p in prof) < 50


def test_iteration_finds_the_hidden_second_super_weight(ids):
    model = planted_llama(second=True)
    sws = find_super_weights(model, ids, threshold=50.0)
    got = [(s["row"], s["col"], s["iteration"]) for s in sws]
    assert got == [(ROW, COL, 0), (ROW + 1, COL, 1)]  # and no cascade down column COL
    assert len(find_super_weights(model, ids, threshold=50.0, max_iter=1)) == 1


def test_gpt2_transposed_conv1d():
    model, _ = load_model("tiny-gpt2", device="cpu", seed=0)
    mlp = model.transformer.h[1].mlp
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        mlp.c_fc.weight[:, COL] = torch.randn(mlp.c_fc.weight.shape[0], generator=gen) * 5
        mlp.c_fc.bias[COL] = 20.0
        mlp.c_proj.weight[COL, ROW] = 3.0  # Conv1D stores [in, out]
    ids = torch.randint(0, 256, (2, 32), generator=gen)
    sws = find_super_weights(model, ids, threshold=30.0, module_name="mlp.c_proj")
    assert len(sws) == 1
    sw = sws[0]
    assert (sw["layer"], sw["row"], sw["col"]) == (1, COL, ROW)
    assert (sw["in_channel"], sw["out_channel"]) == (COL, ROW)
    assert sw["param"] == "transformer.h.1.mlp.c_proj.weight"
    with pytest.raises(ValueError, match="module_name"):
        find_super_weights(model, ids, module_name="mlp.down_proj")


def test_causal_check_and_controls(ids):
    model = planted_llama()
    sws = find_super_weights(model, ids, threshold=50.0)
    w = model.get_parameter(PARAM).detach().clone()
    # the planted SW is the largest entry: control is the largest other entry
    (cp, cr, cc), = control_positions(model, sws, seed=0)
    flat = w.abs().flatten().clone()
    flat[ROW * w.shape[1] + COL] = -1
    assert (cp, cr * w.shape[1] + cc) == (PARAM, int(flat.argmax()))
    # a smaller "SW": every control entry has at least its magnitude
    small = [dict(param=PARAM, row=0, col=0)]
    for seed in range(5):
        (_, r, c), = control_positions(model, small, seed=seed)
        assert abs(w[r, c]) >= abs(w[0, 0]) and (r, c) != (0, 0)
    eff = super_weight_effect(model, ids, sws, n_controls=2, seed=0)
    # independent reference for the zeroed perplexity
    with torch.no_grad():
        model.get_parameter(PARAM)[ROW, COL] = 0
        logits = model(ids).logits[:, :-1]
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                ids[:, 1:].reshape(-1))
        model.get_parameter(PARAM)[ROW, COL] = 1.0
    assert eff["ppl_zeroed"] == pytest.approx(torch.exp(nll).item(), rel=1e-5)
    assert eff["ppl_zeroed"] != eff["ppl_dense"]
    assert len(eff["ppl_control"]) == 2 and eff["n_blocks"] == 2 and eff["seq_len"] == 32
    assert torch.equal(model.get_parameter(PARAM).detach(), w)


def test_zeroed_context_restores():
    model = planted_llama()
    with zeroed(model, [(PARAM, ROW, COL)]):
        assert model.get_parameter(PARAM)[ROW, COL] == 0
    assert model.get_parameter(PARAM)[ROW, COL] == 1.0


def test_protection_keeps_super_weight_at_high_sparsity():
    model = planted_llama()
    sw = [dict(param=PARAM, row=0, col=0, value=float(model.get_parameter(PARAM).detach()[0, 0]))]
    with torch.no_grad():
        model.get_parameter(PARAM)[0, 0] = 1e-6  # would be pruned first
    scores = {n: p.detach().abs() for n, p in model.named_parameters() if n.endswith("proj.weight")}
    plain = select_masks(scores, 0.9)
    assert not plain[PARAM][0, 0]
    protected = protect_scores(scores, sw)
    assert scores[PARAM][0, 0] == pytest.approx(1e-6)  # input untouched
    masks = select_masks(protected, 0.9)
    assert masks[PARAM][0, 0]
    status = super_weight_status(sw, masks=masks, weights=model)
    assert status[0]["kept"] and status[0]["rel_drift"] == pytest.approx(
        abs(1e-6 - sw[0]["value"]) / abs(sw[0]["value"]))


def test_track_super_weights_table():
    sw = [dict(param="w", row=0, col=1, value=2.0), dict(param="w", row=1, col=0, value=-1.0)]
    snaps = [
        dict(round=0, masks={"w": torch.ones(2, 2, dtype=torch.bool)},
             weights={"w": torch.tensor([[0.0, 2.0], [-1.0, 0.0]])}),
        dict(round=1, masks={"w": torch.tensor([[True, True], [False, True]])},
             weights={"w": torch.tensor([[0.0, 3.0], [0.0, 0.0]])}),
    ]
    df = track_super_weights(sw, snaps)
    assert list(df["kept"]) == [True, True, True, False]
    assert list(df["rel_drift"]) == pytest.approx([0.0, 0.0, 0.5, 1.0])
    assert list(df["round"]) == [0, 0, 1, 1]


def test_bad_arguments(ids):
    model, _ = load_model("tiny-llama", device="cpu", seed=0)
    with pytest.raises(ValueError, match="threshold"):
        find_super_weights(model, ids, threshold=-1)
    with pytest.raises(ValueError, match="max_iter"):
        find_super_weights(model, ids, max_iter=0)
    with pytest.raises(ValueError, match="tokens"):
        find_super_weights(model, ids[0])
