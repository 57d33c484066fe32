"""One-shot pruning: ``prune(model, method, sparsity, calibration_tokens=...)``.

Every method is registered once, below, in :data:`workbench.pruning.registry.METHODS`
with its properties as data (needs calibration, default scope, reusable scores, the
layer-sparsity allocations it supports, display label, description).
:func:`prune`, :func:`default_scope`, :func:`workbench.pruning.sweeps.sweep` and
:data:`workbench.pruning.sweeps.PRESETS` read those
properties; nothing else names a method.

**Adding a method = one function + one ``METHODS.register(...)`` + one test.** The
function takes a :class:`PruneRequest` and the method's own options as keyword-only
parameters (``prune`` rejects any other keyword, naming it), prunes ``request.model`` in
place and returns ``(masks, info)``. A method that only ranks weights by a score kind
is ``score_method(score_kind)``.

Methods registered here:

* ``magnitude``, ``gradient_norm``, ``taylor``, ``obd_empirical``, ``obd_true``,
  ``hybrid``: rank by the :func:`workbench.importance` score kind of the same name (default
  scope ``layer``); the scores do not depend on the sparsity, so ``sweep`` computes them
  once.
* ``wanda``, ``wanda_obs`` (Wanda's mask + OBS update), ``wanda_prac`` (same from a
  limited sample): :mod:`workbench.pruning.layerwise`, calibrated sequentially by
  default (default scope ``row``).
* ``sparsegpt``: :mod:`workbench.pruning.sparsegpt` (Frantar & Alistarh 2023).
* ``gradprobe``: :func:`workbench.pruning.gradient_probe.gradprobe` (scope ``global``).

Layer-sparsity allocation: ``allocation="uniform"`` (every layer at the target) or
``"owl"`` (:mod:`workbench.pruning.allocation`, Yin et al. 2024), for the methods whose
``allocations`` property lists it.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Collection, Mapping

import torch
from torch import nn

from workbench.core.checks import check_choice, check_kwargs, check_option_types, renamed_keywords
from workbench.pruning.allocation import allocate
from workbench.pruning.gradient_probe import gradprobe
from workbench.pruning.masks import (
    apply_masks,
    check_sparsity,
    check_threshold_algorithm,
    parse_scope,
    prunable_modules,
    select_masks,
    sparsity_report,
    transposed_names,
)
from workbench.pruning import layerwise
from workbench.pruning.registry import METHODS, SCORE_KINDS
from workbench.pruning.sparsegpt import sparsegpt
from workbench.pruning.scores import accepted_options, check_calibration, importance

@dataclass
class PruneRequest:
    """What a method needs to prune (built by :func:`prune`).

    Attributes:
        model: The model, pruned in place.
        sparsity: Target fraction in ``[0, 1)``.
        scope: The scope as given (``"row"``, ``"2:4"``, ...); ``scope_name``, ``n``,
            ``m`` are its parsed form (:func:`workbench.pruning.masks.parse_scope`).
        modules: ``{param name: module}`` to prune (from ``include`` / ``exclude``).
        calibration_tokens: Token ids ``LongTensor[n, seq]`` or ``None``.
        batch_size: Calibration sequences per forward.
        device: Device each block runs on in sequential calibration (``None``: its own).
        scores: Precomputed scores (score methods skip scoring; used by
            :func:`workbench.pruning.sweeps.sweep`).
        layer_sparsity: ``{param name: sparsity}`` from a non-uniform allocation, or
            ``None`` (every layer at ``sparsity``).
        threshold_algorithm: How a ``global`` scope finds its threshold
            (:data:`workbench.pruning.threshold.THRESHOLD_ALGORITHMS`).
    """

    model: nn.Module
    sparsity: float
    scope: str
    scope_name: str
    n: int | None
    m: int | None
    modules: dict
    include: Collection[str] | None = None
    exclude: Collection[str] | None = None
    calibration_tokens: Any = None
    batch_size: int = 8
    device: Any = None
    scores: Mapping[str, torch.Tensor] | None = None
    layer_sparsity: dict | None = None
    threshold_algorithm: str = "exact"

    def sparsity_for(self, name: str) -> float:
        """The target sparsity of parameter ``name``."""
        if self.layer_sparsity is None:
            return self.sparsity
        return self.layer_sparsity[name]


@dataclass
class PruneResult:
    """What :func:`prune` did.

    Attributes:
        masks: ``{param name: BoolTensor}`` (True = keep), applied in place.
        report: :func:`workbench.pruning.masks.sparsity_report` of the masks (per tensor + total).
        info: Method, scope, mode, allocation, target and achieved sparsity, seconds, the
            per-layer targets under a non-uniform allocation (``layer_sparsity``), ...
    """

    masks: dict
    report: Any
    info: dict = field(default_factory=dict)


def default_scope(method: str) -> str:
    """The registered default scope of ``method``."""
    return METHODS.get(method).props["default_scope"]


def check_method(method: str) -> None:
    """Raise ``ValueError`` for an unknown method, listing the registered methods."""
    METHODS.check(method)


def select_by_scores(req, scores: Mapping[str, torch.Tensor]) -> dict:
    """Masks from ``scores`` at the request's scope and (per-layer) sparsity, applied."""
    transposed = transposed_names(req.model) & set(scores)
    if req.layer_sparsity is None:
        masks = select_masks(scores, req.sparsity, scope=req.scope_name, n=req.n, m=req.m,
                             transposed=transposed, threshold_algorithm=req.threshold_algorithm)
    elif req.scope_name == "global":
        raise ValueError("scope='global' has one threshold: it cannot be combined with a "
                         "per-layer allocation")
    else:
        masks = {}
        for name, score in scores.items():
            masks.update(select_masks({name: score}, req.sparsity_for(name),
                                      scope=req.scope_name, n=req.n, m=req.m,
                                      transposed=transposed & {name}))
    apply_masks(req.model, masks)
    return masks


