"""The one Optimal Brain Surgeon engine of the layer-wise methods (SparseGPT's blocked loop).

For one linear layer with weight ``W [out, in]`` and ``H = X^T X`` of its calibration
inputs (``[in, in]``, any positive scale: dampening is relative) the layer-wise objective
is ``||W X^T - W' X^T||^2``. Frantar & Alistarh 2023 ("SparseGPT: Massive Language Models
Can Be Accurately Pruned in One-Shot", ICML; Algorithm 1; authors' code
github.com/IST-DASLab/sparsegpt, ``sparsegpt.py`` ``SparseGPT.fasterprune``) solve it
with one factorisation and a blocked column sweep:

1. :func:`inverse_hessian_factor`: ``H += damp * mean(diag(H)) * I`` (inputs that are
   always zero, ``H_jj = 0``, first get ``H_jj = 1``; their weights never affect the
   output and are zeroed), then ``U = chol(H^-1)`` upper triangular. Row ``j`` of ``U``
   divided by ``U_jj`` is row ``j`` of ``(H_F)^-1`` with ``F = {j, ..., in-1}`` the
   columns not yet processed, and ``U_jj^2 = [(H_F)^-1]_jj``, so one factor serves every
   OBS step.
2. :func:`obs_sweep`: walk the columns in blocks of ``block_size`` (lazy batch updates).
   The prune-mask of the next columns is asked of a ``choose`` function, from the
   *current* (already updated) weights and ``d = diag(U)`` of those columns: once at the
   start of every block, or every ``group`` columns (N:M). Then, column by column, a
   pruned weight's error ``err = (w_j - 0) / U_jj`` is spread over the block's remaining
   columns (``W[:, j:] -= err U[j, j:]``, the OBS update restricted to ``F``), and after
   the block all later columns get ``W[:, end:] -= Err U[block, end:]`` at once.

The callers differ only in ``choose``: SparseGPT chooses by the OBS saliency
``w^2 / U_jj^2`` (:mod:`workbench.pruning.sparsegpt`), the fixed-mask corrections (Wanda +
OBS, PRAC; :mod:`workbench.pruning.correction`) return slices of a mask given in advance,
as ``fasterprune`` does with its ``mask`` argument.
"""

from __future__ import annotations

from typing import Callable

import torch

#: ``choose(w, d, start) -> prune`` with ``w [out, width]`` the current weights of columns
#: ``start .. start + width - 1``, ``d [width]`` their ``U_jj``; returns a bool
#: ``[out, width]`` mask, ``True`` = prune.
Chooser = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def inverse_hessian_factor(hessian: torch.Tensor, damp: float = 0.01, *,
                           dtype: torch.dtype = torch.float32,
                           caller: str = "OBS") -> tuple[torch.Tensor, torch.Tensor]:
    """Dampened ``H``'s inverse as its upper Cholesky factor ``U`` (``H^-1 = U^T U``).

    Args:
        hessian: ``[in, in]`` ``X^T X`` (any positive scale).
        damp: Fraction of ``mean(diag(H))`` added to the diagonal (SparseGPT's
            ``percdamp``), after dead inputs got a unit diagonal.
        dtype: Computation dtype (``float32`` or ``float64``).
        caller: Named in the error message (``"SparseGPT"``, ``"OBS correction"``).

    Returns:
        ``(U, dead)``: ``U [in, in]`` upper triangular, ``dead [in]`` bool (inputs with
        ``H_jj = 0``, given a unit diagonal).

    Raises:
        ValueError: The dampened ``H`` has non-finite entries or is not positive definite
            (the message names ``damp`` and says what to change).
    """
    H = hessian.detach().to(dtype).clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    H.diagonal().add_(damp * torch.mean(torch.diag(H)))
    try:
        if not torch.isfinite(H).all():
            raise torch.linalg.LinAlgError("non-finite entries")
        Hinv = torch.cholesky_inverse(torch.linalg.cholesky(H))
        return torch.linalg.cholesky(Hinv, upper=True), dead
    except torch.linalg.LinAlgError as err:
        raise ValueError(
            f"{caller}: the dampened Hessian X^T X + damp * mean(diag) * I ([{H.shape[0]}, "
            f"{H.shape[0]}], damp={damp}) is not positive definite ({err}). Hint: damp must "
            "be a finite number > 0 (SparseGPT's percdamp, default 0.01); raise it (e.g. 0.1) "
            "or give more calibration tokens (rows of X) than inputs, and check the "
            "calibration activations for inf/NaN") from None


@torch.no_grad()
def obs_sweep(weight: torch.Tensor, factor: torch.Tensor, choose: Chooser, *,
              block_size: int = 128, group: int | None = None) -> torch.Tensor:
    """Prune ``weight`` in place with the blocked OBS sweep; the mask comes from ``choose``.

    Args:
        weight: ``[out, in]`` float, updated in place (the caller zeroes dead inputs).
        factor: ``U [in, in]``, :func:`inverse_hessian_factor`'s upper factor, same dtype
            and device as ``weight``.
        choose: See :data:`Chooser`; called at the start of every block with the whole
            block (``group=None``) or at every ``group``-th column of a block with the
            next ``group`` columns.
        block_size: Columns per lazy-update block (``>= 1``; a multiple of ``group``).
        group: Columns per mask choice inside a block (``M`` of N:M), or ``None``.

    Returns:
        The prune-mask ``[out, in]`` (``True`` = pruned); ``weight`` holds the updated
        weights, exactly zero where pruned.
    """
    W, U = weight, factor
    cols = W.shape[1]
    pruned = torch.zeros_like(W, dtype=torch.bool)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2].clone()
        U1 = U[i1:i2, i1:i2]
        d = torch.diag(U1)
        Err1 = torch.zeros_like(W1)
        P1 = torch.zeros_like(W1, dtype=torch.bool)
        width = group or (i2 - i1)
        for i in range(i2 - i1):
            if i % width == 0:
                P1[:, i:i + width] = choose(W1[:, i:i + width], d[i:i + width], i1 + i)
            w = W1[:, i]
            err = torch.where(P1[:, i], w, torch.zeros_like(w)) / d[i]
            W1[:, i:] -= err.unsqueeze(1) * U1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W1[P1] = 0.0
        W[:, i1:i2] = W1
        pruned[:, i1:i2] = P1
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    return pruned
