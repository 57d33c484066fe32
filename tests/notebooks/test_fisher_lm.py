"""Notebook 07 helpers: group tables by hand, K-FAC summaries, natural-gradient check."""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from workbench.core.evaluate import causal_lm_loss
from workbench.core.models import forward_logits
from workbench.curvature.kfac import KFAC, modules_of_type
from workbench.notebooks import fisher_lm as fl


def _groups():
    p = "model.layers.{}.self_attn.{}.weight"
    true = {p.format(0, "q_proj") + "|channel": torch.tensor([1.0, 2.0]),
            p.format(1, "q_proj") + "|channel": torch.tensor([3.0]),
            p.format(1, "o_proj") + "|channel": torch.tensor([4.0, 4.0]),
            p.format(1, "o_proj") + "|input": torch.tensor([9.0]),
            p.format(1, "o_proj") + "|head": torch.tensor([9.0, 9.0]),
            "model.layers.1.self_attn|head": torch.tensor([1.0, 2.0])}
    emp = {k: 2 * v for k, v in true.items()}
    emp["model.layers.1.self_attn|head"] = torch.tensor([3.0, 1.0])
    return true, emp


def test_fisher_by_layer_type_and_head():
    true, emp = _groups()
    df = fl.fisher_by_layer_type(true, emp)
    assert df[["layer", "type"]].values.tolist() == [[0, "q_proj"], [1, "q_proj"],
                                                      [1, "o_proj"]]
    assert df.true.tolist() == [3.0, 3.0, 8.0] and np.allclose(df.ratio, 2.0)
    heads = fl.fisher_by_head(true, emp)  # only the combined attention key
    assert heads.values.tolist() == [[1, 0, 1.0, 3.0], [1, 1, 2.0, 1.0]]
    sec = fl.fisher_lm_section(df, heads)
    assert sec.table.loc["q_proj", "true"] == 6.0 and np.allclose(sec.table.ratio, 2.0)
    assert "trace 2.00" in sec.sentence
    plt.close(sec.figure)


class _FakeKFAC:
    modules = ["model.layers.0.self_attn.o_proj", "model.layers.2.self_attn.o_proj"]

    def eigenvalues(self, n):
        return torch.tensor([1.0, 1.0, 2.0]), torch.tensor([4.0])


def test_kfac_spectra_against_the_entropy_rank():
    df = fl.kfac_spectra(_FakeKFAC())
    assert df.layer.tolist() == [0, 2] and df.type.tolist() == ["o_proj", "o_proj"]
    p = np.array([1.0, 1.0, 2.0]) / 4.0
    assert np.isclose(df.A_erank[0], np.exp(-(p * np.log(p)).sum()))
    assert df.A_max[0] == 2.0 and df.A_trace[0] == 4.0 and df.G_erank[0] == 1.0
    sec = fl.kfac_section(_FakeKFAC(), df)
    assert sec.table.loc["o_proj", "G_max"] == 4.0 and "2 layers" in sec.sentence
    plt.close(sec.figure)


def test_natural_gradient_check_restores_weights_and_steps_follow_the_gradient(tiny_llama):
    model, _ = tiny_llama
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 200, (2, 8), generator=g)
    mods = modules_of_type(model, ["o_proj"])
    kfac = KFAC(model, [tokens], fisher_type="empirical", modules=mods)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    lr = 1e-4
    df = fl.natural_gradient_check(model, [tokens], kfac, lrs=(lr,))
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    # independent reference: the loss and its gradient by autograd
    named = dict(model.named_parameters())
    loss = causal_lm_loss(forward_logits(model, tokens), tokens)
    grads = torch.autograd.grad(loss, [named[f"{m}.weight"] for m in mods])
    gsq = sum(float(t.double().square().sum()) for t in grads)
    assert np.isclose(df.loss_before.iloc[0], float(loss.detach()), rtol=1e-6)
    step = df[df.step == "gradient"].iloc[0]
    assert np.isclose(step.change, -lr * gsq, rtol=0.05)  # first order in lr
    assert -1.0 <= df.cosine.iloc[0] <= 1.0
    sec = fl.natural_gradient_section(df)
    assert sec.table is df and sec.figure is None and f"{step.change:+.4f}" in sec.sentence


def test_capacity_section_sentence():
    cap = pd.DataFrame({"dense": [2.0], "wanda 50%": [3.0]}, index=["fisher_trace"])
    sec = fl.capacity_section(cap, {"normalized": 0.125})
    assert sec.table is cap and "1.50x" in sec.sentence and "12.5%" in sec.sentence
