"""Importance scores: ``importance(model, score_kind, tokens=...) -> {param name: score}``.

Every score has the weight's shape and dtype float32; higher = more important. By default
only the weight matrices of the transformer blocks' linear layers are scored (see
:func:`workbench.pruning.masks.prunable_modules`; ``include`` / ``exclude`` patterns change that).

Each score kind is one function registered in
:data:`workbench.pruning.registry.SCORE_KINDS` right next to it (adding a score kind = one
function + one ``SCORE_KINDS.register(...)`` + one test); :func:`importance` only
dispatches, an unknown ``score_kind`` is an error listing the registered ones. Kinds
defined here (``g_b`` is the gradient of the mean next-token cross-entropy of calibration
batch ``b``, ``B`` the number of batches, ``g = mean_b g_b``):

* ``magnitude``: ``|w|``.
* ``gradient_norm``: ``sqrt(mean_b g_b^2)``, the RMS over batches of the per-batch
  gradient (elementwise).
* ``taylor``: ``|w * g|``, first-order Taylor estimate of the loss change when ``w`` is
  zeroed.
* ``obd_empirical`` / ``obd_true``: Optimal Brain Damage saliency (LeCun et al. 1990)
  ``0.5 * w^2 * F_jj`` with ``F`` the diagonal Fisher from
  :func:`workbench.curvature.diagonal.diagonal_fisher` of Fisher type ``empirical`` (data
  labels) or ``true`` (labels sampled from the model), squared per-sequence gradients
  (not the squared batch gradient). Formerly the kind ``"fisher"``.
* ``wanda``: ``|W_ij| * ||X_j||_2``, input-feature norms over **all** calibration tokens,
  streamed in float32 (no stored activations). For GPT-2 ``Conv1D`` (``[in, out]``) the
  norms multiply the rows, so ``j`` is always the input feature.
* ``hybrid``: ``sum_k a_k * normalise(score_k)`` where ``normalise`` maps each tensor to
  ``[0, 1]`` by its own min and max; default weights :data:`HYBRID_DEFAULT_WEIGHTS`
  (magnitude 0.5, wanda 0.5) or ``weights={kind: a}``.
"""

from __future__ import annotations

import inspect
from typing import Collection, Mapping

import torch
from torch import nn

from workbench.core.checks import check_choice, check_kwargs, renamed_keywords
from workbench.core.devices import model_device
from workbench.core.evaluate import causal_lm_loss
from workbench.core.models import check_model_tokens, forward_logits, is_conv1d
from workbench.curvature.diagonal import RENAMED as FISHER_RENAMED
from workbench.curvature.diagonal import diagonal_fisher
from workbench.curvature.registry import FISHER_TYPES
from workbench.pruning.calibration import batches_of, collect_input_statistics
from workbench.pruning.params import prunable_modules, prunable_parameters
from workbench.pruning.registry import SCORE_KINDS

HYBRID_DEFAULT_WEIGHTS = {"magnitude": 0.5, "wanda": 0.5}


def __getattr__(name: str):
    # ``KINDS`` / ``NEEDS_DATA`` are views of the registry (kinds registered by other
    # modules included), computed on access.
    if name == "KINDS":
        return SCORE_KINDS.names()
    if name == "NEEDS_DATA":
        return SCORE_KINDS.names(needs_calibration=True)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def accepted_options(fn) -> set[str] | None:
    """Keyword-only option names of a registered function.

    A function that takes ``**kw`` may declare the names it forwards in an
    ``extra_options`` attribute (a callable returning them, or ``None``); without one the
    names are not known and the result is ``None``.
    """
    params = inspect.signature(fn).parameters.values()
    names = {p.name for p in params if p.kind is p.KEYWORD_ONLY}
    if any(p.kind is p.VAR_KEYWORD for p in params):
        extra = getattr(fn, "extra_options", None)
        more = None if extra is None else extra()
        if more is None:
            return None
        names |= set(more)
    return names


def check_calibration(model: nn.Module, tokens, argument: str) -> None:
    """Check calibration token ids (a ``LongTensor[n, seq]`` or a list of them) against
    ``model`` (integer dtype, non-empty, ids below the vocabulary, length within the
    model's positions); ``None`` passes (the caller decides whether it is needed).

    Raises:
        TypeError, ValueError: Naming ``argument`` (see
            :func:`workbench.core.models.check_model_tokens`).
    """
    if tokens is None:
        return
    if isinstance(tokens, torch.Tensor):
        check_model_tokens(argument, tokens, model)
    elif isinstance(tokens, (list, tuple)) and tokens:
        for i, batch in enumerate(tokens):
            check_model_tokens(f"{argument}[{i}]", batch, model)
    else:
        raise TypeError(f"{argument} must be a LongTensor [n, seq] of token ids or a "
                        f"non-empty list of them, got {type(tokens).__name__}")


