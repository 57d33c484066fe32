"""Private: per-example gradients, chunk by chunk, and their squares from module hooks.

:class:`PerExampleGradients` is the one loop over the examples of the data that
:func:`~workbench.curvature.diagonal.diagonal_fisher` and
:func:`~workbench.curvature.groups.collect_group_fisher` share: batches are split into
chunks of examples, each chunk gets one recorded forward pass, its labels (the data
labels, or for the true Fisher the labels of
:func:`~workbench.curvature._problem.sample_labels`), and per label draw one backward
pass to the recorded module outputs (:meth:`Chunk.output_gradients`); the caller turns
those output gradients into squared per-example parameter gradients
(:func:`add_squared_grads` here, row/column sums in the group Fisher).

Squared per-sample gradients from one forward + backward pass, via module hooks.
Supported modules (a parameter is hooked when every module that owns it is one of these):

* ``nn.Linear`` (weight, bias),
* ``nn.Embedding`` (weight; not with ``max_norm`` or ``scale_grad_by_freq``; rows at
  ``padding_idx`` get no gradient, as in PyTorch),
* normalisation layers affine in their elementwise weight, ``y = c(x) + w * xhat(x) (+ b)``:
  ``nn.LayerNorm``, ``nn.RMSNorm`` and classes named ``*RMSNorm`` / ``*LayerNorm`` with a
  1-D weight (Llama's ``LlamaRMSNorm``). ``xhat`` is obtained as ``y(w=1, b=0) - y(w=0, b=0)``
  (two extra, gradient-free norm evaluations), which is exact for any such layer.

Notation for one chunk of ``b`` examples: a module acting at *positions* ``p`` (the
dimensions between the leading example dimension and the feature dimension, e.g. the
``T`` tokens of a sequence) has inputs ``a[i, p]`` and output gradients
``g[i, p] = dL / d out[i, p]`` of the summed (weighted) loss ``L`` of the chunk. The
gradient of example ``i``'s loss w.r.t. a parameter is ``G_i = sum_p G_{i,p}`` where
``G_{i,p}`` is the *contribution of position p* (the parameter's use at that position):
``g a^T`` (linear weight), ``g`` (bias), ``onehot(id) g^T`` (embedding), ``g * xhat``
(norm weight). A parameter used by several modules (tied embedding / LM head) has
``G_{i,p} = sum over uses``.

* ``granularity="sequence"``: ``sum_i G_i^2`` (squared per-example gradients).
* ``granularity="token"``: ``sum_{i,p} G_{i,p}^2`` (squared per-position contributions).
  For a causal LM this is the usual "per-token" estimator: it drops the cross-position
  terms. It equals the squared gradient of the single token loss ``l_p`` exactly for
  parameters whose use at position ``p`` only influences the prediction at ``p`` (LM
  head, final norm, the MLP of the last block); for earlier layers (attention mixes
  positions) it is the square of the position-``p`` share of the sequence gradient.
  For a tied embedding / LM head the two uses at the same position are summed before
  squaring, exactly: ``(E_p + H_p)^2 = E_p^2 + H_p^2 + 2 E_p H_p`` where the cross term
  lives in the row of the input token ``id_p`` only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call

from workbench.curvature import _problem as P

GRANULARITIES = ("sequence", "token")
NORMALIZATIONS = ("token", "example", "none")

#: Per-example work (squaring ``[b, out, in]`` gradients) is vectorised up to this size.
_EINSUM_MAX = 1 << 24


def module_kind(m: nn.Module) -> str | None:
    """``"linear"``, ``"embedding"``, ``"norm"`` or ``None`` (not supported by hooks)."""
    if isinstance(m, nn.Linear):
        return "linear"
    if isinstance(m, nn.Embedding):
        if m.max_norm is None and not m.scale_grad_by_freq:
            return "embedding"
        return None
    name = type(m).__name__
    if isinstance(m, (nn.LayerNorm, nn.RMSNorm)) or name.endswith(("RMSNorm", "LayerNorm")):
        w = getattr(m, "weight", None)
        if isinstance(w, Tensor) and w.ndim == 1:
            return "norm"
    return None


@dataclass
class Use:
    """One use of a parameter: module ``mname`` (of kind ``kind``) holds it as ``pname``."""

    mname: str
    module: nn.Module
    kind: str
    pname: str


@dataclass
class Plan:
    """Which selected parameters the hooks handle, and through which module uses."""

    uses: dict[str, list[Use]] = field(default_factory=dict)

    @property
    def modules(self) -> dict[str, tuple[nn.Module, str]]:
        return {u.mname: (u.module, u.kind) for us in self.uses.values() for u in us}


def _is_tied_pair(uses: list[Use]) -> bool:
    kinds = sorted(u.kind for u in uses)
    return (kinds == ["embedding", "linear"]
            and all(u.pname == "weight" for u in uses))


def make_plan(model: nn.Module, names: list[str], granularity: str) -> Plan:
    """Hook plan for the selected parameter ``names`` (the others are left out).

    A parameter is planned when all modules owning it are supported; for
    ``granularity="token"`` a shared parameter must moreover be a tied
    embedding / linear weight pair (the only sharing whose per-position cross term is
    computed).
    """
    owners: dict[int, list[Use]] = {}
    for mname, m in model.named_modules(remove_duplicate=False):
        for pname, p in m.named_parameters(recurse=False):
            owners.setdefault(id(p), []).append(Use(mname, m, module_kind(m), pname))
    named = dict(model.named_parameters())
    plan = Plan()
    for n in names:
        uses = owners.get(id(named[n]), [])
        # the same module reached under two names (shared submodule) is one use
        seen, uniq = set(), []
        for u in uses:
            if id(u.module) not in seen:
                seen.add(id(u.module))
                uniq.append(u)
        if not uniq or any(u.kind is None for u in uniq):
            continue
        if len(uniq) > 1 and granularity == "token" and not _is_tied_pair(uniq):
            continue
        plan.uses[n] = uniq
    return plan


def drop_reused(plan: Plan, model: nn.Module, probe, lkind, loss_fn) -> Plan:
    """``plan`` without the parameters of modules called more than once in a forward pass
    on ``probe`` (one small example; no gradients); those need ``vmap``."""
    calls: dict[str, int] = {}
    handles = [m.register_forward_hook(
        lambda mod, a, o, mn=mn: calls.__setitem__(mn, calls.get(mn, 0) + 1))
        for mn, (m, _) in plan.modules.items()]
    try:
        with torch.no_grad():
            P.batch_terms(model, probe, lkind, loss_fn, validate=False)
    finally:
        for h in handles:
            h.remove()
    keep = {n: us for n, us in plan.uses.items() if all(calls.get(u.mname, 0) <= 1 for u in us)}
    return Plan(keep)


class Recorder:
    """Forward hooks recording each planned module's input, output and derived data."""

    def __init__(self, plan: Plan):
        self.mods = plan.modules
        self.inputs: dict[str, Tensor] = {}
        self.outputs: dict[str, Tensor] = {}
        self.xhat: dict[str, Tensor] = {}
        self._handles = []
        self._busy = False

    def __enter__(self):
        for mn, (m, kind) in self.mods.items():
            self._handles.append(m.register_forward_hook(self._hook(mn, kind)))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []

    def _hook(self, mn, kind):
        def hook(mod, args, out):
            if self._busy:  # the norm-basis evaluation below calls the module again
                return
            if mn in self.outputs:
                raise ValueError(f"{mn}: module called more than once per forward pass; its "
                                 "per-example gradients need backend='vmap'")
            if not isinstance(out, Tensor) or not out.requires_grad:
                raise ValueError(f"{mn}: output does not require grad; the selected "
                                 "parameters must have requires_grad=True")
            x = args[0].detach()
            self.inputs[mn] = x
            self.outputs[mn] = out
            if kind == "norm":
                self._busy = True
                try:
                    self.xhat[mn] = _norm_basis(mod, x)
                finally:
                    self._busy = False
        return hook


