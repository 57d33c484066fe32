"""Diagonal Fisher at language-model scale, and a per-task EMA accumulator.

Definitions (``N`` = number of active terms over all batches: non-padding predicted
tokens of a causal LM, or examples of a classifier; ``l_t`` = loss of term ``t``):

* ``kind="empirical"``: ``F_diag = (1 / N) * sum_i (grad_theta L_i)^2`` where
  ``L_i = sum_{t in example i} l_t(y_t)`` is the summed loss of example ``i`` (one
  sequence of an LM, one sample of a classifier) at the *data* labels. These are squared
  **per-example** gradients, never the squared batch gradient. For a classifier
  (one term per example) this is exactly the diagonal of the empirical Fisher of the
  mean loss (:func:`~workbench.curvature.products.dense_matrix` with ``kind="ef"``).
* ``kind="true"``: the same with labels ``y_t ~ softmax(f_t)`` sampled from the
  model, independently per token (teacher forcing: the context stays the real text),
  averaged over ``n_samples`` draws. Because the sampled score functions of different
  tokens are independent and have mean zero, the cross-token terms vanish in
  expectation, so this is an unbiased estimate of ``(1 / N) sum_t diag(F_t)``, the
  diagonal of the true Fisher (= GGN for softmax cross-entropy) of the mean token loss.

Computation: parameters of ``nn.Linear`` layers get their squared per-example gradients
from forward/backward hooks (one pass per chunk; no per-example gradient is formed for
2-D layer inputs), all others from ``torch.func.vmap(grad)``; ``method="loop"`` is the
slow reference.

Numerics: per-example gradients are computed in the model's dtype (bf16/fp16 allowed),
cast to float32 before squaring, and accumulated in float32. Optional clipping rescales
each per-example gradient to L2 norm at most ``clip`` (over the selected parameters)
before squaring. Examples are processed ``chunk_size`` at a time; the sum of squares
does not depend on the chunking.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn
from torch.func import grad, vmap

from . import _problem as P

FISHER_KINDS = ("empirical", "true")
NORMALIZATIONS = ("token", "example", "none")
METHODS = ("auto", "hooks", "vmap", "loop")


def _example(batch: Any, i: slice) -> Any:
    """Rows ``i`` of a batch (token tensor, dict, or (x, y) pair)."""
    if isinstance(batch, Tensor):
        return batch[i]
    if isinstance(batch, Mapping):
        return {k: v[i] for k, v in batch.items()}
    return (batch[0][i], batch[1][i])


def _n_examples(batch: Any) -> int:
    if isinstance(batch, Tensor):
        return batch.shape[0]
    if isinstance(batch, Mapping):
        return batch["input_ids"].shape[0]
    return batch[0].shape[0]


def _unsqueeze(example: Any) -> Any:
    if isinstance(example, Tensor):
        return example[None]
    if isinstance(example, Mapping):
        return {k: v[None] for k, v in example.items()}
    return (example[0][None], example[1][None])


def _sample_per_example(lkind, outputs, b, S, seed, first):
    """Labels ``[S, b, T]`` / ``[S, b, 1]`` / ``[S, b, C]`` from detached term outputs.

    Example ``i`` of the chunk (global example index ``first + i``) draws its labels
    with its own generator seeded from ``(seed, first + i)``, so the labels, and hence
    the result, do not depend on how examples are chunked.
    """
    out = outputs.reshape(b, outputs.shape[0] // b, -1)
    ys = []
    for i in range(b):
        gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + first + i)
        ys.append(P.sample_targets(lkind, out[i], S, gen))  # [S, T] or [S, T, C]
    return torch.stack(ys, 1).reshape(S, b, -1)


def _sampled_label_batches(model, batch, lkind, loss_fn, S, seed, first):
    """Run the model (no grad) on a chunk and sample its labels (see above)."""
    with torch.no_grad():
        terms = P.batch_terms(model, batch, lkind, loss_fn)
    return _sample_per_example(lkind, terms.outputs, _n_examples(batch), S, seed, first)


def _hook_modules(model, names):
    """``{module name: (module, weight name | None, bias name | None)}`` for the selected
    parameters that belong to exactly one ``nn.Linear`` (and to no other module)."""
    owners: dict[int, list] = {}
    for mname, m in model.named_modules(remove_duplicate=False):
        for pname, p in m.named_parameters(recurse=False):
            owners.setdefault(id(p), []).append((mname, m, pname))
    named = dict(model.named_parameters())
    mods: dict[str, list] = {}
    for n in names:
        own = owners.get(id(named[n]), [])
        if len(own) == 1 and isinstance(own[0][1], nn.Linear):
            mname, m, pname = own[0]
            entry = mods.setdefault(mname, [m, None, None])
            entry[1 if pname == "weight" else 2] = n
    return {k: tuple(v) for k, v in mods.items()}


def _hook_pass(model, ex, lkind, loss_fn, mods, kind, S, seed, first):
    """Squared per-example gradients of ``nn.Linear`` parameters from one forward pass.

    A linear layer's per-example weight gradient is ``sum_t g_t a_t^T`` (``a``: layer
    input, ``g``: gradient of the example's summed loss w.r.t. the layer output). For a
    2-D input (one row per example) its square is ``g^2 (a^2)^T``, computed without
    materialising per-example gradients; otherwise ``[b, out, in]`` per-example
    gradients are formed per layer. The leading dimension of every layer input must
    index the examples (as for ``vmap``).

    Returns:
        ``(Y, {param name: sum over the chunk of squared per-example gradients / S})``;
        ``Y`` are the sampled labels (``kind="true"``) or ``None``.
    """
    inputs, outputs = {}, {}

    def make(mn):
        def hook(mod, args, out):
            if mn in outputs:
                raise ValueError(f"{mn}: nn.Linear called more than once per forward pass; "
                                 "use method='vmap'")
            inputs[mn] = args[0].detach()
            outputs[mn] = out
        return hook

    handles = [m.register_forward_hook(make(mn)) for mn, (m, _, _) in mods.items()]
    try:
        terms = P.batch_terms(model, ex, lkind, loss_fn)
    finally:
        for h in handles:
            h.remove()
    b = _n_examples(ex)
    Y = None
    if kind == "true":
        Y = _sample_per_example(lkind, terms.outputs.detach(), b, S, seed, first)
    w = terms.active.to(terms.outputs.dtype)
    order = [mn for mn in mods if mn in outputs]
    res: dict[str, Tensor] = {}
    for s in range(S):
        tgt = terms.targets if Y is None else Y[s].reshape(terms.targets.shape)
        if lkind in ("ce", "nll"):
            tgt = torch.where(terms.active, tgt, torch.zeros_like(tgt))
        loss = (w * P.term_losses(lkind, terms.outputs, tgt)).sum()
        gs = torch.autograd.grad(loss, [outputs[mn] for mn in order], retain_graph=s < S - 1,
                                 allow_unused=True, materialize_grads=True)
        for mn, g in zip(order, gs):
            _, wn, bn = mods[mn]
            a, g = inputs[mn].float(), g.float()
            if a.ndim == 2 and a.shape[0] == b:
                sq_w = (g * g).T @ (a * a) if wn else None
                sq_b = (g * g).sum(0) if bn else None
            else:
                a = a.reshape(b, -1, a.shape[-1])
                g = g.reshape(b, -1, g.shape[-1])
                sq_w = torch.einsum("bto,bti->boi", g, a).pow(2).sum(0) if wn else None
                sq_b = g.sum(1).pow(2).sum(0) if bn else None
            for n, sq in ((wn, sq_w), (bn, sq_b)):
                if n is not None:
                    P.check_finite(f"gradient of {n}", sq)
                    res[n] = res[n] + sq / S if n in res else sq / S
    return Y, res


def _example_loss_fn(model, names, lkind, loss_fn):
    """``f(params, example, targets_or_None) -> summed loss of one example``."""
    buffers = dict(model.named_buffers())
    others = {n: p for n, p in model.named_parameters() if n not in set(names)}

    def f(params, example, targets):
        def call(m, x, **kw):
            return P._call_functional(m, {**buffers, **others, **params}, x, **kw)

        ex = _unsqueeze(example)
        terms = P.batch_terms(model, ex, lkind, loss_fn, call=call, validate=False)
        tgt = terms.targets if targets is None else targets.reshape(terms.targets.shape)
        if lkind in ("ce", "nll"):
            tgt = torch.where(terms.active, tgt, torch.zeros_like(tgt))
        w = terms.active.to(terms.outputs.dtype)
        return (w * P.term_losses(lkind, terms.outputs, tgt)).sum()

    return f


def _example_outputs_fn(model, names, lkind, loss_fn):
    """``f(params, example) -> [T, C]`` outputs of one example's terms."""
    buffers = dict(model.named_buffers())
    others = {n: p for n, p in model.named_parameters() if n not in set(names)}

    def f(params, example):
        def call(m, x, **kw):
            return P._call_functional(m, {**buffers, **others, **params}, x, **kw)

        ex = _unsqueeze(example)
        if isinstance(ex, tuple):  # (x, y): outputs only, one row per term
            out = call(model, ex[0])
            return out.reshape(-1, out.shape[-1]) if lkind != "mse" else out.reshape(1, -1)
        return P.batch_terms(model, ex, lkind, loss_fn, call=call, validate=False).outputs

    return f


