"""Sweeps over sparsity levels and named method presets, on top of :func:`prune`.

* :func:`sweep`: one method at several sparsities from the same dense weights (scores of
  methods registered with ``reusable_scores=True`` computed once), evaluated by a
  user function.
* :data:`PRESETS` (computed on access): named ``(method, prune options)`` pairs: every
  registered method under its own name plus scope / option variants
  (``magnitude-layer``, ``magnitude-global``, ``gradprobe-exact``, ...).
* :func:`compare_methods`: validation perplexity of presets x sparsities.

The multi-seed one-shot protocol with evaluation settings, zero-shot accuracy and tests
is :func:`workbench.pruning.oneshot.oneshot_sweep`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from workbench.core.checks import check_kwargs
from workbench.core.evaluate import perplexity
from workbench.core.models import check_model_tokens
from workbench.pruning.masks import prunable_modules, restore
from workbench.pruning.methods import prune_keywords, default_scope, prune
from workbench.pruning.registry import METHODS
from workbench.pruning.scores import accepted_options, check_calibration, importance


def sweep(
    model: nn.Module,
    method: str,
    sparsities: Sequence[float],
    *,
    evaluate=None,
    calibration_tokens=None,
    return_masks: bool = False,
    **options,
):
    """Prune at each sparsity (from the same dense weights) and evaluate.

    Methods registered with ``reusable_scores=True`` (scores independent of the
    sparsity) are scored once; the calibrated methods recalibrate per level because
    later blocks see the pruned earlier blocks. The model is restored to its dense
    weights at the end.

    Args:
        evaluate: ``f(model) -> float`` (e.g. validation perplexity) or ``None``.
        calibration_tokens: Token ids ``LongTensor[n, seq]`` (see :func:`prune`).
        return_masks: Also return the masks of every level (CPU copies, ``True`` = keep).
        **options: Passed to :func:`prune`.

    Returns:
        DataFrame with ``method, scope, sparsity, achieved_sparsity, metric, seconds``;
        with ``return_masks`` the pair ``(DataFrame, {sparsity: {param name:
        BoolTensor}})`` (one entry per row, keyed by the row's ``sparsity``).

    Raises:
        TypeError: ``return_masks`` not a bool, or an option the method does not take.
    """
    import pandas as pd

    entry = METHODS.get(method)
    if not isinstance(return_masks, bool):
        raise TypeError(f"return_masks must be True or False, got {return_masks!r}")
    allowed = accepted_options(entry.fn)
    if allowed is not None:
        check_kwargs(f"sweep(method={method!r})", options, allowed | prune_keywords())
    check_calibration(model, calibration_tokens, "calibration_tokens")
    include, exclude = options.get("include"), options.get("exclude")
    modules = prunable_modules(model, include, exclude)
    originals = {n: mod.weight.detach().clone() for n, mod in modules.items()}
    scores = None
    if entry.props["reusable_scores"] and options.get("allocation", "uniform") == "uniform":
        kind_options = {k: v for k, v in options.items() if k not in prune_keywords()}
        scores = importance(model, entry.props["score_kind"], tokens=calibration_tokens,
                            include=include, exclude=exclude,
                            batch_size=options.get("batch_size", 8), **kind_options)
        options = {k: v for k, v in options.items() if k in prune_keywords()}
    rows, kept = [], {}
    try:
        for s in sparsities:
            restore(model, originals)
            res = prune(model, method, s, calibration_tokens=calibration_tokens, scores=scores,
                        **options)
            if return_masks:
                kept[float(s)] = {n: m.detach().to("cpu", copy=True)
                                  for n, m in res.masks.items()}
            metric = evaluate(model) if evaluate is not None else float("nan")
            rows.append(dict(method=method, scope=res.info["scope"], sparsity=float(s),
                             achieved_sparsity=res.info["achieved_sparsity"], metric=metric,
                             seconds=res.info["seconds"]))
    finally:
        restore(model, originals)
    frame = pd.DataFrame(rows)
    return (frame, kept) if return_masks else frame


def _presets() -> dict[str, tuple[str, dict]]:
    presets = {name: (name, {}) for name in METHODS.names()}
    presets.update({
        "magnitude-layer": ("magnitude", {"scope": "layer"}),
        "magnitude-global": ("magnitude", {"scope": "global"}),
        "gradprobe-exact": ("gradprobe", {"exact_sparsity": True}),
        # names used by earlier notebook runs (data keys of saved tables)
        "wanda+correction": ("wanda_obs", {}),
        "wanda+prac": ("wanda_prac", {}),
    })
    return presets


def __getattr__(name: str):
    # PRESETS: named method presets used by the notebooks, key -> (method, prune
    # options): every registered method under its own name (methods registered by other
    # modules included, hence computed on access), plus scope / option variants.
    if name == "PRESETS":
        return _presets()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def compare_methods(
    model: nn.Module,
    presets: Sequence[str],
    sparsities: Sequence[float],
    *,
    calibration_tokens,
    eval_tokens: torch.Tensor,
    batch_size: int = 8,
    progress: bool = False,
):
    """Validation perplexity of every preset at every sparsity, from the same dense model.

    Args:
        presets: Keys of :data:`PRESETS`.
        sparsities: Levels in ``[0, 1)``; ``0`` evaluates the dense model once per preset.
        calibration_tokens: Calibration token ids ``[n, seq]``.
        eval_tokens: Evaluation token blocks ``[n, seq]``.

    Returns:
        DataFrame ``preset, method, scope, sparsity, achieved_sparsity, perplexity,
        prune_seconds``. The model is restored to its dense weights at the end.

    Raises:
        ValueError: Unknown preset (lists the known ones).
    """
    import pandas as pd

    PRESETS = _presets()
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        raise ValueError(f"presets must be among {sorted(PRESETS)}, got {unknown}")
    check_calibration(model, calibration_tokens, "calibration_tokens")
    check_model_tokens("eval_tokens", eval_tokens, model)
    modules = prunable_modules(model)
    originals = {n: mod.weight.detach().clone() for n, mod in modules.items()}
    rows = []
    try:
        for key in presets:
            method, opts = PRESETS[key]
            for s in sparsities:
                restore(model, originals)
                if s == 0:
                    info = dict(scope=opts.get("scope", default_scope(method)),
                                achieved_sparsity=0.0, seconds=0.0)
                else:
                    info = prune(model, method, s, calibration_tokens=calibration_tokens,
                                 batch_size=batch_size, **opts).info
                ppl = perplexity(model, eval_tokens, batch_size=batch_size, progress=progress)
                rows.append(dict(preset=key, method=method, scope=info["scope"],
                                 sparsity=float(s), achieved_sparsity=info["achieved_sparsity"],
                                 perplexity=ppl, prune_seconds=info["seconds"]))
    finally:
        restore(model, originals)
    return pd.DataFrame(rows)