def _norm_basis(mod: nn.Module, x: Tensor) -> Tensor:
    """``d out / d weight`` (elementwise) of an affine-in-weight norm layer at input ``x``."""
    w = mod.weight
    sub = {"weight": torch.ones_like(w)}
    zero = {"weight": torch.zeros_like(w)}
    if getattr(mod, "bias", None) is not None:
        sub["bias"] = zero["bias"] = torch.zeros_like(mod.bias)
    with torch.no_grad():
        return functional_call(mod, sub, (x,)) - functional_call(mod, zero, (x,))


def _acc(t: Tensor) -> Tensor:
    """``t`` in its accumulation dtype: float32, or float64 for float64 models."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _positions(t: Tensor, b: int) -> Tensor:
    """``[b, P, k]`` view of a ``[b, ..., k]`` tensor (``P`` positions per example)."""
    return t.reshape(b, -1, t.shape[-1])


def _use_data(u: Use, rec: Recorder, g: Tensor, b: int):
    """Float32 (float64) ``[b, P, *]`` data of one use: (kind, g, a-or-ids-or-xhat, padding_idx)."""
    g = _positions(_acc(g), b)
    if u.kind == "linear":
        return g, _positions(_acc(rec.inputs[u.mname]), b)
    if u.kind == "embedding":
        ids = rec.inputs[u.mname].reshape(b, -1)
        return g, ids
    return g, _positions(_acc(rec.xhat[u.mname]), b)


def _emb_keep(u: Use, ids: Tensor) -> Tensor:
    pad = u.module.padding_idx
    return torch.ones_like(ids, dtype=torch.bool) if pad is None else ids != pad


def _add_token_sq(acc: Tensor, u: Use, g: Tensor, x: Tensor, c: float) -> None:
    """``acc += c * sum_{i,p} G_{i,p}^2`` of one use (single-use parameter)."""
    g2 = g.square().reshape(-1, g.shape[-1])
    if u.kind == "linear" and u.pname == "weight":
        acc.addmm_(g2.T, x.square().reshape(-1, x.shape[-1]), alpha=c)
    elif u.kind == "embedding":
        keep = _emb_keep(u, x).reshape(-1)
        acc.index_add_(0, x.reshape(-1)[keep], g2[keep], alpha=c)
    elif u.kind == "norm" and u.pname == "weight":
        acc.add_((g * x).square().reshape(-1, g.shape[-1]).sum(0), alpha=c)
    else:  # biases
        acc.add_(g2.sum(0), alpha=c)


def _add_sequence_sq(acc: Tensor, u: Use, g: Tensor, x: Tensor, c: float) -> None:
    """``acc += c * sum_i G_i^2`` of one use (single-use parameter)."""
    b = g.shape[0]
    if u.kind == "linear" and u.pname == "weight":
        if g.shape[1] == 1:
            _add_token_sq(acc, u, g, x, c)
        elif b * g.shape[-1] * x.shape[-1] <= _EINSUM_MAX:
            acc.add_(torch.einsum("bpo,bpi->boi", g, x).square_().sum(0), alpha=c)
        else:  # one [out, in] per-example gradient at a time
            for i in range(b):
                G = g[i].T @ x[i]
                acc.addcmul_(G, G, value=c)
    elif u.kind == "embedding":
        V = acc.shape[0]
        keep = _emb_keep(u, x).reshape(-1)
        key = (torch.arange(b, device=x.device)[:, None] * V + x).reshape(-1)[keep]
        uniq, inv = torch.unique(key, return_inverse=True)
        G = torch.zeros(uniq.numel(), g.shape[-1], dtype=g.dtype, device=g.device)
        G.index_add_(0, inv, g.reshape(-1, g.shape[-1])[keep])
        acc.index_add_(0, uniq % V, G.square_(), alpha=c)
    elif u.kind == "norm" and u.pname == "weight":
        acc.add_((g * x).sum(1).square_().sum(0), alpha=c)
    else:  # biases
        acc.add_(g.sum(1).square_().sum(0), alpha=c)


def _add_example(buf: Tensor, u: Use, g: Tensor, x: Tensor, i: int) -> None:
    """``buf += G_i`` of one use (dense per-example gradient, for shared parameters)."""
    if u.kind == "linear" and u.pname == "weight":
        buf.addmm_(g[i].T, x[i])
    elif u.kind == "embedding":
        keep = _emb_keep(u, x[i])
        buf.index_add_(0, x[i][keep], g[i][keep])
    elif u.kind == "norm" and u.pname == "weight":
        buf += (g[i] * x[i]).sum(0)
    else:
        buf += g[i].sum(0)


def _add_tied_token_sq(acc: Tensor, uses, data, c: float) -> None:
    """Tied embedding ``E`` / linear head ``H``: ``acc += c sum_{i,p} (E_{i,p} + H_{i,p})^2``."""
    (ue, (ge, ids)), (ul, (gl, h)) = sorted(zip(uses, data), key=lambda t: t[0].kind)
    if ids.shape[:2] != gl.shape[:2]:
        raise ValueError(f"{ue.mname} / {ul.mname}: tied weight used at different numbers of "
                         "positions; use granularity='sequence'")
    _add_token_sq(acc, ue, ge, ids, c)
    _add_token_sq(acc, ul, gl, h, c)
    keep = _emb_keep(ue, ids)
    # cross term 2 E_p * H_p: E_p is non-zero only in row ids_p, where H_p = gl[p, ids_p] h_p
    gl_at = gl.gather(-1, ids.unsqueeze(-1))  # [b, P, 1]
    cross = 2.0 * gl_at * ge * h  # [b, P, d]
    acc.index_add_(0, ids[keep], cross[keep], alpha=c)


def add_squared_grads(acc: dict[str, Tensor], plan: Plan, rec: Recorder,
                      grads: dict[str, Tensor], b: int, granularity: str,
                      scale: float = 1.0) -> None:
    """``acc[name] += scale * (sum of squared per-sample gradients)``, in place.

    Args:
        acc: ``{param name: accumulator}`` (float32, or float64 for float64 models).
        plan: From :func:`make_plan`.
        rec: The recorder of the forward pass.
        grads: ``{module name: gradient of the chunk loss w.r.t. that module's output}``.
        b: Number of examples in the chunk (leading dimension of every module input).
        granularity: ``"sequence"`` or ``"token"`` (see the module docstring).
        scale: Factor of this pass (``1 / n_samples``).
    """
    for n, uses in plan.uses.items():
        uses = [u for u in uses if u.mname in rec.outputs]
        if not uses:  # parameter not used in this forward pass: zero gradient
            continue
        data = [_use_data(u, rec, grads[u.mname], b) for u in uses]
        if len(uses) == 1:
            fn = _add_token_sq if granularity == "token" else _add_sequence_sq
            fn(acc[n], uses[0], *data[0], scale)
        elif granularity == "token":
            _add_tied_token_sq(acc[n], uses, data, scale)
        else:
            buf = torch.empty_like(acc[n])
            for i in range(b):
                buf.zero_()
                for u, (g, x) in zip(uses, data):
                    _add_example(buf, u, g, x, i)
                acc[n].addcmul_(buf, buf, value=scale)


# ----------------------------------------------------------------------------- iteration
@dataclass
class Chunk:
    """``b`` consecutive examples of one batch with their recorded forward pass.

    Attributes:
        examples: The rows of the batch (same format as the batch).
        n_examples: ``b``.
        labels: ``[S, b, ...]`` sampled labels (:func:`~._problem.sample_labels`) for the
            true Fisher, ``None`` for the data labels.
        n_samples: Label draws ``S`` (1 for the data labels).
        terms: The recorded forward pass (``None`` when nothing is recorded).
        outputs: ``{module name: output}`` recorded in the forward pass (in the graph).
        record: What the record function returned next to the outputs (a hook recorder,
            the module inputs, ...).
    """

    examples: Any
    n_examples: int
    labels: Tensor | None
    n_samples: int
    loss_kind: str
    terms: P.Terms | None = None
    outputs: Mapping[str, Tensor] = field(default_factory=dict)
    record: Any = None

    def targets(self, s: int) -> Tensor | None:
        """Labels of draw ``s`` as ``[b, ...]`` (one row per example), or ``None``."""
        return None if self.labels is None else self.labels[s]

    def output_gradients(self) -> Iterator[dict[str, Tensor]]:
        """Per label draw ``s``: ``{module name: dL_s / d output}`` with
        ``L_s = sum_t active_t * l_t(y_t^(s))`` the summed (unweighted) loss of the chunk's
        active terms at the labels of draw ``s``; one backward pass each, no parameter
        gradient formed."""
        order = list(self.outputs)
        S = self.n_samples
        for s in range(S):
            labels = None if self.labels is None else self.labels[s]
            loss = P.active_loss(self.loss_kind, self.terms, labels)
            gs = torch.autograd.grad(loss, [self.outputs[n] for n in order],
                                     retain_graph=s < S - 1, allow_unused=True,
                                     materialize_grads=True)
            yield dict(zip(order, gs))


class PerExampleGradients:
    """The examples of ``batches``, chunk by chunk (see the module docstring).

    Args:
        model: The model.
        batches: A list of batches (:func:`~._problem.as_batch_list`).
        loss_kind, loss_fn: The loss.
        fisher_type: ``"empirical"`` (data labels) or ``"true"`` (sampled labels).
        n_samples: Label draws per term for ``"true"``.
        seed: Seed of the sampled labels (:func:`~._problem.sample_labels`).
        chunk_size: Examples per chunk (``None``: the whole batch).
        record: ``record(examples) -> (terms, {module: output}, extra)``: the forward pass
            of a chunk with the module outputs to differentiate, or ``None`` (no forward
            pass with gradients; for ``"true"`` a ``no_grad`` pass samples the labels).

    Attributes (complete after the iteration):
        n_terms: Active terms of all batches.
        n_examples: Examples of all batches.
    """

    def __init__(self, model: nn.Module, batches: list, *, loss_kind: str,
                 loss_fn: nn.Module, fisher_type: str, n_samples: int, seed: int,
                 chunk_size: int | None,
                 record: Callable[[Any], tuple[P.Terms, Mapping[str, Tensor], Any]] | None
                 = None):
        self.model, self.batches, self.loss_fn = model, batches, loss_fn
        self.loss_kind, self.fisher_type, self.seed = loss_kind, fisher_type, seed
        self.n_samples = int(n_samples) if fisher_type == "true" else 1
        self.chunk_size, self.record = chunk_size, record
        self.n_terms = self.n_examples = 0

    def __iter__(self) -> Iterator[Chunk]:
        lk, S = self.loss_kind, self.n_samples
        self.n_terms = self.n_examples = 0
        for batch in self.batches:
            P.check_example_batch(batch)
            b = P.n_examples(batch)
            step = b if self.chunk_size is None else int(self.chunk_size)
            for start in range(0, b, step):
                ex = P.example_rows(batch, slice(start, start + step))
                bc = P.n_examples(ex)
                first = self.n_examples + start
                chunk = Chunk(ex, bc, None, S, lk)
                if self.record is not None:
                    chunk.terms, chunk.outputs, chunk.record = self.record(ex)
                    sampled_from = chunk.terms.outputs
                elif self.fisher_type == "true":
                    with torch.no_grad():
                        sampled_from = P.batch_terms(self.model, ex, lk, self.loss_fn).outputs
                if self.fisher_type == "true":
                    chunk.labels = P.sample_labels(lk, sampled_from, bc, S, self.seed, first)
                yield chunk
            self.n_terms += P.count_terms(batch, lk, self.loss_fn)
            self.n_examples += b

    def denominator(self, normalize: str) -> int:
        """``N`` of ``normalize`` (``"token"``: active terms, ``"example"``: examples,
        ``"none"``: 1), after the iteration.

        Raises:
            ValueError: No active terms in the data.
        """
        if self.n_terms == 0:
            raise ValueError("batches: no active terms (all targets are padding/ignored)")
        return {"token": self.n_terms, "example": self.n_examples, "none": 1}[normalize]
