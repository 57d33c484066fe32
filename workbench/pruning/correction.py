"""SparseGPT-style correction: update the kept weights so the layer output changes least.

Given a weight ``W [out, in]``, a fixed keep-mask and ``H = X^T X`` of the layer inputs
(``[in, in]``, any positive scale), :func:`obs_correct` walks the input columns left to
right in blocks (SparseGPT, Frantar & Alistarh 2023): each pruned entry is zeroed and its
error ``(w - 0) / [H^-1]_jj`` is propagated to the not-yet-processed columns of the same
row with the rows of the upper Cholesky factor of ``H^-1`` (the Optimal Brain Surgeon
update restricted to the remaining columns). ``H`` is dampened by
``damp * mean(diag(H))`` on the diagonal; inputs that are always zero (``H_jj = 0``) get a
unit diagonal and their weights are irrelevant to the output. This is the OBS engine of
:mod:`workbench.pruning.obs` with the mask given in advance (the ``mask`` argument of
SparseGPT's ``fasterprune``) instead of chosen by SparseGPT's saliency; always computed
in float32.

:func:`prac_correct` is the PRAC variant (project design notes): the same update with
``H`` built from a limited number of stored input rows, while the Wanda scores still use all tokens. With
every row stored it equals :func:`obs_correct` up to rounding.

:func:`james_stein_mean` is the James-Stein estimator of the per-feature input means that
PRAC collects from ``mean_sum`` over all tokens (seed 003; the statistic lives in
:class:`workbench.pruning.calibration.InputStats`).
"""

from __future__ import annotations

import torch

from workbench.core.checks import check_choice
from workbench.pruning.obs import inverse_hessian_factor, obs_sweep


def _check(weight: torch.Tensor, keep: torch.Tensor, n_in: int) -> None:
    if weight.dim() != 2 or keep.shape != weight.shape:
        raise ValueError(f"weight must be [out, in] and keep the same shape; got "
                         f"{tuple(weight.shape)} and {tuple(keep.shape)}")
    if weight.shape[1] != n_in:
        raise ValueError(f"hessian is {n_in}x{n_in} but weight has {weight.shape[1]} inputs")


@torch.no_grad()
def obs_correct(
    weight: torch.Tensor,
    keep: torch.Tensor,
    hessian: torch.Tensor,
    *,
    damp: float = 0.01,
    block_size: int = 128,
) -> torch.Tensor:
    """Prune ``weight`` to ``keep`` and correct the kept entries (SparseGPT update).

    Args:
        weight: ``[out, in]`` (any float dtype; computed in float32).
        keep: ``[out, in]`` bool, ``True`` = keep.
        hessian: ``[in, in]`` ``X^T X`` (scale irrelevant).
        damp: Dampening fraction of the mean diagonal (SparseGPT's ``percdamp``).
        block_size: Columns per lazy-update block.

    Returns:
        The corrected weight (float32, same device as ``weight``), zero where pruned.

    Raises:
        ValueError: Shape mismatch, ``damp < 0``, ``block_size < 1``, or a dampened
            ``hessian`` that is not positive definite.
    """
    _check(weight, keep, hessian.shape[0])
    if damp < 0 or block_size < 1:
        raise ValueError(f"need damp >= 0 and block_size >= 1, got {damp}, {block_size}")
    W = weight.detach().float().clone()
    prune = ~keep.to(W.device)
    U, dead = inverse_hessian_factor(hessian.to(W.device), damp, dtype=torch.float32,
                                     caller="OBS correction")
    W[:, dead] = 0.0
    obs_sweep(W, U, lambda w, _d, start: prune[:, start:start + w.shape[1]],
              block_size=block_size)
    return W


@torch.no_grad()
def prac_correct(
    weight: torch.Tensor,
    keep: torch.Tensor,
    samples: torch.Tensor,
    *,
    damp: float = 0.01,
    block_size: int = 128,
) -> torch.Tensor:
    """PRAC correction from a limited set of stored input rows ``samples [n, in]``."""
    if samples.dim() != 2:
        raise ValueError(f"samples must be [n, in], got {tuple(samples.shape)}")
    X = samples.float().to(weight.device)
    return obs_correct(weight, keep, X.t() @ X, damp=damp, block_size=block_size)


