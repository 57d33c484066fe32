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

Besides terms, this module holds the plumbing every per-example computation shares:

* per-example slicing (:func:`n_examples`, :func:`example_rows`, :func:`add_example_dim`,
  :func:`check_example_batch`, :func:`probe_example`): an *example* is one row of a batch
  (one sequence of a causal LM, one sample of a classifier) and owns its terms;
* **the** label-sampling rule of the true Fisher (:func:`sample_labels`), used by
  :func:`~workbench.curvature.diagonal.diagonal_fisher`,
  :func:`~workbench.curvature.groups.collect_group_fisher` and
  :class:`~workbench.curvature.kfac.KFAC`: the same ``seed`` gives the same labels in all
  three, however the examples are batched or chunked;
* the functional model calls per example (:func:`example_loss_fn`,
  :func:`example_outputs_fn`) that ``torch.func.vmap`` differentiates.

``loss_kind`` (``"ce"``, ``"nll"`` or ``"mse"``, from :func:`loss_kind_of`) names the loss
everywhere below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from workbench.core.models import is_hf_model, logits_of

SUPPORTED_LOSSES = (nn.CrossEntropyLoss, nn.NLLLoss, nn.MSELoss)
_LOSS_NAMES = "nn.CrossEntropyLoss, nn.NLLLoss, nn.MSELoss"


def loss_kind_of(loss_fn: Any) -> str:
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
    model: nn.Module, batch: Any, loss_kind: str, loss_fn: nn.Module, call=None,
    validate: bool = True,
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
        if loss_kind == "mse":
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
        if loss_kind == "mse":
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
    if (validate and loss_kind in ("ce", "nll") and tgt.numel()
            and (tgt.min() < 0 or tgt.max() >= out.shape[1])):
        raise ValueError(f"batch: class targets must lie in [0, {out.shape[1]})")
    return Terms(out, tgt, active)