def diagonal_fisher(
    model: nn.Module,
    batches: Any,
    *,
    kind: str = "empirical",
    params: Any = None,
    loss_fn: nn.Module | None = None,
    n_samples: int = 1,
    seed: int = 0,
    chunk_size: int | None = 8,
    clip: float | None = None,
    normalize: str = "token",
    method: str = "auto",
    storage_dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> dict[str, Tensor]:
    """Diagonal empirical or true Fisher from squared per-example gradients.

    Args:
        model: A causal LM (token batches) or any classifier/regressor (``(x, y)``).
        batches: List of LongTensor ``[b, seq]`` token blocks, dicts with
            ``input_ids``/``attention_mask`` (padding masked out), or ``(x, y)`` pairs;
            a single ``[n, seq]`` LongTensor is accepted too.
        kind: ``"empirical"`` (data labels) or ``"true"`` (labels sampled from the
            model's predictive distribution, see the module docstring).
        params: Parameters to include (names, parameters or dict); default all trainable.
        loss_fn: ``nn.CrossEntropyLoss`` (default), ``nn.NLLLoss`` or ``nn.MSELoss``;
            its ``ignore_index`` marks inactive targets. Its reduction is irrelevant:
            normalisation is set by ``normalize``.
        n_samples: Sampled labels per token for ``kind="true"``.
        seed: Seed of the sampled labels.
        chunk_size: Examples per vectorised per-example-gradient call (memory knob;
            ``None`` = whole batch). The result does not depend on it.
        clip: If set, each per-example gradient is rescaled to L2 norm <= ``clip``.
        normalize: ``"token"`` (divide by active terms ``N``), ``"example"`` (by number
            of examples) or ``"none"`` (plain sum of squared per-example gradients).
        method: ``"auto"``: parameters of ``nn.Linear`` layers by forward/backward
            hooks (one pass per chunk, see :func:`_hook_pass`), all others by
            ``"vmap"`` (``torch.func.vmap(grad)``); ``"hooks"``: only the hook path
            (every parameter must belong to one ``nn.Linear``); ``"loop"``: one
            backward pass per example (slow reference). With ``clip`` the hooks are
            not used (the clip needs each per-example gradient's full norm). Dict
            batches with an ``attention_mask`` take the loop instead of ``vmap``
            (HF masking is not vmap-able).
        storage_dtype: dtype of the returned tensors (``torch.float16`` halves memory).
        device: Where the result lives (``"cpu"`` offloads from the GPU); default the
            parameters' device.

    Returns:
        ``{param name: tensor}`` with the parameter's shape, non-negative.

    Raises:
        ValueError: Bad ``kind``/``normalize``/``method``/``n_samples``/``clip``, empty
            data, unsupported loss, mismatched shapes, or NaN/inf gradients.
    """
    if kind not in FISHER_KINDS:
        raise ValueError(f"kind must be one of {FISHER_KINDS}, got {kind!r}")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if int(n_samples) < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if clip is not None and not clip > 0:
        raise ValueError(f"clip must be a positive float or None, got {clip}")
    if chunk_size is not None and int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
    loss_fn = nn.CrossEntropyLoss() if loss_fn is None else loss_fn
    lkind = P.loss_kind(loss_fn)
    batches = P.as_batch_list(batches)
    names, plist = P.resolve_params(model, params)
    acc_device = plist[0].device
    acc = {n: torch.zeros(p.shape, dtype=torch.float32, device=acc_device)
           for n, p in zip(names, plist)}
    n_terms = n_examples = 0
    S = int(n_samples) if kind == "true" else 1
    mods = {}
    if method in ("auto", "hooks") and clip is None:
        mods = _hook_modules(model, names)
    hooked = {n for _, wn, bn in mods.values() for n in (wn, bn) if n is not None}
    rest = [n for n in names if n not in hooked]
    if method == "hooks" and (clip is not None or rest):
        raise ValueError("method='hooks' needs every selected parameter to belong to one "
                         "nn.Linear and clip=None; use method='auto' or 'vmap'")
    named = dict(zip(names, plist))
    f = _example_loss_fn(model, rest, lkind, loss_fn)
    detached = {n: named[n].detach() for n in rest}
    per_ex = vmap(grad(f), in_dims=(None, 0, 0))
    for batch in batches:
        b = _n_examples(batch)
        _check_batch(batch)
        # HF attention masks use data-dependent control flow that vmap cannot trace:
        # padded dict batches take the per-example loop (same values, slower).
        loop_batch = isinstance(batch, Mapping) and batch.get("attention_mask") is not None
        step = b if chunk_size is None else int(chunk_size)
        for start in range(0, b, step):
            ex = _example(batch, slice(start, start + step))
            Y = None
            if mods:
                Y, sq = _hook_pass(model, ex, lkind, loss_fn, mods, kind, S, seed,
                                   n_examples + start)
                for n, t in sq.items():
                    acc[n] += t
            elif kind == "true":
                Y = _sampled_label_batches(model, ex, lkind, loss_fn, S, seed,
                                           n_examples + start)
            if not rest:
                continue
            for s in range(S):
                targets = Y[s] if kind == "true" else None
                if method in ("auto", "vmap") and not loop_batch:
                    if targets is None:
                        g = vmap(grad(f), in_dims=(None, 0, None))(detached, ex, None)
                    else:
                        g = per_ex(detached, ex, targets)
                else:
                    g = _loop_grads(f, detached, ex, targets)
                _accumulate(acc, g, rest, clip, scale=1.0 / S)
        n_terms += P.count_terms(batch, lkind, loss_fn)
        n_examples += b
    if n_terms == 0:
        raise ValueError("batches: no active terms (all targets are padding/ignored)")
    denom = {"token": n_terms, "example": n_examples, "none": 1}[normalize]
    out_device = torch.device(device) if device is not None else acc_device
    return {n: (a / denom).to(device=out_device, dtype=storage_dtype) for n, a in acc.items()}


def _check_batch(batch: Any) -> None:
    """Leading-dimension checks that the per-example split relies on."""
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


def _loop_grads(f, params, ex, targets):
    """Per-example gradients with one ordinary backward pass each (reference path)."""
    b = _n_examples(ex)
    leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    rows: dict[str, list[Tensor]] = {n: [] for n in params}
    for i in range(b):
        e = _example(ex, i)
        t = None if targets is None else targets[i]
        loss = f(leaves, e, t)
        gs = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True,
                                 materialize_grads=True)
        for n, g in zip(leaves, gs):
            rows[n].append(g)
    return {n: torch.stack(r) for n, r in rows.items()}


