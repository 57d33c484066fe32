"""Group-level Fisher: per output channel of every weight and per attention head.

Definition used here: the Fisher of a group is the **sum of the diagonal Fisher entries
of its parameters**, i.e. the trace of the group's diagonal block of the Fisher,
``F_g = sum_{i in g} F_ii``. It is additive (the groups of a tensor sum to the tensor's
total) and needs only the diagonal. (The other common choice, the Fisher of a
multiplicative group mask, ``w_g^T F_gg w_g``, needs the off-diagonal block and is not
what this module returns.)

Keys are stable strings ``"<param name>|<group kind>"``:

* ``"<name>|channel"``: one value per output channel (row) of every parameter with
  ``ndim >= 2`` (``[out]``, summed over all other dims); 1-D parameters (biases, norm
  scales) give one value per entry.
* For Llama-style attention (modules ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``):
  ``"<...>.q_proj.weight|head"`` ``[n_heads]`` (rows of head ``h``),
  ``"<...>.k_proj.weight|head"`` and ``"<...>.v_proj.weight|head"`` ``[n_kv_heads]``
  (grouped-query attention: one value per key/value head), ``"<...>.o_proj.weight|head"``
  ``[n_heads]`` (columns of head ``h``), and the combined ``"<attention module>|head"``
  ``[n_heads]`` = ``q_h + o_h + (k_g + v_g) / group_size`` with ``g = h // group_size``,
  ``group_size = n_heads / n_kv_heads``, so that a shared key/value head's Fisher is
  split equally among the query heads that read it and the combined values still sum to
  the attention block's total.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn

from workbench.core.checks import check_choice
from workbench.curvature import _persample as PS
from workbench.curvature import _problem as P
from workbench.curvature import _storage
from workbench.curvature.kfac import check_batch_tokens, resolve_modules
from workbench.curvature.registry import check_fisher_type

_QKVO = ("q_proj", "k_proj", "v_proj", "o_proj")


def head_config(model: nn.Module | None, num_heads=None, num_kv_heads=None, head_dim=None):
    """``(num_heads, num_kv_heads, head_dim)``: the given values, else read from
    ``model.config`` (HF Llama style); ``num_kv_heads`` defaults to ``num_heads``."""
    cfg = getattr(model, "config", None)
    if num_heads is None and cfg is not None:
        num_heads = getattr(cfg, "num_attention_heads", None)
    if num_kv_heads is None and cfg is not None:
        num_kv_heads = getattr(cfg, "num_key_value_heads", None) or num_heads
    if head_dim is None and cfg is not None and num_heads:
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // num_heads
    return num_heads, num_kv_heads or num_heads, head_dim


def group_fisher(
    fisher: Mapping[str, Tensor],
    model: nn.Module | None = None,
    *,
    num_heads: int | None = None,
    num_kv_heads: int | None = None,
    head_dim: int | None = None,
) -> dict[str, Tensor]:
    """Reduce a diagonal Fisher ``{name: tensor}`` to channel and head groups.

    Args:
        fisher: Diagonal Fisher, e.g. from :func:`~workbench.curvature.diagonal_fisher`.
        model: Optional model whose ``config`` gives the head counts (HF Llama style).
        num_heads, num_kv_heads, head_dim: Head layout; override the model config.

    Returns:
        ``{key: float32 tensor}`` with the keys described in the module docstring.

    Raises:
        ValueError: If a q/k/v/o projection's shape does not match the head layout.
    """
    num_heads, num_kv_heads, head_dim = head_config(model, num_heads, num_kv_heads, head_dim)
    out: dict[str, Tensor] = {}
    rows, cols = {}, {}
    for name, f in fisher.items():
        f = f.detach().float()
        out[f"{name}|channel"] = f.reshape(f.shape[0], -1).sum(1) if f.ndim >= 2 else f.clone()
        if f.ndim == 2:
            rows[name], cols[name] = out[f"{name}|channel"], f.sum(0)
    if num_heads:
        out.update(_head_groups(rows, cols, num_heads, num_kv_heads, head_dim))
    return out


def _head_groups(rows: Mapping[str, Tensor], cols: Mapping[str, Tensor], num_heads: int,
                 num_kv_heads: int, head_dim: int) -> dict[str, Tensor]:
    """Head keys from per-row (output channel) and per-column (input channel) sums of the
    q/k/v/o projection weights (see the module docstring)."""
    out: dict[str, Tensor] = {}
    attn: dict[str, dict[str, Tensor]] = {}
    for name, r in rows.items():
        parts = name.split(".")
        if len(parts) < 2 or parts[-1] != "weight" or parts[-2] not in _QKVO:
            continue
        proj, prefix = parts[-2], ".".join(parts[:-2])
        n = num_kv_heads if proj in ("k_proj", "v_proj") else num_heads
        v = cols[name] if proj == "o_proj" else r
        what = "input columns" if proj == "o_proj" else "output rows"
        if v.shape[0] != n * head_dim:
            raise ValueError(f"{name}: {v.shape[0]} {what} != {n} heads x {head_dim}")
        per_head = v.reshape(n, head_dim).sum(1)
        out[f"{name}|head"] = per_head
        attn.setdefault(prefix, {})[proj] = per_head
    group = num_heads // num_kv_heads
    for prefix, d in attn.items():
        total = torch.zeros(num_heads, dtype=next(iter(d.values())).dtype)
        for proj in ("q_proj", "o_proj"):
            if proj in d:
                total = total + d[proj]
        for proj in ("k_proj", "v_proj"):
            if proj in d:
                total = total + d[proj].repeat_interleave(group) / group
        out[f"{prefix}|head"] = total
    return out


# ----------------------------------------------------------------------------- collection
GROUP_KINDS = ("channel", "input", "head")
EXPAND_MODES = ("mean", "share")


def attention_modules(model: nn.Module) -> list[str]:
    """Names of the modules with ``q_proj``, ``k_proj``, ``v_proj`` and ``o_proj``
    children (Llama-style attention)."""
    out = []
    for n, m in model.named_modules():
        kids = dict(m.named_children())
        if all(isinstance(kids.get(p), nn.Linear) for p in _QKVO):
            out.append(n)
    return out


def _resolve_heads(model: nn.Module, heads, modules: dict[str, nn.Module]) -> list[str]:
    if heads is None:
        return []
    if heads == "auto":
        return [a for a in attention_modules(model)
                if all(f"{a}.{p}" in modules for p in _QKVO)]
    named = dict(model.named_modules())
    out = []
    for a in list(heads):
        if a not in named:
            raise ValueError(f"heads: {a!r} is not a module of the model")
        kids = dict(named[a].named_children())
        if not all(isinstance(kids.get(p), nn.Linear) for p in _QKVO):
            raise ValueError(f"heads: module {a!r} ({type(named[a]).__name__}) has no "
                             f"attention heads: it needs nn.Linear children {_QKVO}")
        out.append(a)
    return out


def _linear_modules(model: nn.Module, modules) -> dict[str, nn.Module]:
    out = resolve_modules(model, modules, supported=lambda m: isinstance(m, nn.Linear),
                          support_note="group Fisher collection supports nn.Linear layers only")
    if not out:
        raise ValueError("modules: no nn.Linear layers selected")
    return out


def collect_group_fisher(
    model: nn.Module,
    batches: Any,
    *,
    fisher_type: str = "empirical",
    modules: Any = None,
    heads: Any = "auto",
    granularity: str = "sequence",
    n_samples: int = 1,
    seed: int = 0,
    chunk_size: int | None = 8,
    normalize: str = "token",
    loss_fn: nn.Module | None = None,
    storage_dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> dict[str, Tensor]:
    """Group Fisher of linear layers accumulated directly from per-sample gradients.

    Same numbers as ``group_fisher(diagonal_fisher(model, batches, ...), model)`` for the
    keys below (the group value is the sum of the diagonal Fisher entries of the group),
    but no per-parameter tensor is ever stored: per layer ``W [out, in]`` the state is one
    ``[out]`` and one ``[in]`` vector (memory ``O(groups)``), and per chunk no
    ``[b, out, in]`` per-example gradient is formed. With ``g [b, P, out]`` the output
    gradients and ``a [b, P, in]`` the inputs of a chunk (``P`` positions):

    * ``granularity="token"``: row ``o``: ``sum_{i,p} g_{ipo}^2 ||a_{ip}||^2``; column
      ``j``: ``sum_{i,p} a_{ipj}^2 ||g_{ip}||^2``;
    * ``granularity="sequence"`` (squared per-example gradients ``G_i = g_i^T a_i``):
      row ``o``: ``sum_i g_{i.o}^T (a_i a_i^T) g_{i.o}``; column ``j``:
      ``sum_i a_{i.j}^T (g_i g_i^T) a_{i.j}`` (``[P, P]`` Gram matrices per example).

    Args:
        model: A causal LM (token batches) or any model with ``nn.Linear`` layers.
        batches: As for :func:`~workbench.curvature.diagonal_fisher`.
        fisher_type: ``"empirical"`` or ``"true"`` (labels of
            :func:`~workbench.curvature._problem.sample_labels`: the same labels as
            :func:`~workbench.curvature.diagonal_fisher` and
            :class:`~workbench.curvature.KFAC` for the same ``seed``).
        modules: ``nn.Linear`` module names (default: all but the output head).
        heads: ``"auto"`` (every Llama-style attention module whose q/k/v/o projections
            are covered), a list of attention module names, or ``None``.
        granularity, n_samples, seed, chunk_size, normalize, loss_fn: As for
            :func:`~workbench.curvature.diagonal_fisher`.
        storage_dtype: dtype of the returned tensors (default float32). Accumulation is
            always in float32 (float64 for float64 models), head keys are formed before
            the cast, and a ``RuntimeWarning`` is raised when more than 1 % of the entries
            underflow to zero in the chosen dtype (group sums are larger than single
            entries, so float16 rarely underflows here; for an fp16 EMA of group Fishers
            use ``FisherAccumulator(reduction="group", storage_dtype=torch.float16)``,
            whose per-tensor scale avoids underflow).
        device: Where the result lives (``"cpu"`` offloads from a GPU); default the
            parameters' device.

    Returns:
        ``{key: tensor in storage_dtype}``: ``"<module>.weight|channel"`` ``[out]``
        (output rows),
        ``"<module>.weight|input"`` ``[in]`` (input columns), and for attention the head
        keys of :func:`group_fisher` (``"<proj>.weight|head"``, ``"<attention>|head"``).

    Raises:
        ValueError: Unknown Fisher type / granularity / normalisation, a module that is
            not ``nn.Linear`` (named), an attention module in ``heads`` without heads
            (named), a head layout that does not fit the projections.
    """
    fisher_type = check_fisher_type(fisher_type).value
    _storage.check_storage_dtype(storage_dtype)
    check_choice("granularity", granularity, PS.GRANULARITIES)
    check_choice("normalize", normalize, PS.NORMALIZATIONS)
    if isinstance(n_samples, bool) or int(n_samples) < 1:
        raise ValueError(f"n_samples must be an integer >= 1, got {n_samples!r}")
    if chunk_size is not None and int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
    loss_fn = nn.CrossEntropyLoss() if loss_fn is None else loss_fn
    lkind = P.loss_kind_of(loss_fn)
    mods = _linear_modules(model, modules)
    attn = _resolve_heads(model, heads, mods)
    layout = head_config(model, None, None, None) if attn else (None, None, None)
    if attn and not layout[0]:
        raise ValueError("heads: the model has no config with num_attention_heads; pass "
                         "heads=None")
    batches = P.as_batch_list(batches)
    check_batch_tokens(model, batches)
    ref = next(iter(mods.values())).weight
    dt = torch.promote_types(ref.dtype, torch.float32)
    rows = {n: torch.zeros(m.out_features, dtype=dt, device=ref.device) for n, m in mods.items()}
    cols = {n: torch.zeros(m.in_features, dtype=dt, device=ref.device) for n, m in mods.items()}
    names = list(mods)

    def record(ex):
        """Forward pass recording the linear layers' inputs and outputs."""
        terms, inputs, outputs = P.batch_terms_with_io(model, ex, lkind, loss_fn, mods)
        return terms, {n: outputs[n] for n in names if n in outputs}, inputs

    chunks = PS.PerExampleGradients(
        model, batches, loss_kind=lkind, loss_fn=loss_fn, fisher_type=fisher_type,
        n_samples=n_samples, seed=seed, chunk_size=chunk_size, record=record)
    S = chunks.n_samples
    for chunk in chunks:
        bc, inputs = chunk.n_examples, chunk.record
        for gs in chunk.output_gradients():
            for n, g in gs.items():
                a = inputs[n].reshape(bc, -1, inputs[n].shape[-1]).to(dt)
                g = g.reshape(bc, -1, g.shape[-1]).to(dt)
                r, c = _row_col_squares(g, a, granularity)
                rows[n].add_(r, alpha=1.0 / S)
                cols[n].add_(c, alpha=1.0 / S)
    denom = chunks.denominator(normalize)
    out: dict[str, Tensor] = {}
    for n in names:
        P.check_finite(f"group Fisher of {n}", rows[n])
        out[f"{n}.weight|channel"] = (rows[n] / denom).float()
        out[f"{n}.weight|input"] = (cols[n] / denom).float()
    if attn:
        keep = {f"{a}.{p}.weight" for a in attn for p in _QKVO}
        r = {k.split("|")[0]: v for k, v in out.items() if k.endswith("|channel")
             and k.split("|")[0] in keep}
        c = {k.split("|")[0]: v for k, v in out.items() if k.endswith("|input")
             and k.split("|")[0] in keep}
        out.update(_head_groups(r, c, *layout))
    return _storage.store(out, storage_dtype, device, "collect_group_fisher")


