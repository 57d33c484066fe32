"""Notebook 08 helpers: correlations by hand, probe cadence, percolation on tiny-llama."""

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from workbench.core.evaluate import causal_lm_loss
from workbench.core.models import forward_logits
from workbench.curvature.groups import collect_group_fisher
from workbench.notebooks import fisher_uses as fu


def _ranks(v):
    r = np.empty(len(v))
    r[np.argsort(v)] = np.arange(len(v))
    return r


def test_forgetting_correlation_by_hand():
    t = pd.DataFrame(dict(damage=[1.0, 2.0, 4.0, 3.0], increase=[0.5, 0.4, 2.0, 1.0]))
    c = fu.forgetting_correlation(t)
    x, y = t.damage.to_numpy(), t.increase.to_numpy()
    assert c["n"] == 4 and np.isclose(c["pearson_r"], np.corrcoef(x, y)[0, 1])
    assert np.isclose(c["spearman_rho"], np.corrcoef(_ranks(x), _ranks(y))[0, 1])
    assert np.isclose(c["predicted_over_measured"], np.median(0.5 * x / y))
    few = fu.forgetting_correlation(t.iloc[:2])
    assert math.isnan(few["pearson_r"]) and few["n"] == 2
    assert fu.correlation_text(few).startswith("no correlation: n = 2 points")
    sec = fu.forgetting_section(t.assign(run="r"), c, "title")
    assert sec.table["run"].tolist() == ["r"] * 4 and f"{c['pearson_r']:.2f}" in sec.sentence
    plt.close(sec.figure)


class _Acc:
    def __init__(self):
        self.calls = []

    def update(self, model, batches, **kw):
        self.calls.append((batches[0].clone(), kw))


def test_fisher_probe_cadence_and_cycling():
    tokens = torch.arange(3).reshape(3, 1)
    acc = _Acc()
    probe = fu.FisherProbe(acc, None, tokens, every=2, batch=2, task="A", last_step=4)
    for step in range(5):
        probe(step)
    assert probe.steps == [1, 3, 4]  # every 2nd step (2nd, 4th) and the last one
    assert [c[0].ravel().tolist() for c in acc.calls] == [[0, 1], [2, 0], [1, 2]]
    assert acc.calls[0][1]["task"] == "A" and acc.calls[0][1]["chunk_size"] == 2
    with pytest.raises(ValueError, match="every must be >= 1"):
        fu.FisherProbe(acc, None, tokens, every=0)


def test_mean_loss_percolation_damage_and_restore(tiny_llama):
    model, _ = tiny_llama
    tokens = torch.randint(0, 200, (2, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = float(causal_lm_loss(forward_logits(model, tokens), tokens))
    assert np.isclose(fu.mean_loss(model, tokens), ref, rtol=1e-5)
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    groups = collect_group_fisher(model, [tokens], seed=0)
    perc = fu.percolation_table(model, groups, tokens, concentrations=(0.1, 0.5),
                                seeds=(0, 1), eps=1.0)
    assert len(perc) == 1 + 3 * 2 * 2 and perc.iloc[0]["rank"] == "none"
    assert np.isclose(perc.iloc[0].loss, ref, rtol=1e-5)
    assert np.allclose(perc.increase, perc.loss - perc.iloc[0].loss)
    assert all(torch.equal(saved[n], p) for n, p in model.named_parameters())  # restored
    sec = fu.percolation_section(perc, "t")
    top = perc[(perc["rank"] == "top") & (perc.concentration == 0.5)].ppl.mean()
    assert np.isclose(sec.table.loc[0.5, ("ppl", "top")], top)
    assert f"{top:.1f} (top)" in sec.sentence and "C = 50.0%" in sec.sentence
    plt.close(sec.figure)
    # damage probe: sum F (theta - theta_A)^2 after a known move, loss increase measured
    name = "model.layers.0.self_attn.o_proj.weight"
    fisher = {name: torch.full_like(saved[name], 2.0)}
    probe = fu.DamageProbe(model, fisher, {name: saved[name]}, tokens, ref, every=1,
                           label="run")
    named = dict(model.named_parameters())
    with torch.no_grad():
        named[name].add_(0.01)
    probe(0)
    row = probe.rows[0]
    assert np.isclose(row["damage"], 2.0 * 0.01 ** 2 * saved[name].numel(), rtol=1e-4)
    assert np.isclose(row["increase"], fu.mean_loss(model, tokens) - ref)
    fu.restore_parameters(model, saved)
    assert all(torch.equal(saved[n], p) for n, p in model.named_parameters())
    with pytest.raises(ValueError, match="not in the model"):
        fu.restore_parameters(model, {"nope": torch.zeros(1)})