def _score_kind_options(score_kind: str) -> set[str] | None:
    """The options of ``score_kind`` a score method passes on (``None``: not known)."""
    allowed = accepted_options(SCORE_KINDS.get(score_kind).fn)
    return None if allowed is None else allowed - {"tokens", "include", "exclude", "batch_size"}


@renamed_keywords(kind="score_kind")
def score_method(score_kind: str):
    """A method that prunes the lowest scores of ``score_kind``.

    The returned function takes the score kind's own options (checked by
    :func:`workbench.importance`).
    """
    def run(req, **options):
        scores = req.scores
        if scores is None:
            scores = importance(req.model, score_kind, tokens=req.calibration_tokens,
                                include=req.include, exclude=req.exclude,
                                batch_size=req.batch_size, **options)
        elif options:
            raise TypeError(f"options {sorted(options)} have no effect with precomputed scores")
        return select_by_scores(req, scores), {"mode": "scores"}

    run.__name__ = f"{score_kind}_method"
    run.extra_options = lambda: _score_kind_options(score_kind)
    run.__doc__ = f"Prune the lowest {score_kind!r} importance scores."
    return run


def _gradprobe_options() -> set[str]:
    """The options of :func:`~workbench.pruning.gradient_probe.gradprobe` that ``prune``
    does not set itself."""
    given = {"calibration_tokens", "scope", "include", "exclude", "batch_size", "apply",
             "threshold_algorithm"}
    return accepted_options(gradprobe) - given


def _gradprobe(req, **options):
    """:func:`workbench.pruning.gradient_probe.gradprobe` at the request's target."""
    check_kwargs("prune(method='gradprobe')", options, _gradprobe_options())
    res = gradprobe(req.model, req.sparsity, calibration_tokens=req.calibration_tokens,
                    scope=req.scope, include=req.include, exclude=req.exclude,
                    batch_size=req.batch_size, threshold_algorithm=req.threshold_algorithm,
                    **options)
    return res.masks, {**res.info, "mode": "gradprobe"}


_gradprobe.extra_options = _gradprobe_options


