"""K-FAC OBS saliency (pruning kind/method ``obs_kfac``) vs a brute-force definition."""

from __future__ import annotations

import copy

import pytest
import torch
from curvlinops import KFACLinearOperator
from torch import nn

import workbench as wb

from . import cases


class _Shifted(nn.Module):
    """curvlinops view of a token model: ids [b, T] -> logits [b, V, T - 1]."""

    def __init__(self, model):
        super().__init__()
        self.m = model

    def forward(self, ids):
        return self.m(ids)[:, :-1].transpose(1, 2)


@pytest.mark.parametrize("fisher_type", ["empirical", "true"])
def test_obs_kfac_equals_dense_obs_saliency(fisher_type):
    model = cases.transformer(3)  # token ids [b, T] -> logits [b, T, 7]
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 7, (6, 5), generator=g)
    damping = 0.1
    opts = dict(fisher_type=fisher_type, damping=damping)
    if fisher_type == "true":
        opts["n_samples"] = None  # exact expectation (curvlinops' type-2)
    scores = wb.importance(model, "obs_kfac", tokens=tokens, include=["qkv.weight"],
                           batch_size=4, **opts)
    # brute force: dense K-FAC block of qkv (curvlinops), damped, inverted
    ref = copy.deepcopy(model)
    w = ref.qkv.weight
    op = KFACLinearOperator(_Shifted(ref), nn.CrossEntropyLoss(), [w],
                            [(b, b[:, 1:]) for b in tokens.split(4)],
                            fisher_type={"true": "type-2", "empirical": "empirical"}[fisher_type],
                            kfac_approx="expand", check_deterministic=False)
    D = w.numel()
    M = op @ torch.eye(D, dtype=torch.float64)
    lam = damping * float(M.trace()) / D
    inv = torch.linalg.inv(M + lam * torch.eye(D, dtype=torch.float64))
    brute = (0.5 * w.detach().reshape(-1) ** 2 / inv.diagonal()).reshape(w.shape)
    assert set(scores) == {"qkv.weight"}
    assert torch.allclose(scores["qkv.weight"].double(), brute, rtol=1e-5)


def test_prune_by_obs_kfac(tiny_llama):
    model = copy.deepcopy(tiny_llama[0])
    tokens = torch.randint(0, 256, (4, 12), generator=torch.Generator().manual_seed(1))
    masks = wb.prune(model, "obs_kfac", 0.5, calibration_tokens=tokens,
                     include=["model.layers.0.mlp.*"]).masks
    assert set(masks) == {f"model.layers.0.mlp.{p}_proj.weight" for p in ("gate", "up", "down")}
    for name, m in masks.items():
        assert abs(float(m.float().mean()) - 0.5) < 0.01
    mag = wb.importance(tiny_llama[0], "magnitude", include=["model.layers.0.mlp.*"])
    kept_mag = {n: s >= s.flatten().kthvalue(s.numel() // 2).values for n, s in mag.items()}
    assert any((kept_mag[n] != masks[n]).any() for n in masks)  # curvature changes the mask
    with pytest.raises(ValueError, match="damping"):
        wb.importance(tiny_llama[0], "obs_kfac", tokens=tokens, damping=0.0)