def _accumulate(acc, g, names, clip, scale):
    g32 = {n: g[n].float() for n in names}
    for n, t in g32.items():
        P.check_finite(f"gradient of {n}", t)
    if clip is not None:
        norms = torch.sqrt(sum(t.pow(2).flatten(1).sum(1) for t in g32.values()))
        factor = (clip / norms.clamp_min(1e-30)).clamp(max=1.0)
    for n, t in g32.items():
        if clip is not None:
            t = t * factor.view(-1, *([1] * (t.ndim - 1)))
        acc[n] += t.pow(2).sum(0) * scale


class FisherAccumulator:
    """Running EMA of diagonal Fishers, one accumulator per task name.

    ``update`` computes (or takes) a diagonal Fisher ``x_t`` and sets
    ``m_t = decay * m_{t-1} + (1 - decay) * x_t`` with ``m_0 = 0``; :meth:`get` returns
    the bias-corrected ``m_t / (1 - decay^t)`` (which equals ``x`` exactly when every
    ``x_t = x``, up to float rounding) or the raw ``m_t``.

    Args:
        decay: EMA decay in ``[0, 1)``.
        storage_dtype: dtype of the stored state (``torch.float16`` halves memory; the
            update itself is computed in float32).
        device: Where the state lives (``"cpu"`` offloads from a GPU).
        **fisher_kwargs: Defaults passed to :func:`diagonal_fisher` by :meth:`update`.
    """

    def __init__(self, decay: float = 0.99, *, storage_dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", **fisher_kwargs: Any):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must lie in [0, 1), got {decay}")
        self.decay = float(decay)
        self.storage_dtype = storage_dtype
        self.device = torch.device(device)
        self.fisher_kwargs = fisher_kwargs
        self._state: dict[str, dict[str, Tensor]] = {}
        self._steps: dict[str, int] = {}

    @property
    def tasks(self) -> list[str]:
        """Task names seen so far."""
        return sorted(self._state)

    def steps(self, task: str = "default") -> int:
        """Number of updates of ``task``."""
        return self._steps.get(task, 0)

    def update(self, model: nn.Module, batches: Any, task: str = "default",
               **kwargs: Any) -> dict[str, Tensor]:
        """Compute the diagonal Fisher on ``batches`` and fold it into ``task``'s EMA."""
        fisher = diagonal_fisher(model, batches, **{**self.fisher_kwargs, **kwargs})
        self.update_from(fisher, task)
        return fisher

    def update_from(self, fisher: Mapping[str, Tensor], task: str = "default") -> None:
        """Fold an already computed ``{name: tensor}`` into ``task``'s EMA."""
        state = self._state.setdefault(task, {})
        if state and set(state) != set(fisher):
            raise ValueError(f"fisher: parameter names differ from earlier updates of {task!r}")
        for n, x in fisher.items():
            x = x.detach().to(self.device, torch.float32)
            prev = state[n].float() if n in state else torch.zeros_like(x)
            state[n] = (self.decay * prev + (1.0 - self.decay) * x).to(self.storage_dtype)
        self._steps[task] = self._steps.get(task, 0) + 1

    def get(self, task: str = "default", *, bias_corrected: bool = True) -> dict[str, Tensor]:
        """The EMA of ``task`` (bias-corrected by ``1 - decay^t`` unless asked not to).

        Raises:
            ValueError: If ``task`` was never updated (the message lists known tasks).
        """
        if task not in self._state:
            raise ValueError(f"task {task!r} has no updates; known tasks: {self.tasks}")
        corr = 1.0 - self.decay ** self._steps[task] if bias_corrected else 1.0
        return {n: (m.float() / corr).to(self.storage_dtype) for n, m in self._state[task].items()}