def _row_col_squares(g: Tensor, a: Tensor, granularity: str) -> tuple[Tensor, Tensor]:
    """Row (``[out]``) and column (``[in]``) sums of squared per-sample weight gradients
    of one chunk, from ``g [b, P, out]`` and ``a [b, P, in]`` (see
    :func:`collect_group_fisher`)."""
    if granularity == "token" or g.shape[1] == 1:
        g2, a2 = g.square(), a.square()
        return (torch.einsum("bpo,bp->o", g2, a2.sum(-1)),
                torch.einsum("bpi,bp->i", a2, g2.sum(-1)))
    Ka = a @ a.transpose(1, 2)  # [b, P, P]
    Kg = g @ g.transpose(1, 2)
    return (g * (Ka @ g)).sum((0, 1)), (a * (Kg @ a)).sum((0, 1))


def _check_groups_fit(groups: Mapping[str, Tensor], named: Mapping[str, Tensor],
                      group: str, module_names: set | frozenset = frozenset()) -> None:
    """``groups`` holds ``group`` keys of parameters of this model, with a number of
    groups that divides the parameter's rows/columns (else: the wrong model or kind).

    Raises:
        TypeError: ``groups`` not a mapping.
        ValueError: No key of kind ``group``, keys naming parameters the model lacks, or a
            group count that does not fit the parameter's shape.
    """
    if not isinstance(groups, Mapping):
        raise TypeError(f"groups must be the mapping from collect_group_fisher, got "
                        f"{type(groups).__name__}")
    kinds = sorted({k.partition("|")[2] for k in groups})
    mine = {k.partition("|")[0]: v for k, v in groups.items() if k.partition("|")[2] == group}
    if not mine:
        raise ValueError(f"groups: no '<param>|{group}' keys (group={group!r}); the groups "
                         f"hold kinds {kinds}: pass one of them as group=")
    unknown = [n for n in mine if n not in named and n not in module_names]
    if unknown:
        raise ValueError(f"groups: {len(unknown)} of {len(mine)} '{group}' keys name "
                         f"parameters this model does not have (e.g. {unknown[:3]}); the "
                         "groups come from another model (its parameters: "
                         f"{list(named)[:3]} ...)")
    for name, v in mine.items():
        if name not in named:  # an attention module's head totals: not expanded
            continue
        shape = named[name].shape
        if len(shape) != 2:
            if v.numel() != named[name].numel():
                raise ValueError(f"groups: {name}|{group} has {v.numel()} values, the "
                                 f"parameter {tuple(shape)}: another model")
            continue
        along_rows = not (group == "input" or (group == "head" and
                                              name.split(".")[-2] == "o_proj"))
        n_groups = shape[0] if along_rows else shape[1]
        if v.numel() == 0 or n_groups % v.numel():
            raise ValueError(f"groups: {name}|{group} has {v.numel()} groups, which does not "
                             f"divide the parameter's {n_groups} "
                             f"{'rows' if along_rows else 'columns'} {tuple(shape)}: the "
                             "groups come from another model")


