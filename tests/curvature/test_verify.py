"""verify_fisher_ggn tables, Monte Carlo convergence and HVP averaging."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from workbench.curvature import (
    convergence_slope,
    dense_matrix,
    hvp_variance_reduction,
    mc_fisher_convergence,
    subspace_alignment,
    verify_fisher_ggn,
)

from . import cases


def _row(df, check, dtype="float64"):
    r = df[(df.check == check) & (df.dtype == dtype)]
    assert len(r) == 1, (check, dtype)
    return r.iloc[0]


@pytest.mark.parametrize("idx", [0, 3, 5], ids=["mlp", "cnn-split", "transformer-split"])
def test_table_on_three_architectures(idx):
    name, model, batches = cases.problems()[idx]
    df = verify_fisher_ggn(model, batches, hessian=(idx == 0))
    assert set(df.columns) == {"check", "dtype", "value", "tolerance", "passed", "note"}
    # true Fisher = GGN: ~1e-16 in float64, ~1e-7 in float32 (stated tolerances 1e-10, 1e-4)
    assert _row(df, "fisher_vs_ggn_rel_error").value < 1e-12
    assert _row(df, "fisher_vs_ggn_rel_error", "float32").value < 1e-5
    assert _row(df, "ggn_fp32_vs_fp64_rel_error", "float32").value < 1e-5
    checks = df[df.passed.notna()]
    assert checks.passed.all(), checks[~checks.passed.astype(bool)]
    # the empirical Fisher is a different matrix
    assert _row(df, "ef_vs_fisher_rel_fro").value > 0.05
    # rank of the EF is at most the number of terms; PSD matrices
    n_terms = sum(int(b[1].numel()) for b in batches)
    assert _row(df, "ef_rank").value <= n_terms
    for m in ("ggn", "true_fisher", "empirical_fisher"):
        assert _row(df, f"{m}_min_eig_rel").value > -1e-12


def test_ef_rank_bound_is_tight_and_independent():
    model = cases.mlp(0, d_in=5, hidden=4, d_out=3)  # D = 39
    X, y = cases.classification_data(1, 4)
    EF = dense_matrix("empirical_fisher", model, [(X, y)])
    ev = torch.linalg.eigvalsh(EF)
    assert int((ev > 1e-12 * ev.max()).sum()) == 4  # rank = N < D
    df = verify_fisher_ggn(model, [(X, y)], dtypes=(torch.float64,), hessian=False)
    assert _row(df, "ef_rank").value == 4


def test_log_softmax_into_nll_breaks_the_identity():
    base = cases.mlp(0)
    logmodel = nn.Sequential(*copy.deepcopy(base), nn.LogSoftmax(-1))
    X, y = cases.classification_data(2, 8)
    df = verify_fisher_ggn(logmodel, [(X, y)], loss_fn=nn.NLLLoss(),
                           dtypes=(torch.float64,), hessian=False)
    row = _row(df, "fisher_vs_ggn_rel_error")
    assert row.value == float("inf") or row.value > 1e10  # GGN = 0, Fisher is not
    assert not row.passed


def test_mc_convergence_slope_is_minus_one_half():
    model = cases.mlp(3)
    X, y = cases.classification_data(4, 6)
    df = mc_fisher_convergence(model, [(X, y)], n_samples_grid=(1, 4, 16, 64, 256),
                               seeds=range(6))
    slope = convergence_slope(df)
    assert -0.65 < slope < -0.35, slope
    means = df.groupby("n_samples").rel_error.mean()
    assert means.iloc[-1] < means.iloc[0] / 8


def test_hvp_averaging_reduces_error():
    model = cases.mlp(5)
    X, y = cases.classification_data(6, 32)
    batches = [(X[i:i + 2], y[i:i + 2]) for i in range(0, 32, 2)]  # 16 batches
    df = hvp_variance_reduction(model, batches, ks=(1, 4, 16), n_repeats=4)
    m = df.groupby("k").rel_error.mean()
    assert m[16] < 1e-12  # all batches = full data
    assert m[4] < m[1]
    with pytest.raises(ValueError, match="ks"):
        hvp_variance_reduction(model, batches, ks=(17,))


def test_hvp_averaging_error_falls_as_one_over_sqrt_k():
    """The mean of k of B batch HVPs drawn without replacement has
    E||Hv_k - Hv||^2 = tr(Cov) / k * (B - k) / (B - 1) (finite-population correction), so
    the RMS error, divided by sqrt((B - k) / (B - 1)), has log-log slope -1/2 in k."""
    import numpy as np

    model = cases.mlp(5)
    X, y = cases.classification_data(6, 128)
    B = 64
    batches = [(X[i:i + 2], y[i:i + 2]) for i in range(0, 128, 2)]
    ks = (1, 2, 4, 8, 16)
    df = hvp_variance_reduction(model, batches, ks=ks, n_repeats=24, seed=0)
    rms = df.groupby("k").rel_error.apply(lambda e: float(np.sqrt((e ** 2).mean())))
    k = np.array(rms.index, dtype=float)
    corrected = rms.to_numpy() / np.sqrt((B - k) / (B - 1))
    slope = np.polyfit(np.log(k), np.log(corrected), 1)[0]
    assert -0.62 < slope < -0.38, slope
    # and the constant: sqrt(k) * corrected error is flat (within sampling noise)
    flat = corrected * np.sqrt(k)
    assert flat.max() / flat.min() < 1.5, flat


def test_subspace_alignment_extremes():
    A = torch.diag(torch.tensor([5.0, 4.0, 1.0, 0.5], dtype=torch.float64))
    P = torch.eye(4, dtype=torch.float64)[[2, 3, 0, 1]]
    assert subspace_alignment(A, A, 2) == pytest.approx(1.0)
    assert subspace_alignment(A, P @ A @ P.T, 2) == pytest.approx(0.0, abs=1e-12)


def test_bad_inputs():
    model = cases.mlp(0)
    X, y = cases.classification_data(0, 4)
    with pytest.raises(ValueError, match="loss_fn"):
        verify_fisher_ggn(model, [(X, y)], loss_fn=nn.SmoothL1Loss())
    with pytest.raises(ValueError, match="empty"):
        verify_fisher_ggn(model, [])
