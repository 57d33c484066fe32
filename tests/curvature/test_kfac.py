"""K-FAC vs curvlinops 3.0.1 KFACLinearOperator and vs the exact dense GGN blocks."""

from __future__ import annotations

import copy

import pytest
import torch
from curvlinops import KFACLinearOperator
from torch import nn

from workbench.curvature import KFAC, dense_matrix

from . import cases


def rel(a, b):
    return float((a - b).norm() / b.norm())


def curvlinops_kfac(model, loss_fn, batches, fisher_type, **kw):
    model = copy.deepcopy(model)
    params = list(model.parameters())
    D = sum(p.numel() for p in params)
    op = KFACLinearOperator(model, loss_fn, params, batches, fisher_type=fisher_type, **kw)
    return op @ torch.eye(D, dtype=torch.float64)


def mse_data(seed, n, d_in=5, d_out=3):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d_in, generator=g, dtype=torch.float64),
            torch.randn(n, d_out, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("fisher_type", ["type-2", "empirical"])
@pytest.mark.parametrize("sizes", [(7,), (3, 4)])
def test_matches_curvlinops_cross_entropy(reduction, fisher_type, sizes):
    model = cases.mlp(0)
    X, y = cases.classification_data(1, 7)
    batches = cases.split(X, y, sizes)
    loss_fn = nn.CrossEntropyLoss(reduction=reduction)
    ours = KFAC(model, batches, loss_fn=loss_fn, fisher_type=fisher_type).to_dense()
    ref = curvlinops_kfac(model, loss_fn, batches, fisher_type)
    assert rel(ours, ref) < 1e-12


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_matches_curvlinops_mse(reduction):
    model = cases.mlp(2)
    X, Y = mse_data(3, 6)
    batches = [(X[:2], Y[:2]), (X[2:], Y[2:])]
    loss_fn = nn.MSELoss(reduction=reduction)
    ours = KFAC(model, batches, loss_fn=loss_fn, fisher_type="type-2").to_dense()
    assert rel(ours, curvlinops_kfac(model, loss_fn, batches, "type-2")) < 1e-12


def _weight_blocks(M, model):
    """Diagonal blocks of the weights of each Linear layer of a flat [D, D] matrix."""
    out, i = [], 0
    for p in model.parameters():
        n = p.numel()
        if p.ndim == 2:
            out.append(M[i:i + n, i:i + n])
        i += n
    return out


def test_exact_for_single_example_cross_entropy():
    model = cases.mlp(4)
    X, y = cases.classification_data(5, 1)
    K = KFAC(model, [(X, y)]).to_dense()
    G = dense_matrix("ggn", model, [(X, y)])
    for kb, gb in zip(_weight_blocks(K, model), _weight_blocks(G, model)):
        assert rel(kb, gb) < 1e-12
    # bias blocks too (all diagonal blocks of K are exact for N = 1)
    mask = K != 0
    assert rel(K[mask], G[mask]) < 1e-12


def test_exact_for_deep_linear_network_mse():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 3), nn.Linear(3, 2)).double()
    X, Y = mse_data(1, 9, d_in=4, d_out=2)
    batches = [(X[:4], Y[:4]), (X[4:], Y[4:])]
    K = KFAC(model, batches, loss_fn=nn.MSELoss()).to_dense()
    G = dense_matrix("ggn", model, batches, loss_fn=nn.MSELoss())
    for kb, gb in zip(_weight_blocks(K, model), _weight_blocks(G, model)):
        assert rel(kb, gb) < 1e-12
    # ... but not for a nonlinear network with several examples
    nonlin = cases.mlp(0, d_in=4, d_out=2)
    K2 = KFAC(nonlin, batches, loss_fn=nn.MSELoss()).to_dense()
    G2 = dense_matrix("ggn", nonlin, batches, loss_fn=nn.MSELoss())
    assert rel(_weight_blocks(K2, nonlin)[0], _weight_blocks(G2, nonlin)[0]) > 1e-3


def test_mc_kfac_converges_to_type2():
    model = cases.mlp(1)
    X, y = cases.classification_data(2, 6)
    exact = KFAC(model, [(X, y)]).to_dense()
    mc = KFAC(model, [(X, y)], fisher_type="mc", n_samples=2000, seed=0).to_dense()
    assert rel(mc, exact) < 0.1


def test_matvec_inverse_and_natural_gradient():
    model = cases.mlp(3)
    X, y = cases.classification_data(4, 8)
    k = KFAC(model, [(X, y)])
    K = k.to_dense()
    D = K.shape[0]
    v = torch.randn(D, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert rel(k.matvec(v), K @ v) < 1e-12
    lam = 1e-2
    x = k.inverse_matvec(v, damping=lam)
    ref = torch.linalg.solve(K + lam * torch.eye(D, dtype=torch.float64), v)
    assert rel(x, ref) < 1e-9
    names = [n for n, _ in model.named_parameters()]
    vd = dict(zip(names, torch.split(v, [p.numel() for p in model.parameters()])))
    vd = {n: t.reshape(p.shape) for (n, t), p in zip(vd.items(), model.parameters())}
    nat = k.natural_gradient(vd, damping=lam)
    assert set(nat) == set(names)
    assert rel(torch.cat([nat[n].reshape(-1) for n in names]), ref) < 1e-9


def test_bad_inputs():
    model = cases.mlp(0)
    X, y = cases.classification_data(0, 3)
    with pytest.raises(ValueError, match="fisher_type"):
        KFAC(model, [(X, y)], fisher_type="exact")
    with pytest.raises(ValueError, match="loss_fn"):
        KFAC(model, [(X, y)], loss_fn=nn.L1Loss())
    with pytest.raises(ValueError, match="empty"):
        KFAC(model, [])
    with pytest.raises(ValueError, match="modules"):
        KFAC(model, [(X, y)], modules=["nope"])
    k = KFAC(model, [(X, y)])
    with pytest.raises(ValueError, match="damping"):
        k.inverse_matvec(torch.zeros(k.to_dense().shape[0], dtype=torch.float64), damping=0)
    with pytest.raises(ValueError, match="v: expected"):
        k.matvec(torch.zeros(3, dtype=torch.float64))
