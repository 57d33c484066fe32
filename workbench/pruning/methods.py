"""One-shot pruning: ``prune(model, method, sparsity, calibration=...)`` and ``sweep``.

Methods:

* ``magnitude``: ``|w|`` (default scope ``layer``).
* ``wanda``: ``|W_ij| * ||X_j||`` (default scope ``row``), calibrated **sequentially**
  by default: the inputs of block 0 are captured once (a hook on block 0 records its
  hidden states and every other argument it receives, e.g. transformers 5.x Llama's
  ``position_embeddings`` / ``attention_mask``, then stops the forward); block ``i`` is
  then run on the outputs of the already pruned block ``i - 1``, its linear layers'
  input statistics are streamed (float32 squared sums over all tokens), the block is
  pruned, and its outputs become the next block's inputs. Only one block needs to sit on
  ``device``, so a 7B model fits one GPU. ``sequential=False`` collects all statistics
  from one forward of the dense model (all-at-once; needed for ``scope="global"``).
* ``sparsegpt``: Wanda's masks plus the SparseGPT-style correction of the kept weights
  (``correction="obs"``: full ``X^T X``; ``correction="prac"``: PRAC, ``max_samples``
  stored input rows per layer). ``wanda`` accepts the same ``correction`` option;
  ``correction=None`` gives exactly Wanda.
* ``gradient_norm``, ``taylor``, ``fisher``, ``hybrid``: :func:`workbench.importance`
  scores (default scope ``layer``).
* ``gradprobe``: :func:`workbench.pruning.gradient_probe.gradprobe`.

Statistics that do not change between blocks are computed once (seed 001's layerwise
caching): magnitude and gradient scores are scored once for the whole model; in the
sequential path each block is run exactly twice (statistics, then outputs).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Collection, Mapping, Sequence

import torch
from torch import nn

from workbench.pruning.calibration import batches_of, input_statistics
from workbench.pruning.correction import obs_correct, prac_correct
from workbench.pruning.masks import (
    apply_masks,
    check_sparsity,
    is_transposed_module,
    parse_scope,
    prunable_modules,
    restore,
    select_masks,
    sparsity_report,
    transposed_names,
)
from workbench.core.models import _is_hf
from workbench.pruning.scores import KINDS, importance, wanda_score

METHODS = ("magnitude", "wanda", "sparsegpt", "gradprobe") + tuple(
    k for k in KINDS if k not in ("magnitude", "wanda"))
CORRECTIONS = (None, "obs", "prac")
_CALIBRATED = ("wanda", "sparsegpt", "gradprobe", "gradient_norm", "taylor", "fisher", "hybrid")


@dataclass
class PruneResult:
    """What :func:`prune` did.

    Attributes:
        masks: ``{param name: BoolTensor}`` (True = keep), applied in place.
        report: :func:`workbench.pruning.masks.sparsity_report` of the masks (per tensor + total).
        info: Method, scope, mode, target and achieved sparsity, seconds, ...
    """

    masks: dict
    report: Any
    info: dict = field(default_factory=dict)


def default_scope(method: str) -> str:
    """``row`` for Wanda-type methods, ``global`` for gradprobe, ``layer`` otherwise."""
    if method in ("wanda", "sparsegpt"):
        return "row"
    return "global" if method == "gradprobe" else "layer"


def check_method(method: str) -> None:
    """Raise ``ValueError`` for an unknown method, listing the methods."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


# ----------------------------------------------------------------------------- capture
class _Stop(Exception):
    pass


