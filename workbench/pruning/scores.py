"""Importance scores: ``importance(model, kind, data=...) -> {param name: score}``.

Every score has the weight's shape and dtype float32; higher = more important. By default
only the weight matrices of the transformer blocks' linear layers are scored (see
:func:`workbench.pruning.masks.prunable_modules`; ``include`` / ``exclude`` patterns change that).

Kinds (``g_b`` is the gradient of the mean next-token cross-entropy of calibration batch
``b``, ``B`` the number of batches, ``g = mean_b g_b``):

* ``magnitude``: ``|w|``.
* ``gradient_norm``: ``sqrt(mean_b g_b^2)``, the RMS over batches of the per-batch
  gradient (elementwise).
* ``taylor``: ``|w * g|``, first-order Taylor estimate of the loss change when ``w`` is
  zeroed.
* ``fisher``: OBD saliency ``0.5 * w^2 * F`` with ``F`` the diagonal Fisher from
  :func:`workbench.curvature.diagonal_fisher` (``fisher_kind="empirical"`` default, or
  ``"true"``), squared per-sequence gradients (not the squared batch gradient).
* ``wanda``: ``|W_ij| * ||X_j||_2``, input-feature norms over **all** calibration tokens,
  streamed in float32 (no stored activations). For GPT-2 ``Conv1D`` (``[in, out]``) the
  norms multiply the rows, so ``j`` is always the input feature.
* ``hybrid``: ``sum_k a_k * normalise(score_k)`` where ``normalise`` maps each tensor to
  ``[0, 1]`` by its own min and max; default weights :data:`HYBRID_DEFAULT_WEIGHTS`
  (magnitude 0.5, wanda 0.5) or ``weights={kind: a}``.
"""

from __future__ import annotations

from typing import Collection, Mapping

import torch
from torch import nn

from workbench.pruning.calibration import batches_of, collect_input_statistics
from workbench.pruning.masks import is_transposed_module, prunable_modules

KINDS = ("magnitude", "gradient_norm", "taylor", "fisher", "wanda", "hybrid")
NEEDS_DATA = ("gradient_norm", "taylor", "fisher", "wanda")
HYBRID_DEFAULT_WEIGHTS = {"magnitude": 0.5, "wanda": 0.5}


def check_kind(kind: str) -> None:
    """Raise ``ValueError`` for an unknown kind, listing the kinds."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def lm_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of ``ids [b, seq]`` (float32 log-softmax)."""
    from workbench.core.models import forward_logits
    from workbench.core.evaluate import causal_lm_loss

    return causal_lm_loss(forward_logits(model, ids), ids)


def gradient_moments(model: nn.Module, params: Mapping[str, nn.Parameter], data, *,
                     batch_size: int = 8) -> tuple[dict, dict, int]:
    """Per-batch gradients of ``params``: ``(sum_b g_b, sum_b g_b^2, B)`` in float32.

    Only ``params`` require grad during the passes (restored afterwards).
    """
    from workbench.core.models import model_device

    batches = batches_of(data, batch_size)
    device = model_device(model)
    flags = {p: p.requires_grad for p in model.parameters()}
    wanted = {id(p) for p in params.values()}
    g_sum = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    g_sq = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    was_training = model.training
    model.eval()
    try:
        for p in model.parameters():
            p.requires_grad_(id(p) in wanted)
        for batch in batches:
            grads = torch.autograd.grad(lm_loss(model, batch.to(device)), list(params.values()))
            for (n, _), g in zip(params.items(), grads):
                g = g.float()
                g_sum[n] += g
                g_sq[n] += g * g
    finally:
        for p, f in flags.items():
            p.requires_grad_(f)
        model.train(was_training)
    return g_sum, g_sq, len(batches)


def wanda_score(weight: torch.Tensor, norms: torch.Tensor, transposed: bool = False) -> torch.Tensor:
    """``|W| * ||X_j||`` with ``norms`` along the input dimension (float32)."""
    w = weight.detach().float().abs()
    n = norms.to(w.device).float()
    return w * (n.unsqueeze(1) if transposed else n.unsqueeze(0))


def _normalise(t: torch.Tensor) -> torch.Tensor:
    lo, hi = t.min(), t.max()
    return (t - lo) / (hi - lo) if hi > lo else torch.zeros_like(t)