# ----------------------------------------------------------------------------- registry
def _score_kind_label(score_kind: str) -> str:
    return SCORE_KINDS.get(score_kind).props["label"]


_SCORES = dict(reusable_scores=True, default_scope="layer")
_CALIBRATED = dict(needs_calibration=True, default_scope="row")
_OWL = ("uniform", "owl")

METHODS.register("magnitude", score_method("magnitude"), score_kind="magnitude",
                 allocations=_OWL, label="Magnitude",
                 description="lowest |w| (per layer by default)", **_SCORES)
# score kinds that need calibration tokens, pruned by ranking: (score kind, description); colours
# are not registry data (workbench.experiments.analysis.plots.style keys them by name)
for _score_kind, _description in (
        ("gradient_norm", "lowest RMS per-batch gradient"),
        ("taylor", "lowest |w * g| (first-order Taylor)"),
        ("obd_empirical", "lowest OBD saliency, empirical diagonal Fisher"),
        ("obd_true", "lowest OBD saliency, true diagonal Fisher"),
        ("hybrid", "lowest weighted sum of normalised kinds")):
    METHODS.register(_score_kind, score_method(_score_kind), score_kind=_score_kind,
                     needs_calibration=True, label=_score_kind_label(_score_kind),
                     description=_description, **_SCORES)
METHODS.register("wanda", layerwise.wanda, allocations=_OWL, label="Wanda",
                 description="lowest |W_ij| ||X_j|| per row (Sun et al. "
                 "2024), sequential calibration", **_CALIBRATED)
METHODS.register("wanda_obs", layerwise.wanda_obs, allocations=_OWL,
                 label="Wanda + OBS update",
                 description="Wanda's mask, kept weights updated by OBS (full X^T X)",
                 **_CALIBRATED)
METHODS.register("wanda_prac", layerwise.wanda_prac, label="Wanda + PRAC update",
                 description="Wanda's mask, OBS update from max_samples stored rows",
                 **_CALIBRATED)
METHODS.register("sparsegpt", sparsegpt, allocations=_OWL, label="SparseGPT",
                 needs_calibration=True, default_scope="layer",
                 description="mask chosen per column block by w^2/[H^-1]_jj^2 with OBS "
                 "updates (Frantar & Alistarh 2023)")
METHODS.register("gradprobe", _gradprobe, needs_calibration=True, default_scope="global",
                 label="Gradient probe",
                 description="base candidates kept where the loss gradient reacts")


