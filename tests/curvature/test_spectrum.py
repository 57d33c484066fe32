"""Spectra and capacity metrics vs dense eigendecompositions (numpy / torch.linalg)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.curvature import (
    condition_number,
    dense_matrix,
    effective_rank,
    ggn_vector_product,
    hutchinson_trace,
    lanczos_topk,
    spectrum_summary,
)

from . import cases


@pytest.fixture(scope="module")
def ggn_problem():
    model = cases.mlp(0, d_in=6, hidden=6, d_out=4)
    X, y = cases.classification_data(1, 12, shape=(6,), classes=4)
    batches = [(X[:5], y[:5]), (X[5:], y[5:])]
    return model, batches, dense_matrix("ggn", model, batches)


def test_hutchinson_trace_matrix_free(ggn_problem):
    model, batches, G = ggn_problem
    D = G.shape[0]
    est = hutchinson_trace(lambda v: ggn_vector_product(model, batches, v), dim=D,
                           n_samples=300, seed=0)
    exact = float(G.trace())
    assert est == pytest.approx(exact, rel=0.15)
    # unbiased: the mean over seeds is closer than the typical single estimate
    one = [hutchinson_trace(G, n_samples=1, seed=s) for s in range(200)]
    assert np.mean(one) == pytest.approx(exact, rel=0.15)
    assert np.std(one) > 0


def test_lanczos_topk_matches_eigvalsh(ggn_problem):
    model, batches, G = ggn_problem
    ref = torch.linalg.eigvalsh(G).flip(0)[:4].numpy()
    got = lanczos_topk(lambda v: ggn_vector_product(model, batches, v), k=4, dim=G.shape[0])
    np.testing.assert_allclose(got, ref, rtol=1e-8)
    np.testing.assert_allclose(lanczos_topk(G, k=4), ref, rtol=1e-8)


def test_effective_rank_condition_number_summary():
    lam = np.array([4.0, 4.0, 0.0, 0.0])
    assert effective_rank(lam) == pytest.approx(2.0)  # exp(entropy) of (1/2, 1/2)
    assert effective_rank(np.ones(7)) == pytest.approx(7.0)
    p = np.array([3.0, 1.0]) / 4
    assert effective_rank(np.array([3.0, 1.0])) == pytest.approx(np.exp(-(p * np.log(p)).sum()))
    assert condition_number(np.array([10.0, 2.0, 0.0])) == pytest.approx(5.0)  # range only
    assert condition_number(np.array([10.0, 2.0, 0.0]), damping=1.0) == pytest.approx(11.0)
    A = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)  # eigenvalues 1, 3
    s = spectrum_summary(A)
    assert s["trace"] == pytest.approx(4.0) and s["frobenius"] == pytest.approx(np.sqrt(10))
    assert s["lambda_max"] == pytest.approx(3.0) and s["condition_number"] == pytest.approx(3.0)
    assert s["rank"] == 2
    with pytest.raises(ValueError, match="damping"):
        condition_number(lam, damping=-1.0)


def test_bad_inputs():
    with pytest.raises(ValueError, match="square"):
        hutchinson_trace(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="dim"):
        hutchinson_trace(lambda v: v)
    with pytest.raises(ValueError, match="k must"):
        lanczos_topk(torch.eye(3, dtype=torch.float64), k=3)