def reconstruction_error(weight: torch.Tensor, new_weight: torch.Tensor,
                         inputs: torch.Tensor) -> float:
    """``||W X^T - W' X^T||_F`` for inputs ``X [n, in]`` (weights ``[out, in]``)."""
    X = inputs.float()
    return float(torch.linalg.norm(X @ (weight.float() - new_weight.float()).t()))


JS_VARIANCES = ("sampling", "prac")


def james_stein_mean(means: torch.Tensor, variance="sampling", *, count: int | None = None,
                     sq_mean: torch.Tensor | None = None, offset: int = 3) -> torch.Tensor:
    """James-Stein shrinkage of ``p`` feature means towards their grand mean.

    With ``xbar_j`` the raw means (``mean_sum_j / count``), ``mu = mean_j xbar_j`` and
    ``S = sum_j (xbar_j - mu)^2``::

        c = clamp((p - offset) * sigma^2 / S, 0, 1)
        js_j = mu + (1 - c) * (xbar_j - mu)

    (positive-part estimator; ``offset=3`` is the Efron-Morris constant for shrinking
    towards an estimated grand mean, Efron & Morris 1973; PRAC's reference code uses
    ``p - 2``, i.e. ``offset=2``). ``sigma^2`` is the variance of each ``xbar_j`` as an
    estimator:

    * ``"sampling"`` (default, our choice): ``mean_j(v_j) / count`` with the per-feature
      token variances ``v_j = sq_mean_j - xbar_j^2`` (``sq_mean = sq_sum / count``), i.e.
      the pooled sampling variance of a mean of ``count`` tokens (tokens treated as
      independent, so it is a lower bound for correlated tokens of one sequence);
    * ``"prac"``: PRAC's reference heuristic ``(mean_j |xbar_j - mu|)^2``, which does not
      shrink less as ``count`` grows;
    * a number: ``sigma^2`` itself.

    Args:
        means: ``[p]`` raw feature means.
        variance: ``"sampling"``, ``"prac"`` or a non-negative float (see above).
        count: Tokens behind each mean (``"sampling"`` only).
        sq_mean: ``[p]`` per-feature mean of squares (``"sampling"`` only).
        offset: ``p - offset`` in the shrinkage factor (2 or 3).

    Returns:
        ``[p]`` float32 shrunk means (``means`` unchanged, as float32, when ``p <= offset``
        or all means are equal).

    Raises:
        ValueError: Non-1-D ``means``, unknown ``variance``, missing ``count``/``sq_mean``
            for ``"sampling"``, a negative variance, or ``offset`` not 2 or 3.
    """
    check_choice("offset", offset, (2, 3))
    x = means.detach().float()
    if x.dim() != 1:
        raise ValueError(f"means must be 1-D [p], got {tuple(x.shape)}")
    p = x.numel()
    mu = x.mean() if p else x.sum()
    dev = x - mu
    S = float((dev.double() ** 2).sum())
    if p <= offset or S == 0.0:
        return x.clone()
    if isinstance(variance, str):
        check_choice("variance", variance, JS_VARIANCES)
        if variance == "prac":
            sigma2 = float(dev.abs().mean()) ** 2
        else:
            if count is None or sq_mean is None or int(count) < 1:
                raise ValueError("variance='sampling' needs count >= 1 and sq_mean "
                                 "(sq_sum / count)")
            v = (sq_mean.detach().double() - x.double() ** 2).clamp_min(0.0)
            sigma2 = float(v.mean()) / int(count)
    else:
        sigma2 = float(variance)
        if not sigma2 >= 0:
            raise ValueError(f"variance must be 'sampling', 'prac' or a number >= 0, "
                             f"got {variance!r}")
    c = min(max((p - offset) * sigma2 / S, 0.0), 1.0)
    return (mu + (1.0 - c) * dev).float()
