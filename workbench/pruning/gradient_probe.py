"""Gradient probe (GradProbe, from the project's design notes): keep the pruning candidates the loss reacts to.

1. A base strategy (``magnitude`` or ``wanda`` scores, ``scope``) proposes candidates:
   the entries it would prune at the target sparsity.
2. ``g0 = |dL/dw|`` on the calibration data with the dense weights (mean loss over all
   calibration tokens).
3. The candidates are scaled by ``reduction_factor`` and ``g1 = |dL/dw|`` is recomputed
   (``mode="global"``: all candidates scaled at once, one extra gradient pass;
   ``mode="layerwise"``: one tensor at a time, one pass per tensor, base scores cached).
4. A candidate whose gradient rose by more than ``threshold`` relative,
   ``(g1 - g0) / (g0 + eps) > threshold``, is restored; the others are pruned.

So the achieved sparsity is at most the target; :func:`GradProbeResult.sweep` reports
target vs achieved for many thresholds from the same two gradient passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection, Sequence

import torch
from torch import nn

from workbench.core.checks import check_choice, check_range, renamed_keywords
from workbench.core.devices import model_device
from workbench.pruning.calibration import batches_of
from workbench.pruning.masks import (
    prune_lowest,
    apply_masks,
    check_threshold_algorithm,
    parse_scope,
    prunable_modules,
    restore,
    select_masks,
    transposed_names,
)
from workbench.pruning.scores import check_calibration, gradient_moments, importance, lm_loss

MODES = ("global", "layerwise")
BASES = ("magnitude", "wanda")


@dataclass
class GradProbeResult:
    """Gradients before/after the probe and the resulting masks.

    Attributes:
        candidates: ``{name: BoolTensor}`` True where the base strategy proposed pruning.
        g0, g1: ``{name: |gradient|}`` before and after scaling the candidates.
        masks: Keep-masks for ``threshold``.
        info: target/achieved sparsity, counts, settings.
    """

    candidates: dict
    g0: dict
    g1: dict
    masks: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    eps: float = 1e-12

    def masks_for(self, threshold: float) -> dict:
        """Keep-masks for a relative-rise ``threshold`` (restores rising candidates)."""
        out = {}
        for n, cand in self.candidates.items():
            rise = (self.g1[n] - self.g0[n]) / (self.g0[n] + self.eps)
            out[n] = ~(cand & ~(rise > threshold))
        return out

    def sweep(self, thresholds: Sequence[float]):
        """DataFrame ``threshold, target_sparsity, achieved_sparsity, restored``."""
        import pandas as pd

        total = sum(c.numel() for c in self.candidates.values())
        n_cand = sum(int(c.sum()) for c in self.candidates.values())
        rows = []
        for t in thresholds:
            mk = self.masks_for(t)
            pruned = sum(int((~m).sum()) for m in mk.values())
            rows.append(dict(threshold=float(t), target_sparsity=n_cand / total,
                             achieved_sparsity=pruned / total, restored=n_cand - pruned))
        return pd.DataFrame(rows)


@torch.no_grad()
def _scale(params, candidates, factor):
    for n, c in candidates.items():
        p = params[n]
        p.copy_(torch.where(c.to(p.device), p * factor, p))


def _probe_gradients(model, params, candidates, tokens, *, mode, reduction_factor,
                     batch_size) -> tuple[dict, dict]:
    """``(g0, g1)``: mean-batch ``|dL/dw|`` dense, then with candidates scaled."""
    g0s, _, nb = gradient_moments(model, params, tokens, batch_size=batch_size)
    g0 = {nm: (g / nb).abs() for nm, g in g0s.items()}
    original = {nm: p.detach().clone() for nm, p in params.items()}
    g1: dict = {}
    try:
        if mode == "global":
            _scale(params, candidates, reduction_factor)
            g1s, _, _ = gradient_moments(model, params, tokens, batch_size=batch_size)
            g1 = {nm: (g / nb).abs() for nm, g in g1s.items()}
        else:
            for nm in params:
                _scale(params, {nm: candidates[nm]}, reduction_factor)
                g, _, _ = gradient_moments(model, {nm: params[nm]}, tokens,
                                           batch_size=batch_size)
                g1[nm] = (g[nm] / nb).abs()
                with torch.no_grad():
                    params[nm].copy_(original[nm])
    finally:
        with torch.no_grad():
            for nm, p in params.items():
                p.copy_(original[nm])
    return g0, g1


def _exact_masks(res: "GradProbeResult", core: dict, base: dict) -> dict:
    """Exact-target masks: every ``core`` entry pruned; in each tensor, the pool entries
    (candidates outside ``core``) with the lowest relative gradient rise fill the tensor's
    count of the ``base`` mask (so each layer keeps the base method's sparsity)."""
    masks = {}
    for nm, cand in res.candidates.items():
        pool = cand & core[nm]  # core: keep-mask of the surest candidates
        need = int((~base[nm]).sum()) - int((~core[nm]).sum())
        rise = (res.g1[nm] - res.g0[nm]) / (res.g0[nm] + res.eps)
        rise = torch.where(pool, rise, torch.full_like(rise, float("inf")))
        keep = prune_lowest(rise.reshape(1, -1), need).reshape(rise.shape)
        masks[nm] = keep & core[nm]
    return masks


@torch.no_grad()
def _calibration_loss(model, masks, tokens, batch_size) -> float:
    """Mean next-token loss on the calibration batches with ``masks`` applied (restored
    afterwards)."""
    originals = apply_masks(model, masks, keep_original=True)
    try:
        batches = batches_of(tokens, batch_size)
        device = model_device(model)
        return sum(float(lm_loss(model, b.to(device))) for b in batches) / len(batches)
    finally:
        restore(model, originals)


@renamed_keywords(threshold_method="threshold_algorithm")
def gradprobe(
    model: nn.Module,
    sparsity: float,
    *,
    calibration_tokens,
    base: str = "magnitude",
    scope: str = "global",
    mode: str = "global",
    reduction_factor: float = 0.1,
    threshold: float = 0.0,
    include: Collection[str] | None = None,
    exclude: Collection[str] | None = None,
    batch_size: int = 8,
    apply: bool = True,
    exact_sparsity: bool = False,
    candidate_sparsity: float | None = None,
    pool_margin: float = 0.1,
    guard: bool = True,
    threshold_algorithm: str = "exact",
) -> GradProbeResult:
    """Gradient-probe pruning.

    Args:
        model: A causal LM.
        sparsity: Target fraction (the base strategy's candidates), in ``[0, 1)``.
        calibration_tokens: Token ids ``[n, seq]`` for the gradients (and Wanda's norms).
        base: ``"magnitude"`` or ``"wanda"``.
        scope: Scope of the base candidates (``global``, ``layer``, ``row``, N:M).
        mode: ``"global"`` (scale all candidates at once) or ``"layerwise"``.
        reduction_factor: Candidates are multiplied by this during the probe.
        threshold: Relative gradient rise above which a candidate is restored.
        apply: Zero the pruned weights in place (else the model is left dense).
        exact_sparsity: Instead of a threshold, prune exactly the base method's number of
            weights in every tensor. The pool is restricted so the result stays close to
            the base method: the base's candidates at ``sparsity * (1 - pool_margin)``
            (its surest picks) are always pruned; the rest of each tensor's count is
            filled from the base's candidates up to ``sparsity * (1 + pool_margin)`` with
            the lowest relative gradient rise. With ``guard`` the base method's own mask
            is returned instead when it has the lower calibration loss
            (``info["fallback"]``), so exact mode is never worse than its base on the
            calibration data.
        candidate_sparsity: Threshold mode only: sparsity of the base strategy's
            candidate set (default ``sparsity``).
        pool_margin: Exact mode: relative half-width of the swappable band, in ``[0, 1]``.
        guard: Exact mode: fall back to the base mask when it is better (one extra
            forward pass over the calibration data per mask).
        threshold_algorithm: How the base candidates' global threshold is found
            (:func:`workbench.pruning.masks.select_masks`; ``scope="global"`` only).

    Returns:
        A :class:`GradProbeResult` (``masks`` for ``threshold`` or the exact target).

    Raises:
        ValueError: Unknown base / mode, bad sparsity, missing calibration, N:M scope
            with ``exact_sparsity``, or ``candidate_sparsity`` with ``exact_sparsity``.
    """
    check_choice("base", base, BASES)
    check_choice("mode", mode, MODES)
    check_range("pool_margin", pool_margin, 0.0, 1.0)
    if calibration_tokens is None:
        raise ValueError("gradprobe needs calibration data "
                         "(calibration_tokens=LongTensor[n, seq])")
    check_calibration(model, calibration_tokens, "calibration_tokens")
    scope_name, n, m = parse_scope(scope)
    check_threshold_algorithm(threshold_algorithm, scope_name)
    if exact_sparsity and (scope_name == "n:m" or candidate_sparsity is not None):
        raise ValueError("exact_sparsity takes no candidate_sparsity and no N:M scope "
                         f"(got candidate_sparsity={candidate_sparsity!r}, scope={scope!r})")
    modules = prunable_modules(model, include, exclude)
    params = {nm: mod.weight for nm, mod in modules.items()}
    scores = importance(model, base, tokens=calibration_tokens, include=include,
                        exclude=exclude, batch_size=batch_size)

    def base_masks(s):
        return select_masks(scores, min(s, 0.999), scope=scope_name, n=n, m=m,
                            transposed=transposed_names(model) & set(scores),
                            threshold_algorithm=threshold_algorithm)

    if exact_sparsity:
        pool_masks = base_masks(sparsity * (1 + pool_margin))
    else:
        pool_masks = base_masks(sparsity if candidate_sparsity is None else candidate_sparsity)
    candidates = {nm: ~mk for nm, mk in pool_masks.items()}
    g0, g1 = _probe_gradients(model, params, candidates, calibration_tokens, mode=mode,
                              reduction_factor=reduction_factor, batch_size=batch_size)
    res = GradProbeResult(candidates=candidates, g0=g0, g1=g1)
    fallback = None
    if exact_sparsity:
        target = base_masks(sparsity)
        res.masks = _exact_masks(res, base_masks(sparsity * (1 - pool_margin)), target)
        if guard:
            fallback = (_calibration_loss(model, target, calibration_tokens, batch_size)
                        < _calibration_loss(model, res.masks, calibration_tokens, batch_size))
            res.masks = target if fallback else res.masks
    else:
        res.masks = res.masks_for(threshold)
    total = sum(c.numel() for c in candidates.values())
    n_cand = sum(int(c.sum()) for c in candidates.values())
    pruned = sum(int((~mk).sum()) for mk in res.masks.values())
    res.info = dict(base=base, base_scope=scope, gradprobe_mode=mode,
                    reduction_factor=reduction_factor, threshold=threshold,
                    exact_sparsity=exact_sparsity, target_sparsity=sparsity,
                    candidate_sparsity=n_cand / total, achieved_sparsity=pruned / total,
                    restored=n_cand - pruned)
    if exact_sparsity:
        res.info.update(pool_margin=pool_margin, fallback=fallback)
    if apply:
        apply_masks(model, res.masks)
    return res
