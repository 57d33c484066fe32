"""Layer-wise calibrated methods: Wanda and Wanda's mask with a weight correction.

* ``wanda`` (Sun et al. 2024, "A Simple and Effective Pruning Approach for Large Language
  Models"): score ``|W_ij| * ||X_j||_2``, default per output row; weights are only zeroed.
* ``wanda_obs``: Wanda's mask, then the kept weights of each row are updated by the
  Optimal Brain Surgeon correction of SparseGPT (:func:`workbench.pruning.correction.obs_correct`,
  full ``X^T X``). The mask is *not* chosen by SparseGPT's rule: that is
  :mod:`workbench.pruning.sparsegpt`.
* ``wanda_prac``: as ``wanda_obs`` with ``X^T X`` from at most ``max_samples`` stored
  input rows per layer (PRAC), while the Wanda norms still use all tokens.

All three run :func:`run_layerwise`: sequentially by default (block ``i`` calibrated on
the outputs of the pruned blocks before it, :mod:`workbench.pruning.sequential`) or
all at once from one forward of the dense model (``sequential=False``; required for
``scope="global"``, which only plain Wanda supports).
"""

from __future__ import annotations

from typing import Callable

import torch

from workbench.core.models import is_conv1d
from workbench.pruning.calibration import collect_input_statistics
from workbench.pruning.correction import obs_correct, prac_correct
from workbench.pruning.masks import apply_masks, select_masks
from workbench.pruning.scores import wanda_score, wanda_scores
from workbench.pruning.sequential import sequential_calibration


def wanda_mask(name, module, stats, sparsity, scope, n, m) -> torch.Tensor:
    """Wanda keep-mask of one layer (``True`` = keep), in the weight's storage layout."""
    tr = is_conv1d(module)
    score = wanda_score(module.weight, stats.norms(), tr)
    return select_masks({name: score}, sparsity, scope=scope, n=n, m=m,
                        transposed={name} if tr else set())[name]


@torch.no_grad()
def write_corrected(module, mask: torch.Tensor, correct: Callable) -> None:
    """``W <- correct(W_rows, keep_rows)`` in ``[out, in]`` orientation, written back in
    the module's storage layout and dtype."""
    tr = is_conv1d(module)
    W = module.weight
    new = correct(W.t() if tr else W, mask.t() if tr else mask)
    W.copy_((new.t() if tr else new).to(W.dtype))


def run_layerwise(req, prune_layer: Callable, *, sequential: bool = True,
                  stats_options: dict | None = None) -> tuple[dict, dict]:
    """Calibrate and prune every layer of ``req.modules`` with ``prune_layer``.

    Args:
        req: The :class:`workbench.pruning.methods.PruneRequest`.
        prune_layer: ``f(name, module, stats, sparsity) -> keep-mask``; prunes the module
            in place (``sparsity`` is the layer's, see ``req.sparsity_for``).
        sequential: Block by block (default) or all at once.
        stats_options: For :func:`workbench.pruning.calibration.input_statistics`.

    Returns:
        ``(masks, info)`` with ``info["mode"]``.
    """
    masks: dict = {}

    def prune_block(_i, block_modules, stats):
        for name, module in block_modules.items():
            masks[name] = prune_layer(name, module, stats[name], req.sparsity_for(name))

    if sequential:
        sequential_calibration(req.model, req.calibration_tokens, prune_block, modules=req.modules,
                               batch_size=req.batch_size, device=req.device,
                               stats_options=stats_options)
    else:
        stats = collect_input_statistics(req.model, req.modules, req.calibration_tokens,
                                         batch_size=req.batch_size, **(stats_options or {}))
        prune_block(0, req.modules, stats)
    mode = "sequential" if sequential else "all-at-once"
    return {name: masks[name] for name in req.modules if name in masks}, {"mode": mode}


def _check_per_layer(req, method: str) -> None:
    if req.scope_name == "global":
        raise ValueError(f"scope='global' is not supported by method {method!r}: its "
                         "weight update is per layer; use 'row', 'layer' or 'N:M'")


def wanda(req, *, sequential: bool = True) -> tuple[dict, dict]:
    """Wanda: zero the lowest ``|W_ij| * ||X_j||`` (per row by default).

    ``scope="global"`` ranks all layers together from one all-at-once forward.
    """
    if req.scope_name == "global":
        if req.layer_sparsity is not None:
            raise ValueError("scope='global' has one threshold: it cannot be combined "
                             "with a per-layer allocation")
        scores = wanda_scores(req.model, tokens=req.calibration_tokens, include=req.include,
                              exclude=req.exclude, batch_size=req.batch_size)
        masks = select_masks(scores, req.sparsity, scope="global",
                             threshold_algorithm=req.threshold_algorithm)
        apply_masks(req.model, masks)
        return masks, {"mode": "all-at-once"}

    def layer(name, module, stats, s):
        mask = wanda_mask(name, module, stats, s, req.scope_name, req.n, req.m)
        with torch.no_grad():
            module.weight.mul_(mask.to(module.weight.dtype))
        return mask

    return run_layerwise(req, layer, sequential=sequential)


def wanda_obs(req, *, sequential: bool = True, damp: float = 0.01,
              block_size: int = 128) -> tuple[dict, dict]:
    """Wanda's mask + SparseGPT's OBS update of the kept weights (full ``X^T X``).

    Args:
        damp: Dampening, fraction of the mean diagonal of ``X^T X``.
        block_size: Columns per lazy-update block.
    """
    _check_per_layer(req, "wanda_obs")

    def layer(name, module, stats, s):
        mask = wanda_mask(name, module, stats, s, req.scope_name, req.n, req.m)
        write_corrected(module, mask, lambda W, keep: obs_correct(
            W, keep, stats.hessian, damp=damp, block_size=block_size))
        return mask

    return run_layerwise(req, layer, sequential=sequential,
                         stats_options=dict(hessian=True, max_samples=0))


def wanda_prac(req, *, sequential: bool = True, damp: float = 0.01, block_size: int = 128,
               max_samples: int = 2048) -> tuple[dict, dict]:
    """Wanda's mask + the OBS update from ``max_samples`` stored input rows (PRAC).

    Args:
        damp: Dampening, fraction of the mean diagonal.
        block_size: Columns per lazy-update block.
        max_samples: Stored input rows (tokens) per layer.
    """
    _check_per_layer(req, "wanda_prac")

    def layer(name, module, stats, s):
        mask = wanda_mask(name, module, stats, s, req.scope_name, req.n, req.m)
        write_corrected(module, mask, lambda W, keep: prac_correct(
            W, keep, stats.sample_matrix(), damp=damp, block_size=block_size))
        return mask

    return run_layerwise(req, layer, sequential=sequential,
                         stats_options=dict(hessian=False, max_samples=max_samples))
