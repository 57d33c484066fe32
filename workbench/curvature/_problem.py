"""Private helpers: turn (model, loss, batches) into per-term outputs, targets and weights.

A *term* is one summand of the empirical risk: one example of a classifier, one
predicted token of a causal LM (padding excluded), one example of a regression. Every
curvature quantity of the subpackage is a weighted sum over terms,

    L(theta) = sum_t w_t * l_t(f_t(theta)),

where ``l_t`` is the loss of term ``t`` summed over its output dimensions and ``w_t`` is
its weight: ``1 / N`` for ``reduction="mean"`` (``1 / (N * C)`` for ``MSELoss``, which
averages over the ``C`` outputs too), ``1`` for ``reduction="sum"``. ``N`` counts the
active terms of *all* batches, so a sum over batches equals the quantity on the
concatenated data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from workbench.core.models import is_hf_model, logits_of

SUPPORTED_LOSSES = (nn.CrossEntropyLoss, nn.NLLLoss, nn.MSELoss)
_LOSS_NAMES = "nn.CrossEntropyLoss, nn.NLLLoss, nn.MSELoss"


def loss_kind(loss_fn: Any) -> str:
    """Return ``"ce"``, ``"nll"`` or ``"mse"`` for a supported loss module.

    Raises:
        ValueError: For any other loss, a ``reduction`` other than ``mean``/``sum``,
            class weights or label smoothing.
    """
    if not isinstance(loss_fn, SUPPORTED_LOSSES):
        raise ValueError(
            f"loss_fn must be one of {_LOSS_NAMES} (an nn.Module instance), "
            f"got {type(loss_fn).__name__}"
        )
    if loss_fn.reduction not in ("mean", "sum"):
        raise ValueError(
            f"loss_fn.reduction must be 'mean' or 'sum', got {loss_fn.reduction!r}"
        )
    if isinstance(loss_fn, (nn.CrossEntropyLoss, nn.NLLLoss)):
        if loss_fn.weight is not None:
            raise ValueError("loss_fn: class weights are not supported (weight must be None)")
        if getattr(loss_fn, "label_smoothing", 0.0):
            raise ValueError("loss_fn: label_smoothing must be 0 for curvature computations")
        return "ce" if isinstance(loss_fn, nn.CrossEntropyLoss) else "nll"
    return "mse"


def as_batch_list(batches: Any) -> list:
    """Materialise ``batches`` (an iterable of batches, or one LM token tensor) as a list.

    A single 2-D LongTensor ``[n, seq]`` is split into one batch per row block of 8.

    Raises:
        ValueError: If there are no batches.
    """
    if isinstance(batches, Tensor):
        if batches.dtype != torch.long or batches.ndim != 2:
            raise ValueError(
                "batches: a single tensor must be a LongTensor [n, seq] of token ids; pass "
                "classifier data as a list of (x, y) tuples"
            )
        batches = list(batches.split(8))
    elif isinstance(batches, tuple) and len(batches) == 2 and isinstance(batches[0], Tensor):
        batches = [batches]  # one (x, y) batch
    out = list(batches)
    if not out:
        raise ValueError("batches: no data (the iterable of batches is empty)")
    return out


def resolve_params(model: nn.Module, params: Any = None) -> tuple[list[str], list[Tensor]]:
    """Names and tensors of the parameters to differentiate.

    Args:
        model: The model.
        params: ``None`` (all parameters with ``requires_grad``), a list of names, a
            list of ``nn.Parameter`` of ``model``, or a ``{name: parameter}`` dict.

    Raises:
        ValueError: Unknown names, foreign parameters or an empty selection.
    """
    named = dict(model.named_parameters())
    if params is None:
        sel = [(n, p) for n, p in named.items() if p.requires_grad]
    elif isinstance(params, Mapping):
        sel = list(params.items())
    else:
        params = list(params)
        by_id = {id(p): n for n, p in named.items()}
        sel = []
        for p in params:
            if isinstance(p, str):
                if p not in named:
                    raise ValueError(f"params: {p!r} is not a parameter name of the model")
                sel.append((p, named[p]))
            elif id(p) in by_id:
                sel.append((by_id[id(p)], p))
            else:
                raise ValueError("params: a tensor in params is not a parameter of the model")
    if not sel:
        raise ValueError("params: the selection of parameters is empty")
    return [n for n, _ in sel], [p for _, p in sel]


@dataclass
class Terms:
    """Per-term model outputs of one batch.

    Attributes:
        outputs: ``[n, C]`` model outputs (logits, log-probabilities or predictions),
            attached to the autograd graph.
        targets: ``[n]`` class ids (``ce``/``nll``; ignored terms set to 0) or ``[n, C]``.
        active: ``[n]`` bool, False for padding / ``ignore_index`` terms.
    """

    outputs: Tensor
    targets: Tensor
    active: Tensor


def _call(model: nn.Module, x: Any, **kwargs: Any) -> Tensor:
    if is_hf_model(model):
        kwargs.setdefault("use_cache", False)
    return logits_of(model(x, **kwargs))


def batch_terms(
    model: nn.Module, batch: Any, kind: str, loss_fn: nn.Module, call=None, validate: bool = True
) -> Terms:
    """Run the model on one batch and flatten its outputs to terms.

    Accepted batches: a LongTensor ``[b, seq]`` of token ids (causal LM: position ``s``
    predicts token ``s + 1``), a dict with ``input_ids`` and optional ``attention_mask``
    (0 = padding; padded targets are inactive), or an ``(x, y)`` pair. For ``(x, y)``,
    outputs ``[b, C]`` pair with ``y[b]`` (classes) or ``y[b, C]`` (MSE); outputs
    ``[b, T, C]`` pair with ``y[b, T]`` (sequence classification, channel last).

    ``call(model, x, **kwargs)`` replaces the model call (used for ``functional_call``);
    ``validate=False`` skips data-dependent checks (inside ``vmap``).

    Raises:
        ValueError: On mismatched shapes or an unrecognised batch.
    """
    call = call or _call
    ignore = getattr(loss_fn, "ignore_index", -100)
    if isinstance(batch, Mapping) or (isinstance(batch, Tensor) and batch.dtype == torch.long
                                      and batch.ndim == 2):
        if isinstance(batch, Mapping):
            if "input_ids" not in batch:
                raise ValueError("batch: a dict batch needs an 'input_ids' entry")
            ids = batch["input_ids"]
            mask = batch.get("attention_mask")
        else:
            ids, mask = batch, None
        if kind == "mse":
            raise ValueError("loss_fn: token batches need nn.CrossEntropyLoss, not MSELoss")
        if ids.shape[1] < 2:
            raise ValueError(f"batch: token blocks need seq >= 2, got shape {tuple(ids.shape)}")
        kw = {"attention_mask": mask} if mask is not None else {}
        logits = call(model, ids, **kw)[:, :-1]
        tgt = ids[:, 1:]
        active = tgt != ignore
        if mask is not None:
            active = active & mask[:, 1:].bool()
        out = logits.reshape(-1, logits.shape[-1])
        tgt = tgt.reshape(-1)
        active = active.reshape(-1)
    elif isinstance(batch, (tuple, list)) and len(batch) == 2:
        x, y = batch
        out = call(model, x)
        if kind == "mse":
            if out.shape != y.shape:
                raise ValueError(
                    f"batch: MSE targets must have the output shape {tuple(out.shape)}, "
                    f"got {tuple(y.shape)}"
                )
            out = out.reshape(out.shape[0], -1)
            return Terms(out, y.reshape(out.shape).to(out.dtype), torch.ones(
                out.shape[0], dtype=torch.bool, device=out.device))
        if out.ndim == 3 and y.ndim == 2 and out.shape[:2] == y.shape:
            out, y = out.reshape(-1, out.shape[-1]), y.reshape(-1)
        if out.ndim != 2 or y.ndim != 1 or out.shape[0] != y.shape[0]:
            raise ValueError(
                f"batch: mismatched shapes, outputs {tuple(out.shape)} and targets "
                f"{tuple(y.shape)}; expected [n, C] and [n] (or [b, T, C] and [b, T])"
            )
        tgt = y
        active = tgt != ignore
    else:
        raise ValueError(
            "batch: expected a LongTensor [b, seq] of token ids, a dict with 'input_ids', "
            f"or an (x, y) pair; got {type(batch).__name__}"
        )
    tgt = torch.where(active, tgt, torch.zeros_like(tgt))
    if (validate and kind in ("ce", "nll") and tgt.numel()
            and (tgt.min() < 0 or tgt.max() >= out.shape[1])):
        raise ValueError(f"batch: class targets must lie in [0, {out.shape[1]})")
    return Terms(out, tgt, active)


def batch_terms_with_io(model: nn.Module, batch: Any, kind: str, loss_fn: nn.Module,
                        modules: Mapping[str, nn.Module], purpose: str = ""):
    """:func:`batch_terms` while capturing each module's input and output.

    Returns:
        ``(terms, inputs, outputs)``: ``inputs[name]`` is the module's first positional
        input (detached), ``outputs[name]`` its output (in the graph, for gradients with
        respect to it); modules the forward pass does not call are absent.

    Raises:
        ValueError: A module is called more than once per forward pass (named, with
            ``purpose`` appended to the message).
    """
    inputs: dict[str, Tensor] = {}
    outputs: dict[str, Tensor] = {}

    def hook(name):
        def capture(mod, args, out):
            if name in outputs:
                raise ValueError(f"modules: {name!r} is called more than once per forward "
                                 f"pass{purpose}")
            inputs[name] = args[0].detach()
            outputs[name] = out
        return capture

    handles = [m.register_forward_hook(hook(n)) for n, m in modules.items()]
    try:
        terms = batch_terms(model, batch, kind, loss_fn)
    finally:
        for h in handles:
            h.remove()
    return terms, inputs, outputs


def count_terms(batch: Any, kind: str, loss_fn: nn.Module) -> int:
    """Number of active terms of one batch, without running the model."""
    ignore = getattr(loss_fn, "ignore_index", -100)
    if isinstance(batch, Mapping):
        ids, mask = batch["input_ids"], batch.get("attention_mask")
        act = ids[:, 1:] != ignore
        if mask is not None:
            act = act & mask[:, 1:].bool()
        return int(act.sum())
    if isinstance(batch, Tensor):
        return int((batch[:, 1:] != ignore).sum())
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        y = batch[1]
        if kind == "mse":
            return int(y.shape[0])
        return int((y != ignore).sum())
    raise ValueError(
        "batch: expected a LongTensor [b, seq] of token ids, a dict with 'input_ids', "
        f"or an (x, y) pair; got {type(batch).__name__}"
    )


def term_losses(kind: str, outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-term losses ``[n]`` (summed over output dimensions for MSE)."""
    if kind == "ce":
        return nn.functional.cross_entropy(outputs, targets, reduction="none")
    if kind == "nll":
        return nn.functional.nll_loss(outputs, targets, reduction="none")
    return (outputs - targets).pow(2).sum(-1)