def importance(
    model: nn.Module,
    kind: str,
    *,
    data=None,
    include: Collection[str] | None = None,
    exclude: Collection[str] | None = None,
    batch_size: int = 8,
    weights: Mapping[str, float] | None = None,
    fisher_kind: str = "empirical",
    **options,
) -> dict[str, torch.Tensor]:
    """Score the prunable weights of ``model``.

    Args:
        model: A causal LM (or any module with linear layers; then all are scored).
        kind: One of :data:`KINDS`.
        data: Calibration token ids ``LongTensor[n, seq]`` (or a list of batches); needed
            by gradient_norm, taylor, fisher, wanda (and hybrid when it mixes them).
        include, exclude: Name patterns (glob or regex) selecting the scored weights.
        batch_size: Sequences per forward/backward pass.
        weights: Hybrid only: ``{kind: weight}``.
        fisher_kind: Fisher only: ``"empirical"`` or ``"true"``.
        **options: Passed to ``diagonal_fisher`` for ``fisher``.

    Returns:
        ``{parameter name: float32 score tensor of the weight's shape}``.

    Raises:
        ValueError: Unknown kind (lists the kinds), missing data, bad hybrid weights.
    """
    check_kind(kind)
    modules = prunable_modules(model, include, exclude)
    params = {n: m.weight for n, m in modules.items()}
    if kind in NEEDS_DATA and data is None:
        raise ValueError(f"importance kind {kind!r} needs calibration data (data=...)")
    if kind == "magnitude":
        return {n: p.detach().float().abs() for n, p in params.items()}
    if kind == "wanda":
        stats = collect_input_statistics(model, modules, data, batch_size=batch_size)
        return {n: wanda_score(m.weight, stats[n].norms(), is_transposed_module(m))
                for n, m in modules.items()}
    if kind == "hybrid":
        weights = dict(HYBRID_DEFAULT_WEIGHTS if weights is None else weights)
        bad = [k for k in weights if k not in KINDS or k == "hybrid"]
        if bad or not weights:
            raise ValueError(f"weights keys must be among {KINDS[:-1]}, got {list(weights)}")
        out = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
        for k, a in weights.items():
            part = importance(model, k, data=data, include=include, exclude=exclude,
                              batch_size=batch_size, fisher_kind=fisher_kind, **options)
            for n in out:
                out[n] += float(a) * _normalise(part[n])
        return out
    if kind == "fisher":
        diag = _diagonal_fisher(model, params, data, batch_size, fisher_kind, options)
        return {n: 0.5 * p.detach().float() ** 2 * diag[n].float().to(p.device)
                for n, p in params.items()}
    g_sum, g_sq, n_b = gradient_moments(model, params, data, batch_size=batch_size)
    if kind == "gradient_norm":
        return {n: (g_sq[n] / n_b).sqrt() for n in params}
    return {n: (p.detach().float() * g_sum[n] / n_b).abs() for n, p in params.items()}


def _diagonal_fisher(model, params, data, batch_size, fisher_kind, options):
    from workbench.curvature.diagonal import diagonal_fisher

    batches = batches_of(data, batch_size)
    return diagonal_fisher(model, batches, kind=fisher_kind, params=params, **options)


def _ranks(t: torch.Tensor) -> torch.Tensor:
    flat = t.reshape(-1).double()
    r = torch.empty_like(flat)
    r[torch.argsort(flat, stable=True)] = torch.arange(flat.numel(), dtype=torch.float64)
    return r


def score_correlations(scores_by_kind: Mapping[str, Mapping[str, torch.Tensor]], *,
                       max_elements: int = 200_000, seed: int = 0):
    """Spearman rank correlation between score kinds, per layer.

    Args:
        scores_by_kind: ``{kind: {param name: score}}`` (same names in every kind).
        max_elements: Per layer, a seeded random subset of at most this many entries is
            ranked (ties ranked by position).

    Returns:
        DataFrame ``name, kind_a, kind_b, spearman`` (one row per layer and pair).
    """
    import itertools

    import pandas as pd

    kinds = list(scores_by_kind)
    names = list(scores_by_kind[kinds[0]])
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for name in names:
        numel = scores_by_kind[kinds[0]][name].numel()
        idx = (torch.randperm(numel, generator=gen)[:max_elements]
               if numel > max_elements else None)
        ranks = {}
        for k in kinds:
            flat = scores_by_kind[k][name].detach().reshape(-1).cpu()
            ranks[k] = _ranks(flat if idx is None else flat[idx])
        for a, b in itertools.combinations(kinds, 2):
            ra, rb = ranks[a] - ranks[a].mean(), ranks[b] - ranks[b].mean()
            denom = float(ra.norm() * rb.norm())
            rows.append(dict(name=name, kind_a=a, kind_b=b,
                             spearman=float(ra @ rb) / denom if denom else float("nan")))
    return pd.DataFrame(rows)
