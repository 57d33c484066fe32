"""Gradient probe (GradProbe, seed 001): keep the pruning candidates the loss reacts to.

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

from workbench.pruning.scores import gradient_moments, importance
from workbench.pruning.masks import apply_masks, parse_scope, prunable_modules, select_masks, transposed_names

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


def gradprobe(
    model: nn.Module,
    sparsity: float,
    *,
    calibration,
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
) -> GradProbeResult:
    """Gradient-probe pruning.

    Args:
        model: A causal LM.
        sparsity: Target fraction (the base strategy's candidates), in ``[0, 1)``.
        calibration: Token ids ``[n, seq]`` for the gradients (and Wanda's norms).
        base: ``"magnitude"`` or ``"wanda"``.
        scope: Scope of the base candidates (``global``, ``layer``, ``row``, N:M).
        mode: ``"global"`` (scale all candidates at once) or ``"layerwise"``.
        reduction_factor: Candidates are multiplied by this during the probe.
        threshold: Relative gradient rise above which a candidate is restored.
        apply: Zero the pruned weights in place (else the model is left dense).
        exact_sparsity: Instead of a threshold, prune exactly ``round(sparsity * N)``
            candidates: those with the lowest relative gradient rise (candidates drawn at
            ``candidate_sparsity``, default ``min(0.99, 1.5 * sparsity)``).
        candidate_sparsity: Sparsity of the base strategy's candidate set (default
            ``sparsity``, or as above with ``exact_sparsity``).

    Returns:
        A :class:`GradProbeResult` (``masks`` for ``threshold``).

    Raises:
        ValueError: Unknown base / mode, bad sparsity or missing calibration.
    """
    if base not in BASES:
        raise ValueError(f"base must be one of {BASES}, got {base!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if calibration is None:
        raise ValueError("gradprobe needs calibration data (calibration=LongTensor[n, seq])")
    scope_name, n, m = parse_scope(scope)
    modules = prunable_modules(model, include, exclude)
    params = {nm: mod.weight for nm, mod in modules.items()}
    if candidate_sparsity is None:
        candidate_sparsity = min(0.99, 1.5 * sparsity) if exact_sparsity else sparsity
    scores = importance(model, base, data=calibration, include=include, exclude=exclude,
                        batch_size=batch_size)
    base_masks = select_masks(scores, candidate_sparsity, scope=scope_name, n=n, m=m,
                              transposed=transposed_names(model) & set(scores))
    candidates = {nm: ~mk for nm, mk in base_masks.items()}
    g0s, _, nb = gradient_moments(model, params, calibration, batch_size=batch_size)
    g0 = {nm: (g / nb).abs() for nm, g in g0s.items()}
    original = {nm: p.detach().clone() for nm, p in params.items()}
    g1: dict = {}
    try:
        if mode == "global":
            _scale(params, candidates, reduction_factor)
            g1s, _, _ = gradient_moments(model, params, calibration, batch_size=batch_size)
            g1 = {nm: (g / nb).abs() for nm, g in g1s.items()}
        else:
            for nm in params:
                _scale(params, {nm: candidates[nm]}, reduction_factor)
                g, _, _ = gradient_moments(model, {nm: params[nm]}, calibration,
                                           batch_size=batch_size)
                g1[nm] = (g[nm] / nb).abs()
                with torch.no_grad():
                    params[nm].copy_(original[nm])
    finally:
        with torch.no_grad():
            for nm, p in params.items():
                p.copy_(original[nm])
    res = GradProbeResult(candidates=candidates, g0=g0, g1=g1)
    if exact_sparsity:
        rise = {nm: torch.where(candidates[nm], (g1[nm] - g0[nm]) / (g0[nm] + res.eps),
                                torch.full_like(g0[nm], float("inf"))) for nm in candidates}
        res.masks = select_masks(rise, sparsity, scope="global")
    else:
        res.masks = res.masks_for(threshold)
    total = sum(c.numel() for c in candidates.values())
    n_cand = sum(int(c.sum()) for c in candidates.values())
    pruned = sum(int((~mk).sum()) for mk in res.masks.values())
    res.info = dict(base=base, base_scope=scope, gradprobe_mode=mode,
                    reduction_factor=reduction_factor, threshold=threshold,
                    exact_sparsity=exact_sparsity,
                    target_sparsity=sparsity, candidate_sparsity=n_cand / total,
                    achieved_sparsity=pruned / total, restored=n_cand - pruned)
    if apply:
        apply_masks(model, res.masks)
    return res
