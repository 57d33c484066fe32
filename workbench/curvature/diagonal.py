"""Diagonal Fisher at language-model scale.

Definitions (``N`` = number of active terms over all batches: non-padding predicted
tokens of a causal LM, or examples of a classifier; ``l_t`` = loss of term ``t``):

* ``fisher_type="empirical"``: ``F_diag = (1 / N) * sum_i (grad_theta L_i)^2`` where
  ``L_i = sum_{t in example i} l_t(y_t)`` is the summed loss of example ``i`` (one
  sequence of an LM, one sample of a classifier) at the *data* labels. These are squared
  **per-example** gradients, never the squared batch gradient. For a classifier
  (one term per example) this is exactly the diagonal of the empirical Fisher of the
  mean loss (:func:`~workbench.curvature.products.dense_matrix` with ``"empirical_fisher"``).
* ``fisher_type="true"``: the same with labels ``y_t ~ softmax(f_t)`` sampled from the
  model, independently per token (teacher forcing: the context stays the real text),
  averaged over ``n_samples`` draws (the labels of
  :func:`~workbench.curvature._problem.sample_labels`: one generator per example, so the
  same ``seed`` gives the same labels as :func:`~workbench.curvature.collect_group_fisher`
  and :class:`~workbench.curvature.KFAC`). Because the sampled score functions of different
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
parameters use ``torch.func.vmap(grad)``; ``backend="loop"`` is the slow reference.

Numerics: per-example gradients are computed in the model's dtype (bf16/fp16 allowed),
cast to float32 (float64 for float64 models) before squaring, and accumulated in that
dtype. Optional clipping rescales each per-example gradient to L2 norm at most ``clip``
(over the selected parameters) before squaring. Examples are processed ``chunk_size`` at
a time (:class:`~workbench.curvature._persample.PerExampleGradients`, the loop shared
with the group Fisher); the sum of squares does not depend on the chunking.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn
from torch.func import grad, vmap

from workbench.core.checks import check_choice, renamed_keywords
from workbench.curvature import _persample as PS
from workbench.curvature import _problem as P
from workbench.curvature import _storage
from workbench.curvature.registry import check_fisher_type

#: Per-example gradient backends of :func:`diagonal_fisher` (see its ``backend``).
BACKENDS = ("auto", "hooks", "vmap", "loop")


#: Keywords of :func:`diagonal_fisher` that were renamed (old -> new), refused naming the new.
RENAMED = {"kind": "fisher_type", "method": "backend"}


@renamed_keywords(**RENAMED)
def diagonal_fisher(
    model: nn.Module,
    batches: Any,
    *,
    fisher_type: str = "empirical",
    params: Any = None,
    loss_fn: nn.Module | None = None,
    n_samples: int = 1,
    seed: int = 0,
    chunk_size: int | None = 8,
    clip: float | None = None,
    normalize: str = "token",
    backend: str = "auto",
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
        fisher_type: ``"empirical"`` (data labels) or ``"true"`` (labels sampled from the
            model's predictive distribution, see the module docstring). Formerly ``kind``.
        params: Parameters to include (names, parameters or dict); default all trainable.
        loss_fn: ``nn.CrossEntropyLoss`` (default), ``nn.NLLLoss`` or ``nn.MSELoss``;
            its ``ignore_index`` marks inactive targets. Its reduction is irrelevant:
            normalisation is set by ``normalize``.
        n_samples: Sampled labels per token for ``fisher_type="true"``.
        seed: Seed of the sampled labels (:func:`~workbench.curvature._problem.sample_labels`).
        chunk_size: Examples per vectorised per-example-gradient call (memory knob;
            ``None`` = whole batch). The result does not depend on it.
        clip: If set, each per-example gradient is rescaled to L2 norm <= ``clip``.
        normalize: ``"token"`` (divide by active terms ``N``), ``"example"`` (by number
            of examples) or ``"none"`` (plain sum of squared per-example gradients).
        backend: How per-example gradients are formed (formerly ``method``). ``"auto"``:
            parameters of ``nn.Linear``, ``nn.Embedding`` and LayerNorm/RMSNorm layers
            (tied weights included) by forward/backward hooks (one forward and one
            backward pass per chunk, :mod:`._persample`), all others by ``"vmap"``
            (``torch.func.vmap(grad)``); ``"hooks"``: only the hook path (every
            parameter must be hookable); ``"loop"``: one backward pass per example (slow
            reference). With ``clip`` the hooks are not used (the clip needs each
            per-example gradient's full norm). Dict batches with an ``attention_mask``
            take the loop instead of ``vmap`` (HF masking is not vmap-able).
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
        ValueError: Bad ``fisher_type``/``normalize``/``backend``/``n_samples``/``clip``,
            empty data, unsupported loss, mismatched shapes, or NaN/inf gradients.
        TypeError: The old keywords ``kind`` / ``method`` (named with their new names).
    """
    fisher_type = check_fisher_type(fisher_type).value
    check_choice("normalize", normalize, PS.NORMALIZATIONS)
    check_choice("backend", backend, BACKENDS)
    check_choice("granularity", granularity, PS.GRANULARITIES)
    if int(n_samples) < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if clip is not None and not clip > 0:
        raise ValueError(f"clip must be a positive float or None, got {clip}")
    if chunk_size is not None and int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
    _storage.check_storage_dtype(storage_dtype)
    loss_fn = nn.CrossEntropyLoss() if loss_fn is None else loss_fn
    lkind = P.loss_kind_of(loss_fn)
    batches = P.as_batch_list(batches)
    names, plist = P.resolve_params(model, params)
    acc_device = plist[0].device
    acc = {n: torch.zeros(p.shape, dtype=torch.promote_types(p.dtype, torch.float32),
                          device=acc_device)
           for n, p in zip(names, plist)}
    plan = PS.Plan()
    if backend in ("auto", "hooks") and clip is None:
        plan = PS.make_plan(model, names, granularity)
        if backend == "auto" and plan.uses:  # modules called twice per pass: vmap instead
            plan = PS.drop_reused(plan, model, P.probe_example(batches[0]), lkind, loss_fn)
    rest = [n for n in names if n not in plan.uses]
    if backend == "hooks" and (clip is not None or rest):
        raise ValueError("backend='hooks' needs every selected parameter to belong to "
                         "nn.Linear / nn.Embedding / norm layers and clip=None; not hookable: "
                         f"{rest[:5]}; use backend='auto' or 'vmap'")
    if granularity == "token" and (clip is not None or rest or backend in ("vmap", "loop")):
        raise ValueError("granularity='token' needs backend='auto' or 'hooks', clip=None and "
                         "hookable parameters (nn.Linear / nn.Embedding / norm layers, tied "
                         f"embedding + linear); not hookable: {rest[:5]}; use "
                         "granularity='sequence'")
    named = dict(zip(names, plist))
    f = P.example_loss_fn(model, rest, lkind, loss_fn)
    detached = {n: named[n].detach() for n in rest}
    per_ex = vmap(grad(f), in_dims=(None, 0, 0))  # sampled labels
    per_ex_data = vmap(grad(f), in_dims=(None, 0, None))  # the data's own labels

    def record(ex):
        """The hook pass: module inputs/outputs of the planned parameters' modules."""
        with PS.Recorder(plan) as rec:
            terms = P.batch_terms(model, ex, lkind, loss_fn)
        return terms, rec.outputs, rec

    chunks = PS.PerExampleGradients(
        model, batches, loss_kind=lkind, loss_fn=loss_fn, fisher_type=fisher_type,
        n_samples=n_samples, seed=seed, chunk_size=chunk_size,
        record=record if plan.uses else None)
    S = chunks.n_samples
    for chunk in chunks:
        ex = chunk.examples
        if plan.uses:
            # one backward pass per label draw to the module outputs; no parameter
            # gradient is formed (see _persample.add_squared_grads)
            for gs in chunk.output_gradients():
                PS.add_squared_grads(acc, plan, chunk.record, gs, chunk.n_examples,
                                     granularity, 1.0 / S)
        if not rest:
            continue
        # HF attention masks use data-dependent control flow that vmap cannot trace:
        # padded dict batches take the per-example loop (same values, slower).
        loop_batch = isinstance(ex, Mapping) and ex.get("attention_mask") is not None
        for s in range(S):
            targets = chunk.targets(s)
            if backend in ("auto", "vmap") and not loop_batch:
                if targets is None:
                    g = per_ex_data(detached, ex, None)
                else:
                    g = per_ex(detached, ex, targets)
            else:
                g = _loop_grads(f, detached, ex, targets)
            _accumulate(acc, g, rest, clip, scale=1.0 / S)
    denom = chunks.denominator(normalize)
    for n in plan.uses:  # NaN/inf survive the sums of squares: checked once, at the end
        if not torch.isfinite(acc[n].sum()):
            P.check_finite(f"gradient of {n}", acc[n])
    out_device = torch.device(device) if device is not None else acc_device
    ref = {n: a.div_(denom) for n, a in acc.items()}
    return _storage.store(ref, storage_dtype, out_device, "diagonal_fisher")


def _loop_grads(f, params, ex, targets):
    """Per-example gradients with one ordinary backward pass each (reference path)."""
    b = P.n_examples(ex)
    leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    rows: dict[str, list[Tensor]] = {n: [] for n in params}
    for i in range(b):
        e = P.example_rows(ex, i)
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


