"""SparseGPT-style correction: lower reconstruction error; PRAC with all samples = full H."""

import pytest
import torch

from workbench.pruning.correction import obs_correct, prac_correct, reconstruction_error
from workbench.pruning.masks import select_masks


def _problem(seed=0, out=12, d=48, n=400):
    g = torch.Generator().manual_seed(seed)
    # correlated features: low-rank signal plus noise, as in LLM activations
    X = torch.randn(n, d // 3, generator=g) @ torch.randn(d // 3, d, generator=g)
    X += 0.3 * torch.randn(n, d, generator=g)
    X[:, 3] *= 20  # an outlier feature, as in LLM activations
    W = torch.randn(out, d, generator=g)
    norms = X.norm(dim=0)
    keep = select_masks({"w": W.abs() * norms}, 0.5, scope="row")["w"]
    return W, X, keep


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_correction_lowers_reconstruction_error(seed):
    W, X, keep = _problem(seed)
    plain = W * keep
    fixed = obs_correct(W, keep, X.t() @ X, damp=0.01, block_size=16)
    assert (fixed[~keep] == 0).all() and not torch.equal(fixed[keep], W[keep])
    e_plain, e_fixed = reconstruction_error(W, plain, X), reconstruction_error(W, fixed, X)
    assert e_fixed < 0.85 * e_plain


def test_block_size_does_not_change_the_result():
    W, X, keep = _problem(3)
    H = X.t() @ X
    a = obs_correct(W, keep, H, block_size=1)
    b = obs_correct(W, keep, H, block_size=7)
    c = obs_correct(W, keep, H, block_size=128)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-5)


def test_single_pruned_column_matches_least_squares():
    """Pruning only the first column: OBS = exact least-squares refit of the rest."""
    W, X, _ = _problem(4, out=3, d=10, n=300)
    keep = torch.ones_like(W, dtype=torch.bool)
    keep[:, 0] = False
    got = obs_correct(W, keep, X.t() @ X, damp=0.0)
    Xd = X.double()
    sol = torch.linalg.lstsq(Xd[:, 1:], Xd @ W.double().t()).solution.t()
    torch.testing.assert_close(got[:, 1:].double(), sol, rtol=1e-3, atol=1e-4)


def test_prac_with_all_samples_matches_full_hessian_and_keep_all_is_identity():
    W, X, keep = _problem(5)
    full = obs_correct(W, keep, X.t() @ X)
    prac = prac_correct(W, keep, X)
    torch.testing.assert_close(full, prac, rtol=1e-4, atol=1e-5)
    few = prac_correct(W, keep, X[:64])
    assert reconstruction_error(W, few, X) < reconstruction_error(W, W * keep, X)
    ident = obs_correct(W, torch.ones_like(keep), X.t() @ X)
    torch.testing.assert_close(ident, W)


def test_dead_inputs_and_errors():
    W, X, keep = _problem(6)
    X[:, 5] = 0
    out = obs_correct(W, keep, X.t() @ X)
    assert torch.isfinite(out).all() and (out[:, 5] == 0).all()
    with pytest.raises(ValueError, match="same shape"):
        obs_correct(W, keep[:, :5], X.t() @ X)
    with pytest.raises(ValueError, match="damp"):
        obs_correct(W, keep, X.t() @ X, damp=-1)
