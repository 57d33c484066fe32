"""θ0 semantics, the reinit control, which weights are ranked, and emergent super weights
(issue: the super-weight x lottery-ticket grid answers its questions)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workbench.core.models import load_model
from workbench.lottery.imp import IMPConfig, run_imp
from workbench.lottery.init import INIT_SEED_OFFSET, init_model
from workbench.lottery.rounds import ranked_parameters
from workbench.pruning.masks import prunable_parameters

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = dict(steps_per_round=1, lr=1e-3, eval_batch_size=4, sw_threshold=50.0)


@pytest.fixture
def data():
    gen = torch.Generator().manual_seed(0)
    return (torch.randint(0, 256, (16, 16), generator=gen),
            torch.randint(0, 256, (2, 16), generator=gen))


def tiny(name="tiny-llama"):
    return load_model(name, device="cpu", seed=0)[0]


def run(model, data, hooks=None, super_weights=(), **kw):
    return run_imp(model, *data, IMPConfig(**{**FAST, **kw}), progress=False,
                   super_weights=super_weights, **(hooks or {}))


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("init", ["pretrained", "xavier", "kaiming", "normal"])
def test_theta0_is_the_start_and_the_rewind_target(data, init):
    model = tiny()
    loaded = snapshot(model)
    starts, rewound = {}, {}
    hooks = dict(on_round_start=lambda r, m, masks: starts.setdefault(r, snapshot(m)),
                 on_rewind=lambda r, m, masks: rewound.setdefault(
                     r, (snapshot(m), {n: k.clone() for n, k in masks.items()})))
    run(model, data, hooks, init=init, n_rounds=2, steps_per_round=2)
    theta0 = starts[0]
    if init == "pretrained":
        for k in loaded:
            assert torch.equal(theta0[k], loaded[k]), k
    else:
        assert all(not torch.equal(theta0[k], loaded[k]) for k, v in loaded.items()
                   if v.dim() >= 2)
    assert sorted(rewound) == [1, 2]
    for rnd, (state, masks) in rewound.items():
        assert any((~m).any() for m in masks.values())
        for k, v in state.items():  # exactly θ0, pruned entries zero
            expect = theta0[k] * masks[k] if k in masks else theta0[k]
            assert torch.equal(v, expect), (rnd, k)


@pytest.mark.parametrize("scheme", ["xavier", "kaiming", "normal"])
def test_random_theta0_follows_the_per_tensor_rule(scheme):
    model = init_model(tiny(), scheme, seed=3)
    # independent reference: torch.nn.init's own fan computation, same generator stream
    gen = torch.Generator().manual_seed(3 + INIT_SEED_OFFSET)
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            ref = torch.empty(p.shape)
            if scheme == "xavier":
                nn.init.xavier_normal_(ref, generator=gen)
            elif scheme == "kaiming":
                nn.init.kaiming_normal_(ref, mode="fan_in", nonlinearity="relu", generator=gen)
            else:
                nn.init.normal_(ref, std=0.02, generator=gen)
            torch.testing.assert_close(p.detach(), ref, rtol=1e-6, atol=0), name
        else:
            assert torch.equal(p.detach(), torch.ones_like(p)), name  # RMSNorm scales
    assert "model.embed_tokens.weight" in dict(model.named_parameters())
    again = init_model(tiny(), scheme, seed=3)
    other = init_model(tiny(), scheme, seed=4)
    w = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(again.get_parameter(w), model.get_parameter(w))
    assert not torch.equal(other.get_parameter(w), model.get_parameter(w))


def test_random_theta0_gpt2_biases_zero_and_tied_head_drawn_once():
    model = init_model(tiny("tiny-gpt2"), "xavier", seed=0)
    params = dict(model.named_parameters())
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied
    assert all(torch.equal(p, torch.zeros_like(p)) for n, p in params.items()
               if n.endswith("bias"))
    w = model.transformer.wte.weight
    assert w.std().item() == pytest.approx((2 / sum(w.shape)) ** 0.5, rel=0.05)
    # Conv1D stores [in, out]: kaiming's fan_in is its first dimension
    c_fc = dict(init_model(tiny("tiny-gpt2"), "kaiming", seed=0).named_parameters())[
        "transformer.h.0.mlp.c_fc.weight"]
    assert c_fc.std().item() == pytest.approx((2 / c_fc.shape[0]) ** 0.5, rel=0.05)


def test_reinit_control_differs_from_the_xavier_arm_in_round_0(data):
    starts = {}
    hook = lambda key: dict(on_round_start=lambda r, m, masks: starts.setdefault(  # noqa: E731
        (key, r), snapshot(m)))
    model = tiny()
    loaded = snapshot(model)
    control = run(model, data, hook("reinit"), init="pretrained", rewind_to="reinit",
                  reinit_scheme="xavier", n_rounds=1)
    arm = run(tiny(), data, hook("xavier"), init="xavier", n_rounds=1)
    for k in loaded:  # the control trains the pre-trained weights in round 0
        assert torch.equal(starts[("reinit", 0)][k], loaded[k])
    w = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(starts[("xavier", 0)][w], loaded[w])
    r0c, r0x = control.records.iloc[0], arm.records.iloc[0]
    assert r0c["val_ppl"] != r0x["val_ppl"] and r0c["train_loss"] != r0x["train_loss"]
    # in round 1 the control's ranked weights are a fresh draw, the rest θ0
    emb = "model.embed_tokens.weight"
    assert torch.equal(starts[("reinit", 1)][emb], loaded[emb])
    assert not torch.equal(starts[("reinit", 1)][w], loaded[w] * control.masks[w])


def test_ranking_all_matrices_vs_block_linears(data):
    # steps_per_round=0: the round-1 masks rank θ0 itself, so a brute-force reference
    # (global kthvalue over |w| of every matrix) is exact
    p = 0.3
    model = tiny()
    theta0 = snapshot(model)
    every = run(model, data, rank="all_matrices", prune_pct=p, n_rounds=1, steps_per_round=0)
    block = run(tiny(), data, prune_pct=p, n_rounds=1, steps_per_round=0)
    names_all = list(ranked_parameters(tiny(), "all_matrices"))
    assert set(block.masks) == set(prunable_parameters(tiny()))
    assert set(every.masks) == set(names_all) > set(block.masks)
    assert "model.embed_tokens.weight" in every.masks and "lm_head.weight" in every.masks
    mags = torch.cat([theta0[n].abs().flatten() for n in names_all])
    k = round(p * mags.numel())
    thr = torch.kthvalue(mags, k).values
    for n in names_all:
        assert torch.equal(every.masks[n].cpu(), theta0[n].abs() > thr), n
    differ = sum(int((every.masks[n] != block.masks[n]).sum()) for n in block.masks)
    assert differ > 0
    assert every.records["n_prunable"].iloc[0] == mags.numel()
    with pytest.raises(ValueError, match="all_matrices.*magnitude"):
        run(tiny(), data, rank="all_matrices", score_kind="wanda", n_rounds=1)


ROW, COL = 5, 17
PARAM = "model.layers.0.mlp.down_proj.weight"


def planted():
    """tiny-llama whose layer-0 MLP channel COL carries a massive activation that
    down_proj[ROW, COL] writes into residual channel ROW (a planted super weight)."""
    model = tiny()
    mlp = model.model.layers[0].mlp
    direction = torch.randn(mlp.up_proj.weight.shape[1],
                            generator=torch.Generator().manual_seed(0)) * 5
    with torch.no_grad():
        mlp.gate_proj.weight[COL] = direction
        mlp.up_proj.weight[COL] = direction
        mlp.down_proj.weight[ROW, COL] = 1.0
    return model


def test_emergent_super_weight_detection_finds_a_planted_spike(data):
    pretrained_sw = [dict(param=PARAM, row=ROW, col=COL, value=1.0)]
    res = run(planted(), data, super_weights=pretrained_sw, n_rounds=2, prune_pct=0.5,
              lr=1e-6)
    em = res.emergent
    assert set(em["round"]) == {0, 1, 2}
    for rnd in (0, 1, 2):
        rows = em[em["round"] == rnd]
        assert list(zip(rows["param"], rows["row"], rows["col"])) == [(PARAM, ROW, COL)]
        assert rows["pretrained"].tolist() == [True]
        assert rows["output_activation"].iloc[0] >= 50
    rec = res.records
    assert rec["esw_total"].tolist() == [1, 1, 1]
    assert rec["esw_pretrained"].tolist() == [1, 1, 1]
    kept = bool(res.masks[PARAM][ROW, COL])
    assert rec["esw_survival"].iloc[2] == float(kept)
    # from a random θ0 the planted spike is gone: nothing emerges, nothing coincides
    fresh = run(planted(), data, super_weights=pretrained_sw, init="normal", n_rounds=1)
    assert fresh.records["esw_total"].tolist() == [0, 0]
    assert fresh.records["esw_survival"].isna().all()
