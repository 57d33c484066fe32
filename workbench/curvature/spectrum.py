"""Spectra of curvature matrices: Hutchinson trace, Lanczos top-k, effective rank,
condition number (capacity and damage measures built on them: :mod:`.capacity`).

All matrix-free estimators take ``matvec``: a function mapping a flat ``[D]`` tensor to
the flat product (e.g. ``lambda v: ggn_vector_product(model, batches, v)``), or a dense
symmetric ``[D, D]`` tensor.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor

MatVec = Callable[[Tensor], Tensor]


def _as_matvec(A) -> tuple[MatVec, int | None, torch.dtype]:
    if isinstance(A, Tensor):
        if A.ndim != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(f"matrix must be square [D, D], got {tuple(A.shape)}")
        return (lambda v: A @ v), A.shape[0], A.dtype
    if callable(A):
        return A, None, torch.float64
    raise ValueError("expected a square tensor or a callable matvec(v) -> tensor")


def hutchinson_trace(A, dim: int | None = None, *, n_samples: int = 100, seed: int = 0,
                     dtype: torch.dtype | None = None) -> float:
    """Hutchinson estimate ``mean_i v_i^T A v_i`` with Rademacher ``v_i`` (unbiased).

    Args:
        A: Dense square tensor or ``matvec`` callable.
        dim: ``D`` (required for a callable).
        n_samples: Number of probe vectors.
        seed: Seed of the probes.
        dtype: Probe dtype (default: the matrix dtype, float64 for callables).
    """
    mv, D, dt = _as_matvec(A)
    D = D or dim
    if not D:
        raise ValueError("dim: required when A is a callable")
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(n_samples):
        v = (torch.randint(0, 2, (D,), generator=g) * 2 - 1).to(dtype or dt)
        total += float(v @ mv(v).to(v.dtype))
    return total / n_samples


def lanczos_topk(A, k: int = 5, dim: int | None = None, *, which: str = "LA",
                 tol: float = 0.0, seed: int = 0, ncv: int | None = None,
                 maxiter: int | None = None) -> np.ndarray:
    """Top-``k`` eigenvalues (descending) of a symmetric matrix by Lanczos.

    Uses ``scipy.sparse.linalg.eigsh`` (implicitly restarted Lanczos, ARPACK) on a
    ``LinearOperator``; ``which="LA"`` = largest algebraic, ``"LM"`` = largest magnitude.
    ``tol`` (relative accuracy, 0 = machine precision), ``ncv`` (Lanczos vectors, ``> k``)
    and ``maxiter`` (restarts) trade accuracy for matrix-vector products.
    """
    from scipy.sparse.linalg import LinearOperator, eigsh

    mv, D, dt = _as_matvec(A)
    D = D or dim
    if not D:
        raise ValueError("dim: required when A is a callable")
    if not 1 <= k < D:
        raise ValueError(f"k must satisfy 1 <= k < D={D}, got {k}")

    def f(x):
        x = np.asarray(x).reshape(-1)
        return mv(torch.as_tensor(x, dtype=dt)).detach().double().cpu().numpy()

    op = LinearOperator((D, D), matvec=f, dtype=np.float64)
    v0 = np.random.default_rng(seed).standard_normal(D)
    if ncv is not None:
        ncv = min(max(int(ncv), k + 1), D)
    vals = eigsh(op, k=k, which=which, tol=tol, v0=v0, ncv=ncv, maxiter=maxiter,
                 return_eigenvectors=False)
    return np.sort(vals)[::-1]


def _eigs(x) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().double().cpu()
        if x.ndim == 2:
            return torch.linalg.eigvalsh((x + x.T) / 2).numpy()
        return x.numpy()
    return np.asarray(x, dtype=np.float64)


def _positive(vals: np.ndarray, rtol: float) -> np.ndarray:
    if vals.size == 0:
        raise ValueError("eigenvalues: empty")
    top = vals.max()
    return vals[vals > rtol * max(top, 0.0)] if top > 0 else vals[:0]


def effective_rank(eigenvalues, *, rtol: float = 1e-10) -> float:
    """Entropy effective rank ``exp(H(p))``, ``p_i = lambda_i / sum_j lambda_j``.

    The Roy & Vetterli (2007) form over the positive eigenvalues (those above ``rtol``
    times the largest). Takes eigenvalues or a symmetric matrix. Between 1 and the rank.
    """
    lam = _positive(_eigs(eigenvalues), rtol)
    if lam.size == 0:
        return 0.0
    p = lam / lam.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def condition_number(eigenvalues, *, damping: float = 0.0, rtol: float = 1e-10) -> float:
    """Condition number ``(lambda_max + damping) / (lambda_min + damping)``.

    With ``damping=0`` only positive eigenvalues (above ``rtol * lambda_max``) count, so
    a singular PSD matrix gives the ratio over its range; with ``damping > 0`` all
    eigenvalues (clipped at 0) count.
    """
    vals = _eigs(eigenvalues)
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    if damping > 0:
        lam = np.clip(vals, 0.0, None)
        return float((lam.max() + damping) / (lam.min() + damping))
    lam = _positive(vals, rtol)
    if lam.size == 0:
        return float("inf")
    return float(lam.max() / lam.min())


def spectrum_summary(matrix_or_eigs, *, rtol: float = 1e-10, damping: float = 0.0) -> dict:
    """Trace, Frobenius norm, largest/smallest eigenvalue, effective rank, condition number
    and numerical rank of a symmetric matrix (or of its eigenvalues)."""
    vals = _eigs(matrix_or_eigs)
    pos = _positive(vals, rtol)
    return {
        "trace": float(vals.sum()),
        "frobenius": float(np.sqrt((vals**2).sum())),
        "lambda_max": float(vals.max()),
        "lambda_min": float(vals.min()),
        "rank": int(pos.size),
        "effective_rank": effective_rank(vals, rtol=rtol),
        "condition_number": condition_number(vals, damping=damping, rtol=rtol),
    }