def _to(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to(o, device) for o in obj)
    if isinstance(obj, list):
        return [_to(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def _detach(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, (tuple, list)):
        return type(obj)(_detach(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _detach(v) for k, v in obj.items()}
    return obj


@torch.no_grad()
def capture_block_inputs(model: nn.Module, batches: Sequence[torch.Tensor], *,
                         store_device: str | torch.device | None = None) -> list[tuple]:
    """Inputs of the first transformer block for every batch, without running the rest.

    A forward pre-hook on block 0 records ``(hidden_states, other positional args,
    keyword args)`` (attention mask, position ids, rotary ``position_embeddings``, ...)
    and raises to stop the forward.

    Returns:
        ``[(hidden, args, kwargs), ...]``, one per batch.
    """
    from workbench.core.models import model_device, transformer_blocks

    block0 = transformer_blocks(model)[0]
    device = model_device(model)
    captured: list[tuple] = []

    def hook(_mod, args, kwargs):
        kwargs = dict(kwargs)
        if args:
            hidden, rest = args[0], tuple(args[1:])
        else:
            hidden, rest = kwargs.pop("hidden_states"), ()
        kwargs.pop("past_key_values", None)
        kwargs.pop("past_key_value", None)
        kwargs["use_cache"] = False if "use_cache" in kwargs else kwargs.get("use_cache")
        if kwargs["use_cache"] is None:
            kwargs.pop("use_cache")
        item = (_detach(hidden), _detach(rest), _detach(kwargs))
        captured.append(_to(item, store_device) if store_device is not None else item)
        raise _Stop

    handle = block0.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in batches:
            try:
                model(batch.to(device), use_cache=False) if _is_hf(model) else model(batch.to(device))
            except _Stop:
                pass
    finally:
        handle.remove()
    if len(captured) != len(batches):
        raise RuntimeError("block 0 was not reached for every calibration batch")
    return captured


def _block_forward(block: nn.Module, item: tuple, device) -> torch.Tensor:
    hidden, rest, kwargs = _to(item, device)
    out = block(hidden, *rest, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def sequential_calibration(
    model: nn.Module,
    calibration,
    prune_block,
    *,
    modules: Mapping[str, nn.Module],
    batch_size: int = 8,
    device: str | torch.device | None = None,
    stats_options: Mapping[str, Any] | None = None,
) -> None:
    """Calibrate and prune block by block (Wanda / SparseGPT protocol).

    Args:
        model: The causal LM (its blocks from :func:`workbench.core.models.transformer_blocks`).
        calibration: Token ids ``[n, seq]``.
        prune_block: ``f(index, {name: module}, {name: InputStats})`` pruning one block in
            place from the statistics of its (already pruned-upstream) inputs.
        modules: All prunable modules (``{param name: module}``); split per block.
        batch_size: Sequences per batch.
        device: Where each block runs (moved there and back); default its own device.
        stats_options: Passed to :func:`workbench.pruning.calibration.input_statistics`.
    """
    from workbench.core.models import transformer_blocks

    blocks = transformer_blocks(model)
    batches = batches_of(calibration, batch_size)
    items = capture_block_inputs(model, batches)
    by_block: list[dict] = [{} for _ in blocks]
    owner = {id(m): i for i, b in enumerate(blocks) for m in b.modules()}
    for name, module in modules.items():
        if id(module) in owner:
            by_block[owner[id(module)]][name] = module
    for i, block in enumerate(blocks):
        home = next(block.parameters()).device
        run_on = torch.device(device) if device is not None else home
        if run_on != home:
            block.to(run_on)
        if by_block[i]:
            with input_statistics(by_block[i], **(stats_options or {})) as stats:
                for item in items:
                    _block_forward(block, item, run_on)
            prune_block(i, by_block[i], stats)
        outs = [_block_forward(block, item, run_on).to(item[0].device) for item in items]
        items = [(o, rest, kw) for o, (_, rest, kw) in zip(outs, items)]
        if run_on != home:
            block.to(home)


# ----------------------------------------------------------------------------- wanda
def _prune_layer_wanda(name, module, stats, sparsity, scope, n, m, correction, damp,
                       block_size):
    """Wanda mask for one layer, optionally corrected; writes the weight in place."""
    tr = is_transposed_module(module)
    W = module.weight
    score = wanda_score(W, stats.norms(), tr)
    mask = select_masks({name: score}, sparsity, scope=scope, n=n, m=m,
                        transposed={name} if tr else set())[name]
    with torch.no_grad():
        if correction is None:
            W.mul_(mask.to(W.dtype))
        else:
            W_rows = W.t() if tr else W
            keep_rows = mask.t() if tr else mask
            if correction == "obs":
                new = obs_correct(W_rows, keep_rows, stats.hessian, damp=damp,
                                  block_size=block_size)
            else:
                new = prac_correct(W_rows, keep_rows, stats.sample_matrix(), damp=damp,
                                   block_size=block_size)
            W.copy_((new.t() if tr else new).to(W.dtype))
    return mask


def _wanda(model, sparsity, scope, n, m, calibration, modules, *, sequential, correction,
           batch_size, damp, block_size, max_samples, device):
    masks: dict = {}
    stats_options = dict(hessian=correction == "obs", max_samples=max_samples
                         if correction == "prac" else 0)

    def prune_block(_i, block_modules, stats):
        for name, module in block_modules.items():
            masks[name] = _prune_layer_wanda(name, module, stats[name], sparsity, scope, n, m,
                                             correction, damp, block_size)

    if sequential:
        sequential_calibration(model, calibration, prune_block, modules=modules,
                               batch_size=batch_size, device=device, stats_options=stats_options)
        return {name: masks[name] for name in modules if name in masks}
    from workbench.pruning.calibration import collect_input_statistics

    stats = collect_input_statistics(model, modules, calibration, batch_size=batch_size,
                                     **stats_options)
    if scope == "global":
        if correction is not None:
            raise ValueError("correction needs a per-layer scope (row, layer or N:M), not global")
        scores = {nm: wanda_score(mod.weight, stats[nm].norms(), is_transposed_module(mod))
                  for nm, mod in modules.items()}
        masks = select_masks(scores, sparsity, scope="global")
        apply_masks(model, masks)
        return masks
    prune_block(0, modules, stats)
    return {name: masks[name] for name in modules}


# ----------------------------------------------------------------------------- prune
def prune(
    model: nn.Module,
    method: str,
    sparsity: float,
    *,
    scope: str | None = None,
    calibration=None,
    include: Collection[str] | None = None,
    exclude: Collection[str] | None = None,
    sequential: bool = True,
    correction: str | None = "default",
    damp: float = 0.01,
    block_size: int = 128,
    max_samples: int = 2048,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    scores: Mapping[str, torch.Tensor] | None = None,
    **options,
) -> PruneResult:
    """Prune ``model`` in place and return the masks with a report.

    Args:
        model: A causal LM (or any module with linear layers for score-only methods).
        method: One of :data:`METHODS`.
        sparsity: Fraction of the scored weights to prune, in ``[0, 1)``.
        scope: ``global``, ``layer``, ``row``, ``n:m`` or ``"2:4"``-style; default
            :func:`default_scope`.
        calibration: Token ids ``LongTensor[n, seq]``; required by every method but
            magnitude.
        include, exclude: Name patterns selecting the pruned weights (default: the blocks'
            linear layers).
        sequential: Wanda/SparseGPT: block-by-block calibration (default) or all at once.
        correction: Wanda/SparseGPT: ``None``, ``"obs"`` (SparseGPT, full ``X^T X``) or
            ``"prac"`` (``max_samples`` stored rows); default ``None`` for wanda and
            ``"obs"`` for sparsegpt.
        damp: Dampening fraction for the correction.
        block_size: Columns per correction block.
        max_samples: Stored input rows per layer for PRAC.
        batch_size: Calibration sequences per forward.
        device: Device each block runs on during sequential calibration.
        scores: Precomputed scores (score-based methods: skip scoring; used by
            :func:`sweep`).
        **options: Passed to :func:`workbench.importance` or
            :func:`workbench.pruning.gradient_probe.gradprobe`.

    Returns:
        A :class:`PruneResult`.

    Raises:
        ValueError: Bad sparsity / scope / method / correction, or missing calibration.
    """
    check_method(method)
    s = check_sparsity(sparsity)
    scope = default_scope(method) if scope is None else scope
    scope_name, n, m = parse_scope(scope, options.pop("n", None), options.pop("m", None))
    if correction == "default":
        correction = "obs" if method == "sparsegpt" else None
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}, got {correction!r}")
    if correction is not None and method not in ("wanda", "sparsegpt"):
        raise ValueError(f"correction applies to methods wanda/sparsegpt, not {method!r}")
    if method in _CALIBRATED and calibration is None and scores is None:
        raise ValueError(f"method {method!r} needs calibration data (calibration=LongTensor[n, seq])")
    t0 = time.perf_counter()
    modules = prunable_modules(model, include, exclude)
    info: dict = dict(method=method, scope=scope, target_sparsity=s, correction=correction)
    if method in ("wanda", "sparsegpt") and scores is None:
        seq = sequential and scope_name != "global"
        info["mode"] = "sequential" if seq else "all-at-once"
        masks = _wanda(model, s, scope_name, n, m, calibration, modules, sequential=seq,
                       correction=correction, batch_size=batch_size, damp=damp,
                       block_size=block_size, max_samples=max_samples, device=device)
    elif method == "gradprobe":
        from workbench.pruning.gradient_probe import gradprobe

        res = gradprobe(model, s, calibration=calibration, scope=scope, include=include,
                        exclude=exclude, batch_size=batch_size, **options)
        masks = res.masks
        info.update(res.info)
        info["mode"] = "gradprobe"
    else:
        if scores is None:
            kind = method if method in KINDS else "magnitude"
            scores = importance(model, kind, data=calibration, include=include,
                                exclude=exclude, batch_size=batch_size, **options)
        info["mode"] = "scores"
        masks = select_masks(scores, s, scope=scope_name, n=n, m=m,
                             transposed=transposed_names(model) & set(scores))
        apply_masks(model, masks)
    report = sparsity_report(masks)
    info["achieved_sparsity"] = float(report.iloc[-1]["sparsity"])
    info["seconds"] = time.perf_counter() - t0
    return PruneResult(masks=masks, report=report, info=info)


def sweep(
    model: nn.Module,
    method: str,
    sparsities: Sequence[float],
    *,
    evaluate=None,
    calibration=None,
    **options,
):
    """Prune at each sparsity (from the same dense weights) and evaluate.

    Scores that do not depend on the sparsity (magnitude, gradient kinds, all-at-once
    Wanda without correction) are computed once and reused; sequential Wanda/SparseGPT
    recalibrate per level because later blocks see the pruned earlier blocks. The model
    is restored to its dense weights at the end.

    Args:
        evaluate: ``f(model) -> float`` (e.g. validation perplexity) or ``None``.
        **options: Passed to :func:`prune`.

    Returns:
        DataFrame with ``method, scope, sparsity, achieved_sparsity, metric, seconds``.
    """
    import pandas as pd

    check_method(method)
    modules = prunable_modules(model, options.get("include"), options.get("exclude"))
    originals = {n: mod.weight.detach().clone() for n, mod in modules.items()}
    scores = None
    reusable = method in KINDS and method != "wanda" or (
        method == "wanda" and not options.get("sequential", True)
        and options.get("correction") in (None, "default"))
    if reusable and method in KINDS:
        scores = importance(model, method, data=calibration,
                            include=options.get("include"), exclude=options.get("exclude"),
                            batch_size=options.get("batch_size", 8),
                            **{k: v for k, v in options.items()
                               if k not in ("include", "exclude", "batch_size", "scope",
                                            "sequential", "correction")})
    rows = []
    try:
        for s in sparsities:
            restore(model, originals)
            res = prune(model, method, s, calibration=calibration, scores=scores, **options)
            metric = evaluate(model) if evaluate is not None else float("nan")
            rows.append(dict(method=method, scope=res.info["scope"], sparsity=float(s),
                             achieved_sparsity=res.info["achieved_sparsity"], metric=metric,
                             seconds=res.info["seconds"]))
    finally:
        restore(model, originals)
    return pd.DataFrame(rows)


#: Named method presets used by the notebooks: key -> (method, prune options).
PRESETS: dict[str, tuple[str, dict]] = {
    "magnitude-layer": ("magnitude", {"scope": "layer"}),
    "magnitude-global": ("magnitude", {"scope": "global"}),
    "wanda": ("wanda", {}),
    "wanda+correction": ("sparsegpt", {"correction": "obs"}),
    "wanda+prac": ("sparsegpt", {"correction": "prac"}),
    "gradprobe": ("gradprobe", {}),
    "gradprobe-exact": ("gradprobe", {"exact_sparsity": True}),
}


def compare_methods(
    model: nn.Module,
    presets: Sequence[str],
    sparsities: Sequence[float],
    *,
    calibration,
    evaluation: torch.Tensor,
    batch_size: int = 8,
    progress: bool = False,
):
    """Validation perplexity of every preset at every sparsity, from the same dense model.

    Args:
        presets: Keys of :data:`PRESETS`.
        sparsities: Levels in ``[0, 1)``; ``0`` evaluates the dense model once per preset.
        calibration: Calibration token ids ``[n, seq]``.
        evaluation: Evaluation token blocks ``[n, seq]``.

    Returns:
        DataFrame ``preset, method, scope, sparsity, achieved_sparsity, perplexity,
        prune_seconds``. The model is restored to its dense weights at the end.

    Raises:
        ValueError: Unknown preset (lists the known ones).
    """
    import pandas as pd

    from workbench.core.evaluate import perplexity

    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        raise ValueError(f"presets must be among {sorted(PRESETS)}, got {unknown}")
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
                    info = prune(model, method, s, calibration=calibration,
                                 batch_size=batch_size, **opts).info
                ppl = perplexity(model, evaluation, batch_size=batch_size, progress=progress)
                rows.append(dict(preset=key, method=method, scope=info["scope"],
                                 sparsity=float(s), achieved_sparsity=info["achieved_sparsity"],
                                 perplexity=ppl, prune_seconds=info["seconds"]))
    finally:
        restore(model, originals)
    return pd.DataFrame(rows)