def lm_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of ``ids [b, seq]`` (float32 log-softmax)."""
    return causal_lm_loss(forward_logits(model, ids), ids)


def gradient_moments(model: nn.Module, params: Mapping[str, nn.Parameter], tokens, *,
                     batch_size: int = 8) -> tuple[dict, dict, int]:
    """Per-batch gradients of ``params``: ``(sum_b g_b, sum_b g_b^2, B)`` in float32.

    Only ``params`` require grad during the passes (restored afterwards).
    """
    batches = batches_of(tokens, batch_size)
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


@SCORE_KINDS.register("magnitude", label="Magnitude", needs_calibration=False,
                      description="|w|")
def magnitude_scores(model, *, tokens=None, include=None, exclude=None, batch_size=8):
    """``|w|`` (``tokens`` unused)."""
    weights = prunable_parameters(model, include, exclude)
    return {n: p.detach().float().abs() for n, p in weights.items()}


@SCORE_KINDS.register("gradient_norm", label="Gradient norm", needs_calibration=True,
                      description="sqrt(mean_b g_b^2), RMS of per-batch gradients")
def gradient_norm_scores(model, *, tokens, include=None, exclude=None, batch_size=8):
    """``sqrt(mean_b g_b^2)`` over the calibration batches."""
    params = prunable_parameters(model, include, exclude)
    _, g_sq, n_b = gradient_moments(model, params, tokens, batch_size=batch_size)
    return {n: (g_sq[n] / n_b).sqrt() for n in params}


@SCORE_KINDS.register("taylor", label="Taylor |w g|", needs_calibration=True,
                      description="|w * mean_b g_b|, first-order loss change")
def taylor_scores(model, *, tokens, include=None, exclude=None, batch_size=8):
    """``|w * g|`` with ``g`` the mean batch gradient."""
    params = prunable_parameters(model, include, exclude)
    g_sum, _, n_b = gradient_moments(model, params, tokens, batch_size=batch_size)
    return {n: (p.detach().float() * g_sum[n] / n_b).abs() for n, p in params.items()}


def _fisher_option_names() -> set[str]:
    skip = {"model", "batches", "fisher_type", "params"}
    return set(inspect.signature(diagonal_fisher).parameters) - skip



def _obd_scores(fisher_type, model, *, tokens, include=None, exclude=None, batch_size=8,
                **fisher_options):
    """OBD saliency ``0.5 w^2 F_jj`` with the diagonal Fisher of ``fisher_type``.

    ``fisher_options`` go to :func:`workbench.curvature.diagonal.diagonal_fisher`
    (``n_samples``, ``seed``, ``chunk_size``, ``normalize``, ``granularity``, ...);
    unknown names are an error.
    """
    check_choice("fisher_type", fisher_type, FISHER_TYPES)
    check_kwargs(f"importance(score_kind='obd_{fisher_type}')", fisher_options,
                 _fisher_option_names(), renamed=FISHER_RENAMED)
    params = prunable_parameters(model, include, exclude)
    diag = diagonal_fisher(model, batches_of(tokens, batch_size), fisher_type=fisher_type,
                           params=params, **fisher_options)
    return {n: 0.5 * p.detach().float() ** 2 * diag[n].float().to(p.device)
            for n, p in params.items()}


def obd_empirical_scores(model, *, tokens, include=None, exclude=None, batch_size=8,
                         **fisher_options):
    """OBD saliency with the **empirical** diagonal Fisher (data labels)."""
    return _obd_scores("empirical", model, tokens=tokens, include=include, exclude=exclude,
                       batch_size=batch_size, **fisher_options)


def obd_true_scores(model, *, tokens, include=None, exclude=None, batch_size=8,
                    **fisher_options):
    """OBD saliency with the **true** diagonal Fisher (labels sampled from the model)."""
    return _obd_scores("true", model, tokens=tokens, include=include, exclude=exclude,
                       batch_size=batch_size, **fisher_options)


obd_empirical_scores.extra_options = obd_true_scores.extra_options = _fisher_option_names

SCORE_KINDS.register("obd_empirical", obd_empirical_scores, needs_calibration=True,
                     label="OBD (empirical Fisher)",
                     description="0.5 w^2 F_jj, diagonal empirical Fisher")
SCORE_KINDS.register("obd_true", obd_true_scores, needs_calibration=True,
                     label="OBD (true Fisher)",
                     description="0.5 w^2 F_jj, diagonal true Fisher")


@SCORE_KINDS.register("wanda", label="Wanda", needs_calibration=True,
                      description="|W_ij| * ||X_j||_2 over all calibration tokens")
def wanda_scores(model, *, tokens, include=None, exclude=None, batch_size=8):
    """Wanda scores from one all-at-once forward of the (dense) model."""
    modules = prunable_modules(model, include, exclude)
    stats = collect_input_statistics(model, modules, tokens, batch_size=batch_size)
    return {n: wanda_score(m.weight, stats[n].norms(), is_conv1d(m))
            for n, m in modules.items()}


@SCORE_KINDS.register("hybrid", label="Hybrid", needs_calibration=False,
                      description="weighted sum of min-max normalised kinds")
def hybrid_scores(model, *, tokens=None, include=None, exclude=None, batch_size=8,
                  weights: Mapping[str, float] | None = None):
    """``sum_k a_k * normalise(score_k)`` over ``weights = {kind: a_k}``.

    Needs calibration when one of its kinds does (the default mixes ``wanda``).
    """
    weights = dict(HYBRID_DEFAULT_WEIGHTS if weights is None else weights)
    allowed = tuple(k for k in SCORE_KINDS.names() if k != "hybrid")
    bad = [k for k in weights if k not in allowed]
    if bad or not weights:
        raise ValueError(f"weights keys must be among {allowed}, got {list(weights)}")
    out = {n: torch.zeros_like(p, dtype=torch.float32)
           for n, p in prunable_parameters(model, include, exclude).items()}
    for k, a in weights.items():
        part = importance(model, k, tokens=tokens, include=include, exclude=exclude,
                          batch_size=batch_size)
        for n in out:
            out[n] += float(a) * _normalise(part[n])
    return out


@renamed_keywords(kind="score_kind")
def importance(
    model: nn.Module,
    score_kind: str,
    *,
    tokens=None,
    include: Collection[str] | None = None,
    exclude: Collection[str] | None = None,
    batch_size: int = 8,
    **options,
) -> dict[str, torch.Tensor]:
    """Score the prunable weights of ``model`` with a registered score kind.

    Args:
        model: A causal LM (or any module with linear layers; then all are scored).
        score_kind: A name in :data:`workbench.pruning.registry.SCORE_KINDS`
            (``SCORE_KINDS.names()``).
        tokens: Calibration token ids ``LongTensor[n, seq]`` (or a list of batches); needed
            by the score kinds registered with ``needs_calibration=True`` (and by ``hybrid``
            when it mixes them).
        include, exclude: Name patterns (glob or regex) selecting the scored weights.
        batch_size: Sequences per forward/backward pass.
        **options: Options of that score kind, e.g. ``weights={score_kind: a}`` for
            ``hybrid`` or ``n_samples`` for ``obd_true``; an option the score kind does not
            take is an error.

    Returns:
        ``{parameter name: float32 score tensor of the weight's shape}``.

    Raises:
        ValueError: Unknown score kind (lists them), missing tokens, bad hybrid weights.
        TypeError: An option the score kind does not accept (names the accepted ones).
    """
    entry = SCORE_KINDS.get(score_kind)
    allowed = accepted_options(entry.fn)
    if allowed is not None:
        check_kwargs(f"importance(score_kind={score_kind!r})", options, allowed - {"tokens"},
                     renamed=FISHER_RENAMED)
    if entry.props["needs_calibration"] and tokens is None:
        raise ValueError(f"score kind {score_kind!r} needs calibration data (tokens=...)")
    check_calibration(model, tokens, "tokens")
    return entry.fn(model, tokens=tokens, include=include, exclude=exclude,
                    batch_size=batch_size, **options)


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
        DataFrame ``name, score_kind_a, score_kind_b, spearman`` (one row per layer and
        pair).
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
            rows.append(dict(name=name, score_kind_a=a, score_kind_b=b,
                             spearman=float(ra @ rb) / denom if denom else float("nan")))
    return pd.DataFrame(rows)