def expand_groups(groups: Mapping[str, Tensor], model: nn.Module, *, group: str = "channel",
                  mode: str = "mean") -> dict[str, Tensor]:
    """Per-parameter tensors from group values (the inverse direction of the reduction).

    Args:
        groups: Output of :func:`collect_group_fisher` or :func:`group_fisher`.
        model: The model (parameter shapes).
        group: ``"channel"`` (output rows), ``"input"`` (input columns) or ``"head"``
            (rows of a q/k/v head, columns of an o_proj head).
        mode: ``"mean"`` (default): every weight gets its group's **mean per parameter**,
            ``value / group size``, so the expanded tensor sums to the group totals (the
            trace of the diagonal Fisher is kept); ``"share"``: every weight gets the
            group's full value (useful for ranking whole groups).

    Returns:
        ``{param name: float32 tensor of the parameter's shape}`` for every weight that
        has a ``"<name>|<group>"`` key.
    """
    check_choice("group", group, GROUP_KINDS)
    check_choice("mode", mode, EXPAND_MODES)
    named = dict(model.named_parameters())
    _check_groups_fit(groups, named, group, {n for n, _ in model.named_modules()})
    out = {}
    for key, v in groups.items():
        name, _, kind = key.partition("|")
        if kind != group or name not in named:
            continue
        shape = named[name].shape
        v = v.detach().float()
        if len(shape) != 2:
            out[name] = v.reshape(shape).clone()
            continue
        along_rows = not (group == "input" or (group == "head" and
                                              name.split(".")[-2] == "o_proj"))
        n_groups, other = (shape[0], shape[1]) if along_rows else (shape[1], shape[0])
        per = n_groups // v.numel()  # rows/columns per group (head_dim for heads)
        vals = v.repeat_interleave(per) / (per * other if mode == "mean" else 1.0)
        t = vals[:, None].expand(n_groups, other)
        out[name] = (t if along_rows else t.T).contiguous()
    return out
