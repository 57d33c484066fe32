"""SparseGPT (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be
Accurately Pruned in One-Shot", ICML; Algorithm 1).

For one linear layer with weight ``W [out, in]`` and calibration inputs ``X [tokens, in]``
the layer-wise objective is ``||W X^T - W' X^T||^2`` with Hessian ``H = 2 X^T X``
(the factor 2 and any positive scale cancel: dampening is relative). The algorithm:

1. Dampen: ``H += damp * mean(diag(H)) * I`` (default ``damp = 0.01``); inputs that are
   always zero (``H_jj = 0``) get ``H_jj = 1`` and their weights are zeroed (they never
   affect the output).
2. ``U = chol(H^-1)`` (upper triangular). Row ``j`` of ``U`` divided by ``U_jj`` is row
   ``j`` of ``(H_F)^-1`` with ``F = {j, ..., in-1}`` the columns not yet processed, and
   ``U_jj^2 = [(H_F)^-1]_jj``, so one factorisation serves every OBS step.
3. Walk the columns in blocks of ``block_size`` (lazy batch updates). At the start of
   each block the mask of that block is chosen from the *current* (already updated)
   weights by the OBS saliency ``w^2 / [H^-1]_jj^2 = w^2 / U_jj^2``:

   * ``scope="layer"`` (the paper's unstructured rule): the ``round(sparsity * size)``
     lowest saliencies of the whole ``[out, block]`` slice, so rows get different
     sparsities;
   * ``scope="row"``: the ``round(sparsity * block)`` lowest of each row of the slice;
   * ``scope="N:M"``: inside the column loop, at every ``M``-th column the ``M - N``
     lowest saliencies of the next ``M`` columns of each row (current weights).

   Then, column by column, a pruned weight's error ``err = (w_j - 0) / U_jj`` is spread
   over the block's remaining columns (``W[:, j:] -= err U[j, j:]``, the OBS update),
   and after the block all later columns get ``W[:, end:] -= Err U[block, end:]`` at once.

Ties in the saliency are broken by position (lower index pruned first), as in
:func:`workbench.pruning.masks.select_masks`; the reference implementation instead
thresholds with ``<=`` and may prune a few extra tied entries.

:func:`sparsegpt_layer` is the numerical kernel: steps 1-3 are the one OBS engine of
:mod:`workbench.pruning.obs` (shared with the fixed-mask corrections), with the saliency
rule above as its mask choice; :func:`sparsegpt` is the registered pruning method
(sequential calibration, :mod:`workbench.pruning.layerwise`).
"""

from __future__ import annotations

import torch

from workbench.core.models import is_conv1d
from workbench.pruning.layerwise import run_layerwise
from workbench.pruning.masks import prune_lowest
from workbench.pruning.obs import inverse_hessian_factor, obs_sweep


@torch.no_grad()
def sparsegpt_layer(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    *,
    scope: str = "layer",
    n: int | None = None,
    m: int | None = None,
    damp: float = 0.01,
    block_size: int = 128,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune one layer with SparseGPT (mask chosen inside the algorithm, OBS updates).

    Args:
        weight: ``[out, in]`` (computed in float32, or float64 if given float64).
        hessian: ``[in, in]`` ``X^T X`` of the layer's calibration inputs.
        sparsity: Fraction to prune (for N:M it must be ``1 - N/M``).
        scope: ``"layer"`` (per column block over all rows, the paper's rule), ``"row"``
            (per row inside each column block) or ``"n:m"``.
        n, m: N kept of every M consecutive inputs, for ``scope="n:m"``.
        damp: Dampening fraction of the mean diagonal (SparseGPT's ``percdamp``).
        block_size: Columns per lazy-update block (a multiple of ``m`` for N:M).

    Returns:
        ``(new_weight, keep)``: the pruned and updated weight ``[out, in]`` (float32 or
        float64, zero where pruned) and the keep-mask (``True`` = keep).

    Raises:
        ValueError: Bad shapes, scope, ``damp < 0``, ``block_size < 1``, or N:M widths.
    """
    if weight.dim() != 2 or tuple(hessian.shape) != (weight.shape[1],) * 2:
        raise ValueError(f"weight must be [out, in] and hessian [in, in]; got "
                         f"{tuple(weight.shape)} and {tuple(hessian.shape)}")
    if not isinstance(damp, (int, float)) or isinstance(damp, bool) or not damp == damp or (
            damp == float("inf")):
        raise ValueError(f"damp must be a finite number >= 0 (default 0.01), got {damp!r}")
    if damp < 0 or block_size < 1:
        raise ValueError(f"need damp >= 0 and block_size >= 1, got damp={damp}, "
                         f"block_size={block_size}")
    if scope not in ("layer", "row", "n:m"):
        raise ValueError(f"scope must be one of ('layer', 'row', 'n:m'), got {scope!r}")
    nm = scope == "n:m"
    if nm and (block_size % m or weight.shape[1] % m):
        raise ValueError(f"N:M needs block_size ({block_size}) and the input width "
                         f"({weight.shape[1]}) divisible by M={m}")
    dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    W = weight.detach().to(dtype).clone()
    U, dead = inverse_hessian_factor(hessian.to(W.device), damp, dtype=dtype,
                                     caller="SparseGPT")
    W[:, dead] = 0.0

    def choose(w, d, _start):
        """Prune-mask of the columns ``w`` by the OBS saliency ``w^2 / U_jj^2``."""
        sal = w ** 2 / d ** 2
        if scope == "layer":
            return ~prune_lowest(sal.reshape(1, -1), round(sparsity * sal.numel())).reshape(
                w.shape)
        if scope == "row":
            return ~prune_lowest(sal, round(sparsity * w.shape[1]))
        return ~prune_lowest(sal, m - n)

    pruned = obs_sweep(W, U, choose, block_size=block_size, group=m if nm else None)
    return W, ~pruned


def sparsegpt(req, *, sequential: bool = True, damp: float = 0.01,
              block_size: int = 128) -> tuple[dict, dict]:
    """SparseGPT pruning method (registered as ``"sparsegpt"``).

    Every layer gets ``H = X^T X`` from its inputs, which with ``sequential=True``
    (default, the paper's protocol) are the outputs of the already pruned blocks before
    it. Scopes: ``layer`` (default, the paper's unstructured rule), ``row``, ``N:M``.

    Args:
        req: The :class:`workbench.pruning.methods.PruneRequest`.
        sequential: Block-by-block calibration (default) or one dense forward.
        damp: Dampening fraction of the mean Hessian diagonal.
        block_size: Columns per lazy-update block.
    """
    if req.scope_name == "global":
        raise ValueError("scope='global' is not supported by method 'sparsegpt': its mask "
                         "is chosen per layer; use 'layer', 'row' or 'N:M'")

    def layer(_name, module, stats, s):
        tr = is_conv1d(module)
        W = module.weight
        new, keep = sparsegpt_layer(W.t() if tr else W, stats.hessian, s,
                                    scope=req.scope_name, n=req.n, m=req.m, damp=damp,
                                    block_size=block_size)
        with torch.no_grad():
            W.copy_((new.t() if tr else new).to(W.dtype))
        return keep.t().contiguous() if tr else keep

    return run_layerwise(req, layer, sequential=sequential,
                         stats_options=dict(hessian=True, max_samples=0))
