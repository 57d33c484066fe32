"""Tests for workbench.lottery.imp: IMP with rewinding, controls, resume, summary."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from workbench.lottery.imp import IMPConfig, reinit_weights, robustness_summary, run_imp
from workbench.pruning.masks import prunable_parameters
from workbench.core.models import load_model

FAST = dict(steps_per_round=1, lr=1e-3, eval_batch_size=4, progress=False)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def data():
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (16, 16), generator=gen), torch.randint(0, 256, (2, 16),
                                                                         generator=gen)


def tiny():
    return load_model("tiny-llama", device="cpu", seed=0)[0]


def imp(data, **kw):
    train, val = data
    progress = kw.pop("progress", False)
    config_kw = {k: v for k, v in {**FAST, **kw}.items() if k != "progress"}
    extra = {k: config_kw.pop(k) for k in list(config_kw)
             if k in ("super_weights", "output_dir", "on_round_end", "on_rewind", "labels",
                      "model")}
    model = extra.pop("model", None) or tiny()
    return model, run_imp(model, train, val, IMPConfig(**config_kw), progress=progress, **extra)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_constant_rounds_density_exact(data, scope):
    p, rounds = 0.2, 3
    model, res = imp(data, prune_pct=p, n_rounds=rounds, scope=scope)
    numels = {n: w.numel() for n, w in prunable_parameters(model).items()}
    total = sum(numels.values())
    for L in range(1, rounds + 1):
        target = 1 - (1 - p) ** L
        row = res.records.query("round == @L").iloc[0]
        if scope == "global":
            assert row["n_kept"] == total - round(total * target)
        else:
            per = res.layer_sparsity.query("round == @L").set_index("param")["sparsity"]
            for n, k in numels.items():
                assert round((1 - per[n]) * k) == k - round(k * target)
        assert abs(row["n_kept"] - total * (1 - p) ** L) <= (1 if scope == "global" else
                                                             len(numels))
    # the final model has exactly the masked entries at zero
    for n, w in prunable_parameters(model).items():
        assert (w.detach()[~res.masks[n]] == 0).all()


def test_masks_are_nested_and_jaccard(data):
    seen = []
    _, res = imp(data, n_rounds=3, on_rewind=lambda r, m, masks: seen.append(
        {n: k.clone() for n, k in masks.items()}))
    for a, b in zip(seen, seen[1:]):
        for n in a:
            assert not (b[n] & ~a[n]).any()  # nothing pruned comes back
    # Jaccard of kept sets of nested masks = |kept_now| / |kept_before|
    kept = res.records["n_kept"].tolist()
    jac = res.records["mask_jaccard_prev"].tolist()
    assert math.isnan(jac[0])
    for r in range(1, 4):
        assert jac[r] == pytest.approx(kept[r] / kept[r - 1])


def test_gradual_targets_hit(data):
    targets = [0.05, 0.10, 0.15, 0.20]
    model, res = imp(data, schedule="gradual", targets=targets, n_rounds=3)
    total = sum(w.numel() for w in prunable_parameters(model).values())
    assert res.records["round"].tolist() == [0, 1, 2, 3, 4]
    assert res.records["target_sparsity"].tolist()[1:] == targets
    for t, kept in zip(targets, res.records["n_kept"].tolist()[1:]):
        assert kept == total - round(total * t)


def test_other_score_kind_and_string_targets(data):
    model, res = imp(data, score_kind="wanda", schedule="gradual", targets="0.1, 0.3",
                     scope="layer")
    per = res.layer_sparsity.query("round == 2")["sparsity"]
    assert per.tolist() == pytest.approx([0.3] * len(per), abs=1e-3)
    for n, w in prunable_parameters(model).items():
        assert (w.detach()[~res.masks[n]] == 0).all()


def test_oneshot_prunes_once_then_keeps_training(data):
    _, res = imp(data, schedule="oneshot", prune_pct=0.3, n_rounds=3)
    rec = res.records
    assert rec["rewound"].tolist() == [False, True, False, False]
    assert rec["n_kept"].nunique() == 2
    assert rec["mask_jaccard_prev"].tolist()[2:] == [1.0, 1.0]
    assert rec["sparsity"].iloc[1] == pytest.approx(0.3, abs=1e-4)


def test_controls(data):
    _, pos = imp(data, control="positive", n_rounds=2)
    assert pos.records["sparsity"].tolist() == [0.0, 0.0, 0.0]
    _, neg = imp(data, control="negative", n_rounds=2, prune_pct=0.1)
    assert neg.records["density"].tolist()[1:] == pytest.approx([0.5, 0.25], abs=1e-4)


def test_rewind_to_pretrained_restores_kept_entries(data):
    model = tiny()
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}
    checked = []

    def check(rnd, m, masks):
        for k, v in m.state_dict().items():
            ref = theta0[k] * masks[k] if k in masks else theta0[k]
            assert torch.equal(v, ref), k
        checked.append(rnd)

    imp(data, model=model, n_rounds=2, steps_per_round=2, on_rewind=check)
    assert checked == [1, 2]


def test_rewind_to_step_k(data):
    from workbench.lottery.train import train_masked

    ref_model = tiny()
    train_masked(ref_model, data[0], steps=2, lr=1e-3, seed=0, progress=False)
    ref = {k: v.clone() for k, v in ref_model.state_dict().items()}
    got = []

    def check(rnd, m, masks):
        for k, v in m.state_dict().items():
            expect = ref[k] * masks[k] if k in masks else ref[k]
            assert torch.equal(v, expect), k
        got.append(rnd)

    imp(data, rewind_step=2, steps_per_round=3, n_rounds=1, on_rewind=check)
    assert got == [1]


@pytest.mark.parametrize("kind", ["xavier", "kaiming"])
def test_reinit_variance_and_rewind(data, kind):
    ref = {"w": torch.empty(384, 768)}
    w = reinit_weights(ref, ["w"], kind, seed=0)["w"]
    fan_out, fan_in = w.shape
    var = 2 / (fan_in + fan_out) if kind == "xavier" else 2 / fan_in
    assert w.mean().abs() < 0.01 * math.sqrt(var) * 10
    # sample variance of 295k normals: relative sd ~ sqrt(2/n) = 0.26%
    assert w.var().item() == pytest.approx(var, rel=0.02)
    model = tiny()
    names = list(prunable_parameters(model))
    fresh = reinit_weights(model.state_dict(), names, kind, seed=0)
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}

    def check(rnd, m, masks):
        for k, v in m.state_dict().items():
            expect = fresh[k] * masks[k] if k in masks else theta0[k]
            assert torch.equal(v, expect), k

    imp(data, model=model, rewind_to="reinit", reinit_scheme=kind, n_rounds=1,
        on_rewind=check)


def test_same_seed_identical_masks_and_losses(data):
    _, a = imp(data, n_rounds=2, steps_per_round=2)
    _, b = imp(data, n_rounds=2, steps_per_round=2)
    _, c = imp(data, n_rounds=2, steps_per_round=2, seed=1)
    pd.testing.assert_frame_equal(a.records, b.records)
    pd.testing.assert_frame_equal(a.losses, b.losses)
    for n in a.masks:
        assert torch.equal(a.masks[n], b.masks[n])
    assert a.losses["loss"].tolist() != c.losses["loss"].tolist()


class Killed(Exception):
    pass


def test_resume_after_kill_gives_same_records(data, tmp_path):
    _, full = imp(data, n_rounds=3, steps_per_round=2, output_dir=tmp_path / "full")

    def kill_after_round_1(record):
        if record["round"] == 1:
            raise Killed

    with pytest.raises(Killed):
        imp(data, n_rounds=3, steps_per_round=2, output_dir=tmp_path / "run",
            on_round_end=kill_after_round_1)
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["round_001.json", "round_001.safetensors"]  # round 0's was superseded
    _, resumed = imp(data, n_rounds=3, steps_per_round=2, output_dir=tmp_path / "run")
    assert resumed.resumed_from == 1
    pd.testing.assert_frame_equal(full.records, resumed.records)
    pd.testing.assert_frame_equal(full.losses, resumed.losses)
    pd.testing.assert_frame_equal(full.layer_sparsity, resumed.layer_sparsity)
    for n in full.masks:
        assert torch.equal(full.masks[n], resumed.masks[n])
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [
        "complete.json"]
    # a finished run is not redone; a different config in the same folder is refused
    _, again = imp(data, n_rounds=3, steps_per_round=2, output_dir=tmp_path / "run")
    assert again.resumed_from == 3
    pd.testing.assert_frame_equal(full.records, again.records)
    with pytest.raises(ValueError, match="different configuration"):
        imp(data, n_rounds=2, steps_per_round=2, output_dir=tmp_path / "run")


def test_super_weight_protection_through_imp(data):
    param = "model.layers.0.mlp.down_proj.weight"
    model = tiny()
    with torch.no_grad():
        model.get_parameter(param)[3, 4] = 1e-7  # the smallest weight: pruned first
    sw = [dict(param=param, row=3, col=4, value=1e-7)]
    _, plain = imp(data, model=model, n_rounds=2, prune_pct=0.5, super_weights=sw)
    assert plain.records["sw_kept"].tolist() == [1, 0, 0]
    assert plain.records["sw_survival"].tolist() == [1.0, 0.0, 0.0]
    model = tiny()
    with torch.no_grad():
        model.get_parameter(param)[3, 4] = 1e-7
    _, prot = imp(data, model=model, n_rounds=2, prune_pct=0.5, super_weights=sw,
                  protect_sw=True)
    assert prot.records["sw_kept"].tolist() == [1, 1, 1]
    assert bool(prot.masks[param][3, 4])
    assert prot.records["n_kept"].tolist() == plain.records["n_kept"].tolist()


def test_robustness_summary_definitions():
    records = [dict(round=0, sparsity=0.0, val_ppl=10.0), dict(round=1, sparsity=0.2, val_ppl=10.2),
               dict(round=2, sparsity=0.36, val_ppl=12.0), dict(round=3, sparsity=0.5, val_ppl=30.0)]
    s = robustness_summary(records, max_quality_loss=0.05)
    assert [c["retained"] for c in s["curve"]] == pytest.approx([1, 10 / 10.2, 10 / 12, 1 / 3])
    assert s["optimal_sparsity"] == 0.2
    assert s["winning_ticket_score"] == pytest.approx(1 / 3)
    assert not s["is_winning_ticket"]
    # retained crosses 0.5 between 0.36 (0.8333) and 0.5 (0.3333): linear interpolation
    assert s["critical_sparsity"] == pytest.approx(0.36 + (0.8333333 - 0.5) / 0.5 * 0.14)
    better = robustness_summary(records[:2] + [dict(round=2, sparsity=0.4, val_ppl=9.0)])
    assert better["winning_ticket_score"] > 1 and better["critical_sparsity"] is None


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(init="orthogonal"), "init"),
        (dict(schedule="cubic"), "schedule"),
        (dict(scope="row"), "scope"),
        (dict(control="maybe"), "control"),
        (dict(prune_pct=0.0), "prune_pct"),
        (dict(prune_pct=1.0), "prune_pct"),
        (dict(schedule="gradual", targets=[0.1, 0.1, 0.2]), "increasing"),
        (dict(schedule="gradual", targets=None), "targets"),
        (dict(schedule="gradual", targets=[0.1, 1.2]), "targets"),
        (dict(rewind_step=10, steps_per_round=4), "rewind_step"),
        (dict(rewind_to="reinit", rewind_step=1), "rewind_step"),
        (dict(n_rounds=0), "n_rounds"),
        (dict(lr_schedule="step"), "lr_schedule"),
        (dict(score_kind="random"), "score_kind"),
    ],
)
def test_bad_config_raises(kwargs, word):
    with pytest.raises(ValueError, match=word):
        IMPConfig(**kwargs)


def test_unknown_override_is_refused(data):
    with pytest.raises(TypeError, match=r"run_imp\(\) got unknown keyword.*stepz"):
        run_imp(tiny(), *data, IMPConfig(), stepz=3)