def batch_terms_with_io(model: nn.Module, batch: Any, loss_kind: str, loss_fn: nn.Module,
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
        terms = batch_terms(model, batch, loss_kind, loss_fn)
    finally:
        for h in handles:
            h.remove()
    return terms, inputs, outputs


def count_terms(batch: Any, loss_kind: str, loss_fn: nn.Module) -> int:
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
        if loss_kind == "mse":
            return int(y.shape[0])
        return int((y != ignore).sum())
    raise ValueError(
        "batch: expected a LongTensor [b, seq] of token ids, a dict with 'input_ids', "
        f"or an (x, y) pair; got {type(batch).__name__}"
    )


def term_losses(loss_kind: str, outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-term losses ``[n]`` (summed over output dimensions for MSE)."""
    if loss_kind == "ce":
        return nn.functional.cross_entropy(outputs, targets, reduction="none")
    if loss_kind == "nll":
        return nn.functional.nll_loss(outputs, targets, reduction="none")
    return (outputs - targets).pow(2).sum(-1)


def term_scale(loss_kind: str, loss_fn: nn.Module, n_total: int, n_outputs: int) -> float:
    """Weight ``w`` of every active term (see the module docstring)."""
    if loss_fn.reduction == "sum":
        return 1.0
    if n_total <= 0:
        raise ValueError("batches: no active terms (all targets are padding/ignored)")
    return 1.0 / (n_total * (n_outputs if loss_kind == "mse" else 1))


def predictive_probs(loss_kind: str, outputs: Tensor) -> Tensor:
    """Model's predictive distribution over classes ``[n, C]`` implied by the loss.

    ``ce``: softmax of the logits; ``nll``: ``exp`` of the log-probabilities,
    renormalised so each row sums to one.
    """
    if loss_kind == "ce":
        return outputs.softmax(-1)
    if loss_kind == "nll":
        p = outputs.exp()
        return p / p.sum(-1, keepdim=True)
    raise ValueError("predictive_probs: only classification losses have class probabilities")


def sample_targets(loss_kind: str, outputs: Tensor, n_samples: int,
                   generator: torch.Generator) -> Tensor:
    """Draw ``n_samples`` targets per term from the predictive distribution.

    Returns ``[S, n]`` class ids, or ``[S, n, C]`` MSE targets ``f + eps`` with
    ``eps ~ N(0, I / 2)`` (the Gaussian whose negative log-likelihood is the summed squared
    error up to a constant).
    """
    z = outputs.detach()
    if loss_kind == "mse":
        eps = torch.randn((n_samples, *z.shape), generator=generator, dtype=z.dtype,
                          device="cpu").to(z.device)
        return z.unsqueeze(0) + eps * (0.5**0.5)
    p = predictive_probs(loss_kind, z).double().cpu()
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
    if is_hf_model(model):
        kwargs.setdefault("use_cache", False)
    return logits_of(functional_call(model, params, (x,), kwargs))


# ----------------------------------------------------------------------------- examples
def n_examples(batch: Any) -> int:
    """Number of examples (rows) of a batch: token tensor, dict with ``input_ids``, or
    ``(x, y)`` pair."""
    if isinstance(batch, Tensor):
        return batch.shape[0]
    if isinstance(batch, Mapping):
        return batch["input_ids"].shape[0]
    return batch[0].shape[0]


def map_batch(batch: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """``fn`` applied to every tensor of a batch (token tensor, dict, or ``(x, y)`` pair),
    same format."""
    if isinstance(batch, Tensor):
        return fn(batch)
    if isinstance(batch, Mapping):
        return {k: fn(v) for k, v in batch.items()}
    return (fn(batch[0]), fn(batch[1]))


def example_rows(batch: Any, rows: slice | int) -> Any:
    """Rows ``rows`` of a batch (token tensor, dict, or ``(x, y)`` pair), same format."""
    return map_batch(batch, lambda t: t[rows])


def add_example_dim(example: Any) -> Any:
    """A single example (one row, without its leading dimension) as a batch of one."""
    return map_batch(example, lambda t: t[None])


def probe_example(batch: Any) -> Any:
    """The first example of ``batch`` (first 2 tokens for token batches): a cheap pass that
    reveals which modules a forward pass calls more than once."""
    if isinstance(batch, Tensor):
        return batch[:1, :2]
    if isinstance(batch, Mapping):
        return {k: v[:1, :2] for k, v in batch.items()}
    return example_rows(batch, slice(0, 1))


def check_example_batch(batch: Any) -> None:
    """Leading-dimension checks that the per-example split relies on.

    Raises:
        ValueError: A dict without ``input_ids`` or with a mismatched ``attention_mask``,
            an ``(x, y)`` pair whose batch dimensions differ, or an unrecognised batch.
    """
    if isinstance(batch, Mapping):
        if "input_ids" not in batch:
            raise ValueError("batch: a dict batch needs an 'input_ids' entry")
        mask = batch.get("attention_mask")
        if mask is not None and mask.shape != batch["input_ids"].shape:
            raise ValueError(f"batch: mismatched shapes, attention_mask {tuple(mask.shape)} "
                             f"vs input_ids {tuple(batch['input_ids'].shape)}")
    elif isinstance(batch, (tuple, list)) and len(batch) == 2:
        x, y = batch
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"batch: mismatched shapes, inputs {tuple(x.shape)} and targets "
                             f"{tuple(y.shape)} differ in the batch dimension")
    elif not isinstance(batch, Tensor):
        raise ValueError("batch: expected a LongTensor [b, seq] of token ids, a dict with "
                         f"'input_ids', or an (x, y) pair; got {type(batch).__name__}")


# ----------------------------------------------------------------------------- labels
#: Stride between the label seeds of two runs: example ``i`` of a run with ``seed`` draws
#: from a generator seeded ``seed * LABEL_SEED_STRIDE + i`` (see :func:`sample_labels`).
LABEL_SEED_STRIDE = 1_000_003


def label_seed(seed: int, example: int) -> int:
    """Seed of the generator of global example ``example`` (see :func:`sample_labels`)."""
    return int(seed) * LABEL_SEED_STRIDE + int(example)


def sample_labels(loss_kind: str, outputs: Tensor, n_examples: int, n_samples: int,
                  seed: int, first: int) -> Tensor:
    """The label-sampling rule of the true Fisher: one generator per example.

    Global example ``first + i`` (its index over all batches of the call, counting every
    row of every batch in order) draws its ``n_samples`` labels per term from a
    ``torch.Generator`` seeded ``seed * 1_000_003 + first + i``
    (:data:`LABEL_SEED_STRIDE`), with :func:`sample_targets` on its own terms' outputs.
    So the labels depend on the seed, the example's position in the data and the model,
    never on how the examples are split into batches or chunks, and
    :func:`~workbench.curvature.diagonal.diagonal_fisher`,
    :func:`~workbench.curvature.groups.collect_group_fisher` and
    :class:`~workbench.curvature.kfac.KFAC` draw the same labels for the same ``seed``.
    (The choice of one generator per example is ours; it keeps chunking a pure memory
    knob.)

    Args:
        loss_kind: ``"ce"``, ``"nll"`` or ``"mse"``.
        outputs: ``[n, C]`` term outputs of ``n_examples`` consecutive examples, each with
            ``n / n_examples`` terms (padding terms included; they are masked later).
        n_examples: Number of examples ``b`` the terms belong to.
        n_samples: Labels per term ``S``.
        seed: The seed of the run.
        first: Global index of the first of these examples.

    Returns:
        ``[S, b, T]`` class ids (``T`` terms per example) or ``[S, b, T * C]`` MSE targets;
        ``Y[s].reshape(targets.shape)`` is draw ``s`` in the layout of the terms.
    """
    z = outputs.detach()
    out = z.reshape(n_examples, z.shape[0] // n_examples, -1)
    ys = []
    for i in range(n_examples):
        gen = torch.Generator().manual_seed(label_seed(seed, first + i))
        ys.append(sample_targets(loss_kind, out[i], n_samples, gen))  # [S, T] or [S, T, C]
    return torch.stack(ys, 1).reshape(n_samples, n_examples, -1)


# ----------------------------------------------------------------------------- functional
def _functional(model: nn.Module, names: Sequence[str]):
    """``call(m, x, **kw)`` substituting ``params`` for the parameters ``names`` (others
    and buffers detached), as a factory ``params -> call``."""
    buffers = dict(model.named_buffers())
    others = {n: p.detach() for n, p in model.named_parameters() if n not in set(names)}

    def bind(params):
        def call(m, x, **kw):
            return _call_functional(m, {**buffers, **others, **params}, x, **kw)

        return call

    return bind


def example_loss_fn(model: nn.Module, names: Sequence[str], loss_kind: str,
                    loss_fn: nn.Module):
    """``f(params, example, targets_or_None) -> summed loss of one example``.

    ``params`` is ``{name: tensor}`` for ``names``; ``example`` one row of a batch without
    its leading dimension (as ``vmap`` passes it); ``targets`` ``None`` (the data labels)
    or the example's sampled labels (a row of :func:`sample_labels`' draw).
    """
    bind = _functional(model, names)

    def f(params, example, targets):
        ex = add_example_dim(example)
        terms = batch_terms(model, ex, loss_kind, loss_fn, call=bind(params), validate=False)
        return active_loss(loss_kind, terms, targets)

    return f


def active_loss(loss_kind: str, terms: "Terms", targets: Tensor | None = None) -> Tensor:
    """``sum_t active_t * l_t(y_t)``: the summed (unweighted) loss of the active terms, at
    the data labels (``targets=None``) or at ``targets`` (reshaped to the terms' targets;
    inactive class targets set to 0 so they index a valid class)."""
    tgt = terms.targets if targets is None else targets.reshape(terms.targets.shape)
    if loss_kind in ("ce", "nll"):
        tgt = torch.where(terms.active, tgt, torch.zeros_like(tgt))
    w = terms.active.to(terms.outputs.dtype)
    return (w * term_losses(loss_kind, terms.outputs, tgt)).sum()


def example_outputs_fn(model: nn.Module, names: Sequence[str], loss_kind: str,
                       loss_fn: nn.Module):
    """``f(params, example) -> [T, C]`` outputs of one example's terms (``[1, C]`` for
    MSE), the function whose Jacobian :func:`~workbench.curvature.per_term_jacobian`
    takes."""
    bind = _functional(model, names)

    def f(params, example):
        call = bind(params)
        ex = add_example_dim(example)
        if isinstance(ex, tuple):  # (x, y): outputs only, one row per term
            out = call(model, ex[0])
            return out.reshape(-1, out.shape[-1]) if loss_kind != "mse" else out.reshape(1, -1)
        return batch_terms(model, ex, loss_kind, loss_fn, call=call, validate=False).outputs

    return f