# ----------------------------------------------------------------------------- prune
@renamed_keywords(threshold_method="threshold_algorithm")
def prune(
    model: nn.Module,
    method: str,
    sparsity: float,
    *,
    scope: str | None = None,
    calibration_tokens=None,
    include: Collection[str] | None = None,
    exclude: Collection[str] | None = None,
    allocation: str = "uniform",
    allocation_options: Mapping[str, Any] | None = None,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    scores: Mapping[str, torch.Tensor] | None = None,
    threshold_algorithm: str = "exact",
    **options,
) -> PruneResult:
    """Prune ``model`` in place and return the masks with a report.

    Args:
        model: A causal LM (or any module with linear layers for score-only methods).
        method: A registered method (``workbench.pruning.registry.METHODS.names()``).
        sparsity: Fraction of the selected weights to prune, in ``[0, 1)``.
        scope: ``global``, ``layer``, ``row`` or ``"2:4"``-style N:M; default the
            method's registered ``default_scope``.
        calibration_tokens: Token ids ``LongTensor[n, seq]``; required by the methods
            registered with ``needs_calibration=True``.
        include, exclude: Name patterns selecting the pruned weights (default: the blocks'
            linear layers).
        allocation: ``"uniform"`` or ``"owl"`` (methods whose ``allocations`` lists it).
        allocation_options: Options of the allocation (OWL: ``threshold_m``,
            ``lam``; see :func:`workbench.pruning.allocation.owl_sparsities`).
        batch_size: Calibration sequences per forward.
        device: Device each block runs on during sequential calibration.
        scores: Precomputed scores (score methods skip scoring; used by
            :func:`workbench.pruning.sweeps.sweep`).
        threshold_algorithm: ``scope="global"`` only: ``"exact"`` (default),
            ``"statistical"`` or ``"histogram"`` (approximate, within a stated tolerance
            of the target count or an error; :mod:`workbench.pruning.threshold`), for
            every method with a global scope (score methods, ``wanda``, ``gradprobe``).
        **options: The method's own options (e.g. ``sequential``, ``damp``,
            ``block_size`` for the calibrated methods, ``weights`` for ``hybrid``,
            ``exact_sparsity`` for ``gradprobe``). Unknown names are an error.

    Returns:
        A :class:`PruneResult`.

    Raises:
        ValueError: Bad sparsity / scope / method / allocation, or missing calibration.
        TypeError: An option the method does not take.
    """
    entry = METHODS.get(method)
    s = check_sparsity(sparsity)
    scope = entry.props["default_scope"] if scope is None else scope
    scope_name, n, m = parse_scope(scope)
    check_threshold_algorithm(threshold_algorithm, scope_name)
    check_choice("allocation", allocation, entry.props["allocations"])
    allowed = accepted_options(entry.fn)
    if allowed is not None:
        check_kwargs(f"prune(method={method!r})", options, allowed | prune_keywords())
    check_option_types(f"prune(method={method!r})", options, entry.fn,
                       *_option_sources(entry.fn))
    if scope_name == "n:m" and abs(s - (1 - n / m)) > 1e-9:
        raise ValueError(f"sparsity={sparsity!r} does not fit scope={scope!r}: N:M keeps N of "
                         f"every M weights, so sparsity must be 1 - N/M = {1 - n / m:g}")
    if entry.props["needs_calibration"] and calibration_tokens is None and scores is None:
        raise ValueError(f"method {method!r} needs calibration data "
                         "(calibration_tokens=LongTensor[n, seq])")
    check_calibration(model, calibration_tokens, "calibration_tokens")
    if scores is not None and entry.props["score_kind"] is None:
        raise ValueError(f"scores= is only used by score methods "
                         f"{METHODS.names(reusable_scores=True)}, not {method!r}")
    t0 = time.perf_counter()
    modules = prunable_modules(model, include, exclude)
    req = PruneRequest(model=model, sparsity=s, scope=scope, scope_name=scope_name, n=n, m=m,
                       modules=modules, include=include, exclude=exclude,
                       calibration_tokens=calibration_tokens, batch_size=batch_size,
                       device=device, scores=scores, threshold_algorithm=threshold_algorithm)
    info: dict = dict(method=method, scope=scope, allocation=allocation, target_sparsity=s)
    if threshold_algorithm != "exact":
        info["threshold_algorithm"] = threshold_algorithm
    if allocation != "uniform":
        req.layer_sparsity, alloc_info = allocate(allocation, req, **(allocation_options or {}))
        info.update(alloc_info)
    elif allocation_options:
        raise ValueError("allocation_options are only used with allocation='owl', "
                         f"got {dict(allocation_options)}")
    masks, extra = entry.fn(req, **options)
    info.update(extra)
    report = sparsity_report(masks)
    report["target_sparsity"] = [req.sparsity_for(n) for n in report["name"][:-1]] + [s]
    info["achieved_sparsity"] = float(report.iloc[-1]["sparsity"])
    info["seconds"] = time.perf_counter() - t0
    return PruneResult(masks=masks, report=report, info=info)


def _option_sources(fn) -> list:
    """The functions a registered method forwards its ``**options`` to (for type checks)."""
    name = getattr(fn, "__name__", "")
    try:
        if name.endswith("_method"):
            return [SCORE_KINDS.get(name[: -len("_method")]).fn]
        if fn is _gradprobe:
            return [gradprobe]
    except (KeyError, ValueError, AttributeError):
        return []
    return []


def prune_keywords() -> set[str]:
    params = inspect.signature(prune).parameters.values()
    return {p.name for p in params if p.kind is p.KEYWORD_ONLY}
