"""Diagonal Fisher at language-model scale, and a per-task EMA accumulator.

Definitions (``N`` = number of active terms over all batches: non-padding predicted
tokens of a causal LM, or examples of a classifier; ``l_t`` = loss of term ``t``):

* ``kind="empirical"``: ``F_diag = (1 / N) * sum_i (grad_theta L_i)^2`` where
  ``L_i = sum_{t in example i} l_t(y_t)`` is the summed loss of example ``i`` (one
  sequence of an LM, one sample of a classifier) at the *data* labels. These are squared
  **per-example** gradients, never the squared batch gradient. For a classifier
  (one term per example) this is exactly the diagonal of the empirical Fisher of the
  mean loss (:func:`~workbench.curvature.products.dense_matrix` with ``"empirical_fisher"``).
* ``kind="true"``: the same with labels ``y_t ~ softmax(f_t)`` sampled from the
  model, independently per token (teacher forcing: the context stays the real text),
  averaged over ``n_samples`` draws. Because the sampled score functions of different
  tokens are independent and have mean zero, the cross-token terms vanish in
  expectation, so this is an unbiased estimate of ``(1 / N) sum_t diag(F_t)``, the
  diagonal of the true Fisher (= GGN for softmax cross-entropy) of the mean token loss.

``granularity="token"`` (causal LMs; hook path only) squares per-*position*
contributions instead: ``F_diag = (1 / N) sum_i sum_p (G_{i,p})^2`` where
``grad_theta L_i = sum_p G_{i,p}`` splits example ``i``'s gradient by the position ``p``
at which the parameter is used (``g_p a_p^T`` for a linear weight, ``onehot(id_p) g_p^T``
for an embedding, ``g_p * xhat_p`` for a norm weight; a tied embedding / LM head weight
sums both uses at ``p`` before squaring). This drops cross-position terms: it equals the
squared gradient of the single token loss ``l_p`` exactly for parameters after the last
attention layer (LM head, final norm, last MLP), and approximates it for layers below
attention, whose use at ``p`` also feeds later tokens (see :mod:`._persample`). It is the
cheapest estimator (no per-example gradient is formed). The default
``granularity="sequence"`` is the per-example definition above.

Computation: parameters of ``nn.Linear``, ``nn.Embedding`` and LayerNorm/RMSNorm layers
(also tied embedding / LM head weights) get their squared per-sample gradients from
forward hooks and one backward pass to the module outputs per chunk (no parameter
gradient is formed; per-example gradients are formed only for ``granularity="sequence"``
and 3-D linear inputs, one ``[out, in]`` at a time for large layers); all other
parameters use ``torch.func.vmap(grad)``; ``method="loop"`` is the slow reference.

Numerics: per-example gradients are computed in the model's dtype (bf16/fp16 allowed),
cast to float32 (float64 for float64 models) before squaring, and accumulated in that
dtype. Optional clipping rescales each per-example gradient to L2 norm at most ``clip``
(over the selected parameters) before squaring. Examples are processed ``chunk_size`` at
a time; the sum of squares does not depend on the chunking.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn
from torch.func import grad, vmap

from workbench.curvature import _persample as PS
from workbench.curvature import _problem as P
from workbench.curvature.registry import FISHER_TYPES, check_fisher_type

FISHER_KINDS = FISHER_TYPES
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


def _hook_pass(model, ex, lkind, loss_fn, plan, kind, S, seed, first, granularity, acc):
    """Add the squared per-sample gradients of the hooked parameters of one chunk to ``acc``.

    One forward pass records the inputs/outputs of the planned modules; per label
    draw, one backward pass returns the gradients w.r.t. those outputs (no parameter
    gradient is formed), from which :func:`._persample.add_squared_grads` adds
    ``1 / S`` times the sums of squared per-example (``granularity="sequence"``) or
    per-position (``"token"``) gradients to ``acc`` in place. The leading dimension of
    every module input must index the examples (as for ``vmap``).

    Returns:
        The sampled labels ``Y`` (``kind="true"``) or ``None``.
    """
    with PS.Recorder(plan) as rec:
        terms = P.batch_terms(model, ex, lkind, loss_fn)
    b = _n_examples(ex)
    Y = None
    if kind == "true":
        Y = _sample_per_example(lkind, terms.outputs.detach(), b, S, seed, first)
    w = terms.active.to(terms.outputs.dtype)
    order = list(rec.outputs)
    for s in range(S):
        tgt = terms.targets if Y is None else Y[s].reshape(terms.targets.shape)
        if lkind in ("ce", "nll"):
            tgt = torch.where(terms.active, tgt, torch.zeros_like(tgt))
        loss = (w * P.term_losses(lkind, terms.outputs, tgt)).sum()
        gs = torch.autograd.grad(loss, [rec.outputs[mn] for mn in order],
                                 retain_graph=s < S - 1, allow_unused=True,
                                 materialize_grads=True)
        PS.add_squared_grads(acc, plan, rec, dict(zip(order, gs)), b, granularity, 1.0 / S)
    return Y


def _example_loss_fn(model, names, lkind, loss_fn):
    """``f(params, example, targets_or_None) -> summed loss of one example``."""
    buffers = dict(model.named_buffers())
    others = {n: p.detach() for n, p in model.named_parameters() if n not in set(names)}

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
    others = {n: p.detach() for n, p in model.named_parameters() if n not in set(names)}

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
    granularity: str = "sequence",
    storage_dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> dict[str, Tensor]:
    """Diagonal empirical or true Fisher from squared per-example (or per-token) gradients.

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
        method: ``"auto"``: parameters of ``nn.Linear``, ``nn.Embedding`` and
            LayerNorm/RMSNorm layers (tied weights included) by forward/backward hooks
            (one forward and one backward pass per chunk, see :func:`_hook_pass`), all
            others by ``"vmap"`` (``torch.func.vmap(grad)``); ``"hooks"``: only the
            hook path (every parameter must be hookable); ``"loop"``: one backward pass
            per example (slow reference). With ``clip`` the hooks are not used (the
            clip needs each per-example gradient's full norm). Dict batches with an
            ``attention_mask`` take the loop instead of ``vmap`` (HF masking is not
            vmap-able).
        granularity: What is squared (see the module docstring). ``"sequence"``
            (default): the gradient of each example's summed loss (one sequence of an
            LM). ``"token"``: each position's contribution to it (for an LM, the usual
            per-token estimator; hook path only, so every selected parameter must be
            hookable, and no ``clip``). Identical for examples with one position
            (classifiers with 2-D layer inputs).
        storage_dtype: dtype of the returned tensors (``torch.float16`` halves memory;
            a ``RuntimeWarning`` is raised when more than 1 % of the entries underflow
            to zero in it; float16's smallest subnormal is ``6e-8``).
        device: Where the result lives (``"cpu"`` offloads from the GPU); default the
            parameters' device.

    Returns:
        ``{param name: tensor}`` with the parameter's shape, non-negative.

    Raises:
        ValueError: Bad ``kind``/``normalize``/``method``/``n_samples``/``clip``, empty
            data, unsupported loss, mismatched shapes, or NaN/inf gradients.
    """
    kind = check_fisher_type(kind, "kind").value
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if granularity not in PS.GRANULARITIES:
        raise ValueError(f"granularity must be one of {PS.GRANULARITIES}, got {granularity!r}")
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
    acc = {n: torch.zeros(p.shape, dtype=torch.promote_types(p.dtype, torch.float32),
                          device=acc_device)
           for n, p in zip(names, plist)}
    n_terms = n_examples = 0
    S = int(n_samples) if kind == "true" else 1
    plan = PS.Plan()
    if method in ("auto", "hooks") and clip is None:
        plan = PS.make_plan(model, names, granularity)
        if method == "auto" and plan.uses:  # modules called twice per pass: vmap instead
            plan = PS.drop_reused(plan, model, _probe_example(batches[0]), lkind, loss_fn)
    rest = [n for n in names if n not in plan.uses]
    if method == "hooks" and (clip is not None or rest):
        raise ValueError("method='hooks' needs every selected parameter to belong to "
                         "nn.Linear / nn.Embedding / norm layers and clip=None; not hookable: "
                         f"{rest[:5]}; use method='auto' or 'vmap'")
    if granularity == "token" and (clip is not None or rest or method in ("vmap", "loop")):
        raise ValueError("granularity='token' needs method='auto' or 'hooks', clip=None and "
                         "hookable parameters (nn.Linear / nn.Embedding / norm layers, tied "
                         f"embedding + linear); not hookable: {rest[:5]}; use "
                         "granularity='sequence'")
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
            if plan.uses:
                Y = _hook_pass(model, ex, lkind, loss_fn, plan, kind, S, seed,
                               n_examples + start, granularity, acc)
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
    for n in plan.uses:  # NaN/inf survive the sums of squares: checked once, at the end
        if not torch.isfinite(acc[n].sum()):
            P.check_finite(f"gradient of {n}", acc[n])
    denom = {"token": n_terms, "example": n_examples, "none": 1}[normalize]
    out_device = torch.device(device) if device is not None else acc_device
    ref = {n: a.div_(denom) for n, a in acc.items()}
    out = {n: a.to(device=out_device, dtype=storage_dtype) for n, a in ref.items()}
    if _is_low_precision(storage_dtype):
        warn_underflow(underflow_share(ref, {n: o.to(acc_device) for n, o in out.items()}),
                       storage_dtype, "diagonal_fisher")
    return out


def _probe_example(batch: Any) -> Any:
    """The first example of ``batch`` (first 2 tokens for token batches): a cheap pass that
    reveals which modules a forward pass calls more than once."""
    if isinstance(batch, Tensor):
        return batch[:1, :2]
    if isinstance(batch, Mapping):
        return {k: v[:1, :2] for k, v in batch.items()}
    return _example(batch, slice(0, 1))


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
    g32 = {n: g[n].to(acc[n].dtype) for n in names}
    for n, t in g32.items():
        P.check_finite(f"gradient of {n}", t)
    if clip is not None:
        norms = torch.sqrt(sum(t.pow(2).flatten(1).sum(1) for t in g32.values()))
        factor = (clip / norms.clamp_min(1e-30)).clamp(max=1.0)
    for n, t in g32.items():
        if clip is not None:
            t = t * factor.view(-1, *([1] * (t.ndim - 1)))
        acc[n] += t.pow(2).sum(0) * scale


UNDERFLOW_WARN_SHARE = 0.01  # warn when more than 1 % of the entries underflow to zero


def underflow_share(reference: Mapping[str, Tensor], stored: Mapping[str, Tensor]) -> float:
    """Share of all entries that are non-zero in ``reference`` but zero in ``stored``.

    Args:
        reference: ``{name: tensor}`` in the computation dtype (float32/float64).
        stored: The same tensors after the cast to the storage dtype (same names, shapes).

    Returns:
        ``#{reference != 0 and stored == 0} / #entries`` over all tensors (0.0 if empty).
    """
    lost = total = 0
    for n, r in reference.items():
        lost += int(((r != 0) & (stored[n] == 0)).sum())
        total += r.numel()
    return lost / total if total else 0.0


def warn_underflow(share: float, dtype: torch.dtype, where: str) -> None:
    """``RuntimeWarning`` when ``share`` (see :func:`underflow_share`) exceeds 1 %."""
    if share > UNDERFLOW_WARN_SHARE:
        import warnings

        warnings.warn(f"{where}: {share:.2%} of the entries underflow to zero in {dtype} "
                      f"storage (more than {UNDERFLOW_WARN_SHARE:.0%}); use "
                      "storage_dtype=torch.float32 or torch.bfloat16", RuntimeWarning,
                      stacklevel=3)


def _is_low_precision(dtype: torch.dtype) -> bool:
    return dtype.is_floating_point and torch.finfo(dtype).bits < 32


def _pow2_scale(values: Tensor, dtype: torch.dtype) -> float:
    """Power of two ``s`` such that ``max|values| / s`` lies in ``[2^(e-1), 2^e)`` with
    ``2^e = finfo(dtype).max / 4`` (rounded down to a power of two): the largest entry
    sits two binades below the top of the storage range. ``1.0`` for float32/float64
    storage, for an all-zero tensor, or for non-finite values."""
    if not _is_low_precision(dtype):
        return 1.0
    top = float(values.abs().max()) if values.numel() else 0.0
    if top == 0.0 or top != top or top == float("inf"):
        return 1.0
    import math

    target = math.floor(math.log2(torch.finfo(dtype).max)) - 1  # fp16: 2^14, bf16: 2^126
    return 2.0 ** (math.frexp(top)[1] - target)


class FisherAccumulator:
    """Running EMA of diagonal (or group) Fishers, one accumulator per task name.

    ``update`` computes (or takes) a diagonal Fisher ``x_t`` (``reduction="diagonal"``,
    :func:`diagonal_fisher`) or a group Fisher (``reduction="group"``,
    :func:`~workbench.curvature.groups.collect_group_fisher`: the state is then
    ``O(groups)``, never a per-parameter tensor) and defines the EMA
    ``m_t = decay * m_{t-1} + (1 - decay) * x_t`` with ``m_0 = 0``; :meth:`get` returns
    the bias-corrected ``m_t / (1 - decay^t)`` (which equals ``x`` exactly when every
    ``x_t = x``, up to float rounding) or the raw ``m_t``.

    Storage (chosen so that float16/bfloat16 state does not underflow): the state is not
    ``m_t`` but the **bias-corrected mean** ``A_t = m_t / (1 - decay^t)``, updated as
    ``A_t = A_{t-1} + w_t (x_t - A_{t-1})`` with ``w_t = (1 - decay) / (1 - decay^t)``
    (``w_1 = 1``) in float32, and stored per tensor as ``q = A_t / s`` in
    ``storage_dtype`` with a float32 **per-tensor power-of-two scale** ``s`` (recomputed
    every update) that puts the tensor's largest entry two binades below the top of the
    storage range (float16: ``max|q|`` in ``[2^13, 2^14)``). The raw ``m_t`` is
    ``(1 - decay^t) * s * q``, a scalar applied on read, in float32. Why: the raw ``m_t``
    of the first steps carries the factor ``1 - decay^t`` (``0.01`` at ``t = 1`` for
    decay 0.99), which pushed the small entries of an LM Fisher (``~1e-8`` and below,
    already near float16's smallest subnormal ``6e-8``) to zero; ``A_t`` keeps the
    magnitude of one Fisher, and the scale moves float16's ``~2^38`` dynamic range
    (``2^14`` down to ``2^-24``, subnormals included) to start at the largest entry
    instead of at ``65504``. Scaling by a power of two is exact, so float32 storage gives
    the old numbers (``s = 1``), and the error of low-precision storage is one rounding of
    ``A_t`` per update. (Unscaled sums ``sum_s decay^-s x_s`` were rejected: they grow as
    ``decay^-t`` and overflow float16 after ~1100 steps at decay 0.99.) After every update
    the share of entries that are non-zero in float32 but zero in storage is kept
    (:meth:`underflow_share`) and a ``RuntimeWarning`` is raised above 1 %.

    Args:
        decay: EMA decay in ``[0, 1)``.
        storage_dtype: dtype of the stored state (``torch.float16`` / ``torch.bfloat16``
            halve memory; the update itself is computed in float32).
        device: Where the state lives (``"cpu"`` offloads from a GPU).
        reduction: ``"diagonal"`` or ``"group"`` (see above).
        **fisher_kwargs: Defaults passed to :func:`diagonal_fisher` (or
            ``collect_group_fisher``) by :meth:`update`; checked against its signature.
    """

    def __init__(self, decay: float = 0.99, *, storage_dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", reduction: str = "diagonal",
                 **fisher_kwargs: Any):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must lie in [0, 1), got {decay}")
        from workbench.core.checks import check_choice, check_kwargs

        if not isinstance(storage_dtype, torch.dtype) or not storage_dtype.is_floating_point:
            raise TypeError(f"storage_dtype must be a floating torch.dtype, got {storage_dtype!r}")
        self.reduction = check_choice("reduction", reduction, ("diagonal", "group"))
        check_kwargs("FisherAccumulator", fisher_kwargs, self._options())
        self.decay = float(decay)
        self.storage_dtype = storage_dtype
        self.device = torch.device(device)
        self.fisher_kwargs = fisher_kwargs
        self._state: dict[str, dict[str, Tensor]] = {}
        self._scale: dict[str, dict[str, float]] = {}
        self._steps: dict[str, int] = {}
        self._underflow: dict[str, float] = {}

    @property
    def tasks(self) -> list[str]:
        """Task names seen so far."""
        return sorted(self._state)

    def steps(self, task: str = "default") -> int:
        """Number of updates of ``task``."""
        return self._steps.get(task, 0)

    def underflow_share(self, task: str = "default") -> float:
        """Share of entries of ``task``'s state that were non-zero in float32 but zero in
        storage after the last update (see :func:`underflow_share`)."""
        self._check_task(task)
        return self._underflow[task]

    def _collector(self):
        if self.reduction == "group":
            from workbench.curvature.groups import collect_group_fisher

            return collect_group_fisher
        return diagonal_fisher

    def _options(self) -> set[str]:
        import inspect

        return set(inspect.signature(self._collector()).parameters) - {"model", "batches"}

    def update(self, model: nn.Module, batches: Any, task: str = "default",
               **kwargs: Any) -> dict[str, Tensor]:
        """Compute the diagonal (group) Fisher on ``batches`` and fold it into ``task``'s
        EMA."""
        from workbench.core.checks import check_kwargs

        check_kwargs("FisherAccumulator.update", kwargs, self._options())
        fisher = self._collector()(model, batches, **{**self.fisher_kwargs, **kwargs})
        self.update_from(fisher, task)
        return fisher

    def update_from(self, fisher: Mapping[str, Tensor], task: str = "default") -> None:
        """Fold an already computed ``{name: tensor}`` into ``task``'s EMA (see the class
        docstring for what is stored)."""
        state = self._state.setdefault(task, {})
        scales = self._scale.setdefault(task, {})
        if state and set(state) != set(fisher):
            raise ValueError(f"fisher: parameter names differ from earlier updates of {task!r}")
        t = self._steps.get(task, 0) + 1
        w = (1.0 - self.decay) / (1.0 - self.decay ** t)
        lost = total = 0
        for n, x in fisher.items():
            x = x.detach().to(self.device, torch.float32)
            if n in state:
                prev = state[n].float() * scales[n]
                a = prev.add_(x - prev, alpha=w)
            else:
                a = x.clone()
            s = _pow2_scale(a, self.storage_dtype)
            q = (a / s).to(self.storage_dtype)
            lost += int(((a != 0) & (q == 0)).sum())
            total += a.numel()
            state[n], scales[n] = q, s
        self._steps[task] = t
        self._underflow[task] = lost / total if total else 0.0
        warn_underflow(self._underflow[task], self.storage_dtype,
                       f"FisherAccumulator task {task!r}")

    def _check_task(self, task: str) -> None:
        if task not in self._state:
            raise ValueError(f"task {task!r} has no updates; known tasks: {self.tasks}")

    def get(self, task: str = "default", *, bias_corrected: bool = True,
            dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
        """The EMA of ``task`` (bias-corrected by ``1 - decay^t`` unless asked not to).

        Args:
            task: Task name.
            bias_corrected: ``m_t / (1 - decay^t)`` (default) or the raw ``m_t``.
            dtype: dtype of the returned tensors (default float32: the decoded state;
                casting back to float16 would underflow the small entries again).

        Raises:
            ValueError: If ``task`` was never updated (the message lists known tasks).
        """
        self._check_task(task)
        corr = 1.0 if bias_corrected else 1.0 - self.decay ** self._steps[task]
        scales = self._scale[task]
        return {n: (q.float() * (scales[n] * corr)).to(dtype)
                for n, q in self._state[task].items()}

    def state_bytes(self, task: str = "default") -> int:
        """Bytes of ``task``'s stored state (the scales, one float per tensor, excluded)."""
        self._check_task(task)
        return sum(q.numel() * q.element_size() for q in self._state[task].values())