def term_scale(kind: str, loss_fn: nn.Module, n_total: int, n_outputs: int) -> float:
    """Weight ``w`` of every active term (see the module docstring)."""
    if loss_fn.reduction == "sum":
        return 1.0
    if n_total <= 0:
        raise ValueError("batches: no active terms (all targets are padding/ignored)")
    return 1.0 / (n_total * (n_outputs if kind == "mse" else 1))


def predictive_probs(kind: str, outputs: Tensor) -> Tensor:
    """Model's predictive distribution over classes ``[n, C]`` implied by the loss.

    ``ce``: softmax of the logits; ``nll``: ``exp`` of the log-probabilities,
    renormalised so each row sums to one.
    """
    if kind == "ce":
        return outputs.softmax(-1)
    if kind == "nll":
        p = outputs.exp()
        return p / p.sum(-1, keepdim=True)
    raise ValueError("predictive_probs: only classification losses have class probabilities")


def sample_targets(kind: str, outputs: Tensor, n_samples: int,
                   generator: torch.Generator) -> Tensor:
    """Draw ``n_samples`` targets per term from the predictive distribution.

    Returns ``[S, n]`` class ids, or ``[S, n, C]`` MSE targets ``f + eps`` with
    ``eps ~ N(0, I / 2)`` (the Gaussian whose negative log-likelihood is the summed squared
    error up to a constant).
    """
    z = outputs.detach()
    if kind == "mse":
        eps = torch.randn((n_samples, *z.shape), generator=generator, dtype=z.dtype,
                          device="cpu").to(z.device)
        return z.unsqueeze(0) + eps * (0.5**0.5)
    p = predictive_probs(kind, z).double().cpu()
    ids = torch.multinomial(p, n_samples, replacement=True, generator=generator)
    return ids.T.contiguous().to(z.device)


def flat(tensors: Sequence[Tensor]) -> Tensor:
    """Concatenate the tensors into one flat vector."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflat(vec: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Split a flat ``[..., D]`` tensor into tensors of the shapes in ``like``."""
    out, i = [], 0
    lead = vec.shape[:-1]
    for t in like:
        n = t.numel()
        out.append(vec[..., i:i + n].reshape(*lead, *t.shape))
        i += n
    return out


def check_finite(name: str, t: Tensor) -> None:
    """Raise ``ValueError`` if ``t`` has NaN or inf entries."""
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: non-finite values (NaN or inf) encountered")


def _call_functional(model: nn.Module, params: dict, x: Any, **kwargs: Any) -> Tensor:
    """Call ``model`` with substituted parameters/buffers and return its logits."""
    from torch.func import functional_call

    if is_hf_model(model):
        kwargs.setdefault("use_cache", False)
    return logits_of(functional_call(model, params, (x,), kwargs))
