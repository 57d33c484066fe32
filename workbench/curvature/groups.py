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

from typing import Mapping

import torch
from torch import Tensor, nn

_QKVO = ("q_proj", "k_proj", "v_proj", "o_proj")


def _head_config(model: nn.Module | None, num_heads, num_kv_heads, head_dim):
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
    num_heads, num_kv_heads, head_dim = _head_config(model, num_heads, num_kv_heads, head_dim)
    out: dict[str, Tensor] = {}
    for name, f in fisher.items():
        f = f.detach().float()
        out[f"{name}|channel"] = f.reshape(f.shape[0], -1).sum(1) if f.ndim >= 2 else f.clone()
    if not num_heads:
        return out
    attn: dict[str, dict[str, Tensor]] = {}
    for name, f in fisher.items():
        parts = name.split(".")
        if len(parts) < 2 or parts[-1] != "weight" or parts[-2] not in _QKVO:
            continue
        proj, prefix = parts[-2], ".".join(parts[:-2])
        f = f.detach().float()
        n = num_kv_heads if proj in ("k_proj", "v_proj") else num_heads
        if proj == "o_proj":
            if f.shape[1] != n * head_dim:
                raise ValueError(f"{name}: {f.shape[1]} input columns != {n} heads x {head_dim}")
            per_head = f.reshape(f.shape[0], n, head_dim).sum((0, 2))
        else:
            if f.shape[0] != n * head_dim:
                raise ValueError(f"{name}: {f.shape[0]} output rows != {n} heads x {head_dim}")
            per_head = f.reshape(n, head_dim, -1).sum((1, 2))
        out[f"{name}|head"] = per_head
        attn.setdefault(prefix, {})[proj] = per_head
    group = num_heads // num_kv_heads
    for prefix, d in attn.items():
        total = torch.zeros(num_heads)
        for proj in ("q_proj", "o_proj"):
            if proj in d:
                total = total + d[proj]
        for proj in ("k_proj", "v_proj"):
            if proj in d:
                total = total + d[proj].repeat_interleave(group) / group
        out[f"{prefix}|head"] = total
    return out
