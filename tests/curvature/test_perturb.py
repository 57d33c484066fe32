"""perturb_groups: exact restore, noise scale, top/bottom vs brute-force sort, risk score."""

from __future__ import annotations

import pytest
import torch

from workbench.curvature import collect_group_fisher
from workbench.curvature.perturb import group_risk, perturb_groups


@pytest.fixture(scope="module")
def setup(tiny_llama):
    model = tiny_llama[0]
    ids = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(0))
    return model, collect_group_fisher(model, [ids])


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _changed_rows(model, before, name):
    diff = dict(model.named_parameters())[name].detach() != before[name]
    return diff


@pytest.mark.parametrize("key", ["channel", "input", "head"])
@pytest.mark.parametrize("rank", ["top", "random", "bottom"])
def test_restore_is_exact(setup, key, rank):
    model, g = setup
    before = _snapshot(model)
    with perturb_groups(model, g, key, 0.3, 2.0, seed=1, rank=rank) as p:
        after = _snapshot(model)
        assert any(not torch.equal(after[n], before[n]) for n in before)
        assert len(p.groups) == round(0.3 * p.n_groups) > 0
    for n, t in model.named_parameters():
        assert torch.equal(t.detach(), before[n]), n  # bit for bit
    p.restore()  # idempotent
    assert all(torch.equal(t.detach(), before[n]) for n, t in model.named_parameters())


def test_top_and_bottom_channels_match_brute_force_sort(setup):
    model, g = setup
    entries = []  # (value, name, row) over every 2-D weight with a channel key
    named = dict(model.named_parameters())
    for k, v in g.items():
        name, _, kind = k.partition("|")
        if kind == "channel" and named[name].ndim == 2:
            entries += [(float(x), name, i) for i, x in enumerate(v.tolist())]
    n = round(0.1 * len(entries))
    for rank, reverse in (("top", True), ("bottom", False)):
        want = sorted(entries, key=lambda e: e[0], reverse=reverse)[:n]
        before = _snapshot(model)
        with perturb_groups(model, g, "channel", 0.1, 1.0, seed=0, rank=rank) as p:
            got = {(nm, i) for nm in before if named[nm].ndim == 2 for i in
                   _changed_rows(model, before, nm).any(1).nonzero().flatten().tolist()}
            assert got == {(nm, i) for _, nm, i in want}
            assert sorted(p.groups.fisher, reverse=reverse) == [e[0] for e in want]
    # random: a seeded subset, different from top, the same for the same seed
    with perturb_groups(model, g, "channel", 0.1, 1.0, seed=3, rank="random") as a:
        ga = list(a.groups.group)
    with perturb_groups(model, g, "channel", 0.1, 1.0, seed=3, rank="random") as b:
        assert list(b.groups.group) == ga
    with perturb_groups(model, g, "channel", 0.1, 1.0, seed=0, rank="top") as t:
        assert set(t.groups.group) != set(ga)


def test_noise_scale_is_eps_times_row_sd(setup):
    model, g = setup
    before = _snapshot(model)
    eps = 3.0
    name = "model.layers.0.mlp.gate_proj.weight"  # rows of 64 weights
    with perturb_groups(model, g, "channel", 1.0, eps, seed=5) as p:
        w = dict(model.named_parameters())[name].detach()
        delta = (w - before[name]).double()
        sd = before[name].double().std(1, unbiased=False)
        z = delta / (eps * sd[:, None])  # should be N(0, 1) draws
        assert abs(float(z.mean())) < 0.05 and abs(float(z.std()) - 1.0) < 0.05
        # per row: the empirical noise sd over 64 draws is within 4 standard errors
        ratio = delta.std(1) / (eps * sd)
        assert float((ratio - 1).abs().max()) < 4 * (1 / (2 * 64) ** 0.5) + 0.05
        rows = p.groups[p.groups.group.str.startswith(name + "|channel:")]
        rows = rows.assign(i=rows.group.str.rsplit(":", n=1).str[1].astype(int)).sort_values("i")
        torch.testing.assert_close(torch.tensor([s[0] for s in rows.sd], dtype=torch.float64),
                                   sd, rtol=1e-6, atol=0)
    with perturb_groups(model, g, "channel", 1.0, 0.0, seed=5):
        assert all(torch.equal(t.detach(), before[n]) for n, t in model.named_parameters())


