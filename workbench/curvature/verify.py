"""Verification of the curvature identities on small models, as tidy pandas tables.

:func:`verify_fisher_ggn` builds the dense GGN, true Fisher (exact over labels),
empirical Fisher and Hessian of a small model in float64 and float32 and reports, one
row per check, the measured value, the tolerance and whether it passed.
:func:`mc_fisher_convergence` measures the Monte Carlo Fisher error against the number
of sampled labels ``S`` (expected slope -1/2 in log-log), and
:func:`hvp_variance_reduction` the error of Hessian-vector products averaged over ``k``
random batches against the full-data product (expected to fall like ``1/sqrt(k)``).
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from workbench.curvature import _problem as P
from workbench.curvature.products import curvature_matmat, dense_matrix, dense_matrix_jacobian

#: default tolerances of the relative error true Fisher vs GGN, per dtype
TOLERANCES = {torch.float64: 1e-10, torch.float32: 1e-4}


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _cast_batch(batch: Any, dtype: torch.dtype) -> Any:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        x, y = batch
        x = x.to(dtype) if x.is_floating_point() else x
        y = y.to(dtype) if y.is_floating_point() else y
        return (x, y)
    return batch


def _cast(model: nn.Module, batches: list, dtype: torch.dtype):
    return copy.deepcopy(model).to(dtype), [_cast_batch(b, dtype) for b in batches]


def subspace_alignment(A: Tensor, B: Tensor, k: int) -> float:
    """Mean squared cosine of the principal angles between the top-``k`` eigenvector
    subspaces of symmetric ``A`` and ``B`` (1 = same subspace, ~k/D = random)."""
    ua = torch.linalg.eigh((A + A.T) / 2)[1][:, -k:]
    ub = torch.linalg.eigh((B + B.T) / 2)[1][:, -k:]
    s = torch.linalg.svdvals(ua.T @ ub)
    return float((s**2).mean())


def verify_fisher_ggn(
    model: nn.Module,
    batches: Any,
    *,
    loss_fn: nn.Module | None = None,
    params: Any = None,
    dtypes: Sequence[torch.dtype] = (torch.float64, torch.float32),
    top_k: int = 5,
    psd_rtol: float | None = None,
    hessian: bool = True,
) -> pd.DataFrame:
    """Dense checks of true Fisher = GGN, empirical vs true Fisher, PSD-ness, precision.

    Args:
        model: A small model (dense matrices are ``D x D``).
        batches: ``(x, y)`` batches (or LM token blocks).
        loss_fn: ``nn.CrossEntropyLoss`` (default), ``nn.NLLLoss`` or ``nn.MSELoss``.
        params: Parameters to include (default all trainable).
        dtypes: Precisions to check; the float32-vs-float64 row needs both.
        top_k: Size of the eigen-subspaces compared between empirical and true Fisher.
        psd_rtol: Smallest eigenvalue must be >= ``-psd_rtol * lambda_max``; default
            ``eps`` of the dtype times ``D``.
        hessian: Also build the dense Hessian (from HVPs; the slowest part).

    Returns:
        DataFrame with columns ``check, dtype, value, tolerance, passed, note``. Rows:
        ``fisher_vs_ggn_rel_error`` (``||F - G||_F / ||G||_F``), ``ef_vs_fisher_rel_fro``,
        ``ef_over_fisher_trace_ratio``, ``ef_fisher_topk_alignment``, ``ef_rank`` (must be
        ``<= N``), ``ggn_min_eig_rel``, ``true_fisher_min_eig_rel``, ``empirical_fisher_min_eig_rel``
        (smallest / largest eigenvalue), ``hessian_min_eig_rel`` (may be negative: no
        tolerance), ``ggn_fp32_vs_fp64_rel_error``.
    """
    loss_fn = nn.CrossEntropyLoss() if loss_fn is None else loss_fn
    lkind = P.loss_kind_of(loss_fn)
    batches = P.as_batch_list(batches)
    n_terms = sum(P.count_terms(b, lkind, loss_fn) for b in batches)
    rows: list[dict] = []
    ggns: dict[torch.dtype, Tensor] = {}

    def add(check, dtype, value, tol=None, passed=None, note=""):
        rows.append(dict(check=check, dtype=str(dtype).replace("torch.", ""), value=value,
                         tolerance=tol, passed=passed, note=note))

    for dtype in dtypes:
        m, bs = _cast(model, batches, dtype)
        names = P.resolve_params(model, params)[0]
        sel = names
        G = dense_matrix_jacobian("ggn", m, bs, loss_fn=loss_fn, params=sel)
        F = dense_matrix_jacobian("true_fisher", m, bs, loss_fn=loss_fn, params=sel)
        EF = dense_matrix_jacobian("empirical_fisher", m, bs, loss_fn=loss_fn, params=sel)
        H = dense_matrix("hessian", m, bs, loss_fn=loss_fn, params=sel) if hessian else None
        ggns[dtype] = G
        D = G.shape[0]
        tol = TOLERANCES.get(dtype, 1e-3)
        err = _rel(F, G)
        add("fisher_vs_ggn_rel_error", dtype, err, tol, err <= tol, "||F - G||_F / ||G||_F")
        add("ef_vs_fisher_rel_fro", dtype, _rel(EF, F), note="||EF - F||_F / ||F||_F")
        add("ef_over_fisher_trace_ratio", dtype, float(EF.trace() / F.trace()))
        k = min(top_k, D - 1)
        add("ef_fisher_topk_alignment", dtype, subspace_alignment(EF, F, k),
            note=f"mean cos^2 of principal angles, top-{k} eigenvectors")
        eps = torch.finfo(dtype).eps
        rank_tol = eps * D
        ef_eigs = torch.linalg.eigvalsh((EF + EF.T) / 2)
        rank = int((ef_eigs > rank_tol * ef_eigs.max()).sum())
        add("ef_rank", dtype, rank, n_terms, rank <= n_terms, f"N = {n_terms} terms, D = {D}")
        ptol = psd_rtol if psd_rtol is not None else eps * D
        for name, M in (("ggn", G), ("true_fisher", F), ("empirical_fisher", EF)):
            ev = torch.linalg.eigvalsh((M + M.T) / 2)
            v = float(ev.min() / ev.max().clamp_min(1e-300))
            add(f"{name}_min_eig_rel", dtype, v, -ptol, v >= -ptol, "lambda_min / lambda_max")
        if H is not None:
            ev = torch.linalg.eigvalsh((H + H.T) / 2)
            add("hessian_min_eig_rel", dtype, float(ev.min() / ev.abs().max()),
                note="Hessian need not be PSD")
    if torch.float32 in ggns and torch.float64 in ggns:
        e = _rel(ggns[torch.float32].double(), ggns[torch.float64])
        add("ggn_fp32_vs_fp64_rel_error", "float32", e, 1e-4, e <= 1e-4)
    return pd.DataFrame(rows)


def mc_fisher_convergence(
    model: nn.Module,
    batches: Any,
    *,
    loss_fn: nn.Module | None = None,
    params: Any = None,
    n_samples_grid: Sequence[int] = (1, 2, 4, 8, 16, 32, 64),
    seeds: Sequence[int] = (0, 1, 2),
) -> pd.DataFrame:
    """Relative Frobenius error of the dense Monte Carlo Fisher vs the exact one.

    Returns:
        DataFrame ``n_samples, seed, rel_error``; fit the slope with
        :func:`convergence_slope` (expected about -0.5).
    """
    F = dense_matrix_jacobian("true_fisher", model, batches, loss_fn=loss_fn, params=params)
    rows = []
    for S in n_samples_grid:
        for seed in seeds:
            Fs = dense_matrix_jacobian("true_fisher", model, batches, loss_fn=loss_fn, params=params,
                              n_samples=int(S), seed=int(seed))
            rows.append(dict(n_samples=int(S), seed=int(seed), rel_error=_rel(Fs, F)))
    return pd.DataFrame(rows)


def convergence_slope(df: pd.DataFrame, x: str = "n_samples", y: str = "rel_error") -> float:
    """Least-squares slope of ``log(mean y)`` against ``log x``."""
    g = df.groupby(x)[y].mean()
    return float(np.polyfit(np.log(g.index.to_numpy(float)), np.log(g.to_numpy()), 1)[0])


def hvp_variance_reduction(
    model: nn.Module,
    batches: Any,
    *,
    loss_fn: nn.Module | None = None,
    params: Any = None,
    ks: Sequence[int] | None = None,
    n_repeats: int = 8,
    seed: int = 0,
) -> pd.DataFrame:
    """Error of the Hessian-vector product averaged over ``k`` random batches.

    For a fixed random unit vector ``v`` and each ``k``, ``n_repeats`` random subsets of
    ``k`` batches give ``Hv`` on that subset (mean over its examples); the error is the
    relative distance to ``Hv`` on all batches.

    Returns:
        DataFrame ``k, repeat, rel_error``.
    """
    batches = P.as_batch_list(batches)
    B = len(batches)
    ks = list(ks) if ks is not None else [k for k in (1, 2, 4, 8, 16, 32) if k < B]
    if not ks or max(ks) > B:
        raise ValueError(f"ks: need 1 <= k <= number of batches ({B}), got {ks}")
    D = sum(p.numel() for p in P.resolve_params(model, params)[1])
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(D, generator=g, dtype=torch.float64)
    v = v / v.norm()
    full = curvature_matmat("hessian", model, batches, v, loss_fn=loss_fn, params=params)
    rows = []
    for k in ks:
        for r in range(n_repeats):
            idx = rng.choice(B, size=k, replace=False)
            sub = curvature_matmat("hessian", model, [batches[i] for i in idx], v,
                                   loss_fn=loss_fn, params=params)
            rows.append(dict(k=int(k), repeat=r, rel_error=_rel(sub, full)))
    return pd.DataFrame(rows)
