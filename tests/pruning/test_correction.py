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


def test_mean_sum_and_james_stein_against_direct_computation():
    """InputStats.mean_sum over all tokens (not only the stored rows) and the James-Stein
    mean, both against a direct computation on the concatenated inputs."""
    from torch import nn

    from workbench.pruning.calibration import input_statistics
    from workbench.pruning.correction import james_stein_mean

    g = torch.Generator().manual_seed(7)
    lin = nn.Linear(10, 3)
    xs = [torch.randn(4, 5, 10, generator=g) * 0.5 + torch.linspace(-1, 1, 10)
          for _ in range(3)]
    with input_statistics({"l": lin}, max_samples=6) as stats:
        for x in xs:
            lin(x)
    st = stats["l"]
    X = torch.cat([x.reshape(-1, 10) for x in xs]).double()  # all 60 tokens
    assert st.count == 60 and st.n_stored == 6
    torch.testing.assert_close(st.mean_sum.double(), X.sum(0), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(st.mean().double(), X.mean(0), rtol=1e-6, atol=1e-6)
    # direct James-Stein (Efron-Morris, positive part), sampling variance of the means
    xbar = X.mean(0)
    mu = xbar.mean()
    S = ((xbar - mu) ** 2).sum()
    sigma2 = (X.var(0, unbiased=False)).mean() / 60
    c = float(((10 - 3) * sigma2 / S).clamp(0, 1))
    want = mu + (1 - c) * (xbar - mu)
    assert 0 < c < 1  # a real shrinkage in this problem
    torch.testing.assert_close(st.js_mean().double(), want, rtol=1e-5, atol=1e-6)
    # PRAC's reference heuristic: sigma^2 = (mean |xbar - mu|)^2, p - 2
    c2 = float(((10 - 2) * (xbar - mu).abs().mean() ** 2 / S).clamp(0, 1))
    torch.testing.assert_close(james_stein_mean(xbar.float(), "prac", offset=2).double(),
                               mu + (1 - c2) * (xbar - mu), rtol=1e-5, atol=1e-6)
    # a huge variance shrinks everything to the grand mean; zero variance changes nothing
    torch.testing.assert_close(james_stein_mean(xbar.float(), 1e9).double(),
                               mu.expand(10), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(james_stein_mean(xbar.float(), 0.0), xbar.float())
    with pytest.raises(ValueError, match="variance must be one of"):
        james_stein_mean(xbar.float(), "mle")
    with pytest.raises(ValueError, match="needs count"):
        james_stein_mean(xbar.float())