def test_risk_score_against_direct_computation(setup):
    model, g = setup
    eps = 2.0
    named = {n: t.detach().double() for n, t in model.named_parameters()}
    risk = group_risk(model, g, "channel", eps).set_index("group")
    name = "model.layers.1.self_attn.v_proj.weight"
    for i in (0, 7):
        w = named[name][i]
        direct = 0.5 * eps ** 2 * float(((w - w.mean()) ** 2).mean()) * float(g[f"{name}|channel"][i])
        assert risk.loc[f"{name}|channel:{i}", "risk"] == pytest.approx(direct, rel=1e-9)
    # heads (tiny-llama: 4 query heads, 2 kv heads of 16 dims: GQA, k/v not perturbed)
    hr = group_risk(model, g, "head", eps).set_index("group")
    a = "model.layers.0.self_attn"
    h = 2
    q, o = named[f"{a}.q_proj.weight"][16 * h:16 * (h + 1)], named[f"{a}.o_proj.weight"][:, 16 * h:16 * (h + 1)]
    direct = 0.5 * eps ** 2 * (q.var(unbiased=False) * g[f"{a}.q_proj.weight|head"][h]
                               + o.var(unbiased=False) * g[f"{a}.o_proj.weight|head"][h])
    assert hr.loc[f"{a}|head:{h}", "risk"] == pytest.approx(float(direct), rel=1e-6)
    assert hr.loc[f"{a}|head:{h}", "fisher"] == pytest.approx(float(g[f"{a}|head"][h]))
    # the risk is the expectation of 0.5 delta^T diag(F) delta: Monte Carlo over seeds with
    # the per-weight Fisher of the mean rule (F_ii = F_row / row size), one row
    with perturb_groups(model, g, "channel", 1.0, eps, seed=0) as p:
        assert p.predicted_increase == pytest.approx(float(risk.risk.sum()), rel=1e-9)
    vals = []
    for s in range(200):
        with perturb_groups(model, g, "channel", 1.0, eps, seed=s):
            d = dict(model.named_parameters())[name].detach().double()[0] - named[name][0]
            vals.append(0.5 * float((d ** 2).sum()) * float(g[f"{name}|channel"][0]) / d.numel())
    mc = sum(vals) / len(vals)
    assert mc == pytest.approx(risk.loc[f"{name}|channel:0", "risk"], rel=0.1)


def test_bad_arguments(setup):
    model, g = setup
    with pytest.raises(ValueError, match="key must be one of"):
        perturb_groups(model, g, "row", 0.1, 1.0, seed=0)
    with pytest.raises(ValueError, match="rank must be one of"):
        perturb_groups(model, g, "channel", 0.1, 1.0, seed=0, rank="middle")
    with pytest.raises(ValueError, match=r"concentration must be in \[0.0, 1.0\]"):
        perturb_groups(model, g, "channel", 1.5, 1.0, seed=0)
    with pytest.raises(ValueError, match="eps must be in"):
        perturb_groups(model, g, "channel", 0.1, -1.0, seed=0)
    with pytest.raises(ValueError, match="names no parameter"):
        perturb_groups(model, {"nope.weight|channel": torch.ones(3)}, "channel", 0.1, 1.0,
                       seed=0)
    with pytest.raises(ValueError, match="has 3 values"):
        perturb_groups(model, {"model.layers.0.mlp.up_proj.weight|channel": torch.ones(3)},
                       "channel", 0.1, 1.0, seed=0)
