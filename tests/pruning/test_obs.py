"""The one OBS engine: with a fixed mask it equals a dense one-column-at-a-time OBS
reference, and SparseGPT's and the fixed-mask correction's results come from it."""

import pytest
import torch

from workbench.pruning.correction import obs_correct
from workbench.pruning.obs import inverse_hessian_factor, obs_sweep
from workbench.pruning.sparsegpt import sparsegpt_layer


def _problem(out=5, d_in=20, tokens=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(tokens, d_in, generator=g, dtype=torch.float64) @ torch.randn(
        d_in, d_in, generator=g, dtype=torch.float64)
    return torch.randn(out, d_in, generator=g, dtype=torch.float64), X.t() @ X


def _dense_fixed_mask_obs(W, H, prune, damp=0.01):
    """Column j at a time with a plain dense inverse of H restricted to F = {j, ...}."""
    W, H = W.clone(), H.clone()
    H += damp * H.diagonal().mean() * torch.eye(H.shape[0], dtype=H.dtype)
    for j in range(W.shape[1]):
        Finv = torch.linalg.inv(H[j:, j:])
        err = torch.where(prune[:, j], W[:, j], torch.zeros_like(W[:, j])) / Finv[0, 0]
        W[:, j:] -= err.unsqueeze(1) * Finv[0].unsqueeze(0)
        W[:, j] = torch.where(prune[:, j], torch.zeros_like(W[:, j]), W[:, j])
    return W


@pytest.mark.parametrize("block", [1, 6, 20, 64])
def test_fixed_mask_sweep_equals_dense_reference(block):
    W, H = _problem()
    prune = torch.rand(W.shape, generator=torch.Generator().manual_seed(1)) < 0.5
    U, dead = inverse_hessian_factor(H, 0.01, dtype=torch.float64)
    assert not dead.any()
    got = W.clone()
    calls = []

    def choose(w, d, start):
        calls.append((start, w.shape[1]))
        torch.testing.assert_close(d, torch.diag(U)[start:start + w.shape[1]])
        return prune[:, start:start + w.shape[1]]

    assert torch.equal(obs_sweep(got, U, choose, block_size=block), prune)
    assert calls == [(s, min(block, 20 - s)) for s in range(0, 20, block)]
    torch.testing.assert_close(got, _dense_fixed_mask_obs(W, H, prune), rtol=1e-9, atol=1e-9)
    assert (got[prune] == 0).all()


def test_group_choice_every_m_columns_and_the_callers_share_the_engine():
    W, H = _problem(seed=2)
    U, _ = inverse_hessian_factor(H, 0.01, dtype=torch.float64)
    starts = []
    obs_sweep(W.clone(), U, lambda w, d, s: starts.append(s) or torch.zeros_like(w, dtype=bool),
              block_size=8, group=4)
    assert starts == [0, 4, 8, 12, 16]
    # SparseGPT's mask, given to the fixed-mask correction, reproduces SparseGPT's weights
    new, keep = sparsegpt_layer(W.float(), H.float(), 0.5, block_size=8)
    torch.testing.assert_close(obs_correct(W.float(), keep, H.float(), block_size=8), new,
                               rtol=0, atol=0)


def test_not_positive_definite_names_the_method_and_damp():
    W, _ = _problem()
    H = -torch.eye(W.shape[1], dtype=torch.float64)
    with pytest.raises(ValueError, match="OBS correction: .*damp=0.0.*positive definite"):
        obs_correct(W, torch.ones_like(W, dtype=torch.bool), H, damp=0.0)
