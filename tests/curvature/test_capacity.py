"""Fisher-weighted damage, PAC-Bayes KL, sharpness, capacity summary vs dense references."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from workbench.curvature import (
    KFAC,
    capacity_summary,
    dense_matrix,
    fisher_damage,
    fisher_weighted_damage,
    pac_bayes,
    sharpness,
)

from . import cases


def test_fisher_weighted_damage_against_quadratic_forms():
    g = torch.Generator().manual_seed(0)
    Fa = {"a": torch.rand(3, 2, generator=g), "b": torch.rand(4, generator=g)}
    Fb = {k: torch.rand(v.shape, generator=g) for k, v in Fa.items()}
    ta = {k: torch.randn(v.shape, generator=g) for k, v in Fa.items()}
    tb = {k: torch.randn(v.shape, generator=g) for k, v in Fa.items()}

    def flat(d):
        return torch.cat([d[k].reshape(-1) for k in Fa]).double()

    d, a = flat(tb) - flat(ta), flat(ta)
    ref = float(d @ torch.diag(flat(Fa)) @ d)
    out = fisher_weighted_damage(Fa, ta, tb)
    assert out["damage"] == pytest.approx(ref, rel=1e-6)
    assert out["normalized"] == pytest.approx(ref / float(a @ torch.diag(flat(Fa)) @ a),
                                              rel=1e-6)
    Fs = torch.diag((flat(Fa) + flat(Fb)) / 2)
    sym = fisher_weighted_damage(Fa, ta, tb, fisher_b=Fb, symmetric=True)
    assert sym["damage"] == pytest.approx(float(d @ Fs @ d), rel=1e-6)
    assert sym["normalized"] == pytest.approx(float(d @ Fs @ d) / float(a @ Fs @ a), rel=1e-6)
    # pruning: theta_b in {0, theta_a} -> normalized = pruned share of the Fisher norm
    mask = {k: torch.rand(v.shape, generator=g) > 0.5 for k, v in ta.items()}
    pruned = {k: ta[k] * mask[k] for k in ta}
    p = fisher_weighted_damage(Fa, ta, pruned)
    assert 0.0 < p["normalized"] < 1.0
    assert fisher_weighted_damage(Fa, ta, ta)["damage"] == 0.0
    with pytest.raises(ValueError, match="missing"):
        fisher_weighted_damage(Fa, {"a": ta["a"]}, tb)
    with pytest.raises(ValueError, match="shapes"):
        fisher_weighted_damage(Fa, {**ta, "b": torch.zeros(5)}, tb)
    with pytest.raises(ValueError, match="fisher_b: needed"):
        fisher_weighted_damage(Fa, ta, tb, symmetric=True)


def _dense_kl(F, theta, n, delta):
    D = F.shape[0]
    eye = torch.eye(D, dtype=torch.float64)
    q = MultivariateNormal(theta, covariance_matrix=torch.linalg.inv(n * F + delta * eye))
    p = MultivariateNormal(torch.zeros(D, dtype=torch.float64), covariance_matrix=eye / delta)
    return float(kl_divergence(q, p))


def test_pac_bayes_kl_matches_dense_gaussians():
    model = cases.mlp(1)
    X, y = cases.classification_data(2, 10)
    k = KFAC(model, [(X, y)])
    named = dict(model.named_parameters())
    theta = {n: named[n].detach() for n in k.param_names}
    flat = torch.cat([theta[n].reshape(-1) for n in k.param_names])
    n, delta = 50, 0.7
    out = pac_bayes(k, theta, n=n, prior_precision=delta)
    assert out["kl"] == pytest.approx(_dense_kl(k.to_dense(), flat, n, delta), rel=1e-8)
    import math
    assert out["complexity"] == pytest.approx(
        math.sqrt((out["kl"] + math.log(2 * math.sqrt(n) / 0.05)) / (2 * n)))
    g = torch.Generator().manual_seed(0)
    diag = {nm: torch.rand(t.shape, generator=g, dtype=torch.float64) for nm, t in theta.items()}
    dflat = torch.cat([diag[nm].reshape(-1) for nm in k.param_names])
    assert pac_bayes(diag, theta, n=n, prior_precision=delta)["kl"] == pytest.approx(
        _dense_kl(torch.diag(dflat), flat, n, delta), rel=1e-8)
    with pytest.raises(ValueError, match="prior_precision"):
        pac_bayes(diag, theta, n=n, prior_precision=0.0)


@pytest.mark.parametrize("matrix", ["ggn", "hessian"])
def test_sharpness_matches_dense_spectrum(matrix):
    model = cases.mlp(0, d_in=6, hidden=6, d_out=4)
    X, y = cases.classification_data(3, 20, shape=(6,), classes=4)
    batches = [(X[:10], y[:10]), (X[10:], y[10:])]
    M = dense_matrix(matrix, model, batches)
    ev = torch.linalg.eigvalsh((M + M.T) / 2)
    s = sharpness(model, batches, matrix=matrix, trace=float(M.trace()), tol=1e-10, ncv=20)
    assert s["lambda_max"] == pytest.approx(float(ev.max()), rel=1e-8)
    assert s["normalized"] == pytest.approx(float(ev.max() / M.trace()), rel=1e-8)
    h = sharpness(model, batches, matrix=matrix, hutchinson_samples=200, tol=1e-10, ncv=20)
    assert h["trace"] == pytest.approx(float(M.trace()), rel=0.25)


def test_capacity_summary_and_damage_on_tiny_llama(tiny_llama):
    model = tiny_llama[0]
    tokens = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(0))
    df = capacity_summary(model, tokens, lanczos_tol=1e-2)
    assert list(df.index) == ["tokens", "fisher_trace", "fisher_effective_rank", "lambda_max",
                              "sharpness_normalized", "pac_bayes_kl", "pac_bayes_complexity"]
    v = df.value
    assert v.tokens == 14 and v.fisher_trace > 0 and v.lambda_max > 0
    assert 0 < v.sharpness_normalized <= 1.0 + 1e-6
    assert v.pac_bayes_complexity > 0
    pruned = copy.deepcopy(model)
    w = pruned.model.layers[0].mlp.up_proj.weight
    with torch.no_grad():
        w[w.abs() < w.abs().median()] = 0.0
    dmg = fisher_damage(model, pruned, tokens, chunk_size=2)
    sym = fisher_damage(model, pruned, tokens, symmetric=True, chunk_size=2)
    assert 0 < dmg["normalized"] < 1 and sym["damage"] > 0
    assert fisher_damage(model, model, tokens, chunk_size=2)["damage"] == 0.0
    with pytest.raises(TypeError, match=r"'method' is now 'backend'"):  # renamed option
        fisher_damage(model, pruned, tokens, method="loop")
