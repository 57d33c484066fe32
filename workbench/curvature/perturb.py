"""Concentrated, reversible Gaussian perturbations of Fisher-ranked groups, and their risk.

The percolation experiment of the curvature design notes (seed 004): put the same
relative noise on a fraction ``C`` (the *concentration*) of the channels or heads,
chosen as the groups of **largest** (``rank="top"``), **smallest** (``"bottom"``) or
**random** group Fisher, and compare the loss increase.

Groups (``key``), as :mod:`workbench.curvature.groups` defines them; every group is a list
of *parts* (a parameter slice):

* ``"channel"``: one output row of every 2-D weight with a ``"<name>|channel"`` key
  (1-D parameters such as norm scales are not perturbed); the group Fisher is the key's
  value, ``F_g = sum_{i in row} F_ii``.
* ``"input"``: one input column of every 2-D weight with a ``"<name>|input"`` key.
* ``"head"``: query head ``h`` of every attention module with a ``"<attention>|head"``
  key: the ``head_dim`` rows of ``q_proj`` and the ``head_dim`` columns of ``o_proj``
  that belong to ``h`` only, plus the rows of its ``k_proj`` / ``v_proj`` head when no
  key/value head is shared (``num_kv_heads == num_heads``). Under grouped-query attention
  the shared key/value heads are **not** perturbed (they belong to several query heads).
  Groups are ranked by the combined ``"<attention>|head"`` value (which includes the
  shared k/v Fisher split among the query heads, see :mod:`.groups`); the risk uses the
  Fisher of the perturbed parts only (``"<q_proj>|head"[h] + "<o_proj>|head"[h]``, plus
  k/v when not shared).

Noise (our definition, following the seed's "eps x row sd"): every part ``p`` of a
selected group gets ``delta = eps * sd_p * z`` with ``z ~ N(0, I)`` (seeded) and
``sd_p = sqrt(mean((w_p - mean(w_p))^2))`` the population standard deviation of the
part's weights **before** the perturbation, so the noise is relative to the scale of each
row/column/head slice.

Risk score (pre-perturbation, seed 004's "Fisher-weighted expected loss increase"): for a
group with parts ``p`` and group Fisher ``F_p = sum_{i in p} F_ii`` of each part, the
expected second-order loss increase of that noise under the diagonal-Fisher quadratic
model ``L(theta + delta) - L(theta) ~ 0.5 delta^T diag(F) delta`` is exactly

    risk_g = E_z[0.5 sum_p sum_{i in p} F_ii eps^2 sd_p^2 z_i^2] = 0.5 eps^2 sum_p sd_p^2 F_p

(in nats when ``F`` is the Fisher of the mean token loss). It needs only the group
values, no per-parameter Fisher. It assumes ``theta`` is near a minimum (gradient term
dropped) and the Fisher approximates the Hessian (true Fisher = GGN for softmax
cross-entropy); its sum over the selected groups is the predicted increase of the
perturbation (:attr:`GroupPerturbation.predicted_increase`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import pandas as pd
import torch
from torch import Tensor, nn

from workbench.core.checks import check_choice, check_range
from workbench.curvature.groups import head_config

GROUP_KEYS = ("channel", "input", "head")
RANKS = ("top", "random", "bottom")
_QKVO = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class _Part:
    """One parameter slice of a group: ``param.select(dim, ...)[start:stop]``."""
    param: str
    dim: int  # 0: rows, 1: columns
    start: int
    stop: int
    fisher: float  # sum of the diagonal Fisher over the slice


def _parts(w: Tensor, part: _Part) -> Tensor:
    return w[part.start:part.stop] if part.dim == 0 else w[:, part.start:part.stop]


def _groups(model: nn.Module, group_fisher: Mapping[str, Tensor], key: str):
    """``[(group name, rank value, [parts])]`` in the order of ``group_fisher``."""
    named = dict(model.named_parameters())
    out = []
    if key in ("channel", "input"):
        for k, v in group_fisher.items():
            name, _, kind = k.partition("|")
            if kind != key:
                continue
            if name not in named:
                raise ValueError(f"group_fisher: key {k!r} names no parameter of the model")
            p = named[name]
            if p.ndim != 2:
                continue
            dim = 0 if key == "channel" else 1
            if v.numel() != p.shape[dim]:
                raise ValueError(f"group_fisher: {k!r} has {v.numel()} values but {name} has "
                                 f"{p.shape[dim]} {'rows' if dim == 0 else 'columns'}")
            vals = v.detach().double().cpu()
            for i in range(v.numel()):
                f = float(vals[i])
                out.append((f"{k}:{i}", f, [_Part(name, dim, i, i + 1, f)]))
        return out
    n_heads, n_kv, head_dim = head_config(model, None, None, None)
    modules = dict(model.named_modules())
    for k, v in group_fisher.items():
        prefix, _, kind = k.partition("|")
        if kind != "head" or prefix.endswith(".weight"):
            continue
        if prefix not in modules:
            raise ValueError(f"group_fisher: key {k!r} names no module of the model")
        if not n_heads:
            raise ValueError("key='head' needs a model config with num_attention_heads")
        if v.numel() != n_heads:
            raise ValueError(f"group_fisher: {k!r} has {v.numel()} values, the model "
                             f"{n_heads} heads")
        per = {p: group_fisher.get(f"{prefix}.{p}.weight|head") for p in _QKVO}
        missing = [p for p in ("q_proj", "o_proj") if per[p] is None]
        if missing:
            raise ValueError(f"group_fisher: key='head' needs the per-projection keys "
                             f"'{prefix}.<proj>.weight|head' (missing {missing}); use "
                             "collect_group_fisher or group_fisher with the model")
        shared = n_kv != n_heads
        vals = v.detach().double().cpu()
        for h in range(n_heads):
            sl = (h * head_dim, (h + 1) * head_dim)
            parts = [_Part(f"{prefix}.q_proj.weight", 0, *sl, float(per["q_proj"][h])),
                     _Part(f"{prefix}.o_proj.weight", 1, *sl, float(per["o_proj"][h]))]
            if not shared:
                parts += [_Part(f"{prefix}.{p}.weight", 0, *sl, float(per[p][h]))
                          for p in ("k_proj", "v_proj") if per[p] is not None]
            out.append((f"{k}:{h}", float(vals[h]), parts))
    return out


def _sd(w: Tensor) -> float:
    return float(w.detach().double().std(unbiased=False)) if w.numel() else 0.0


def group_risk(model: nn.Module, group_fisher: Mapping[str, Tensor], key: str = "channel",
               eps: float = 1.0) -> pd.DataFrame:
    """Pre-perturbation risk of every group (module docstring), without perturbing.

    Args:
        model: The model whose weights would be perturbed (for ``sd_p``).
        group_fisher: Output of :func:`~workbench.curvature.collect_group_fisher` (or
            :func:`~workbench.curvature.group_fisher` with the model).
        key: ``"channel"``, ``"input"`` or ``"head"``.
        eps: Noise scale in units of each part's weight sd.

    Returns:
        One row per group, in the order of ``group_fisher``: ``group`` (``"<key>:<i>"``),
        ``fisher`` (the ranking value), ``fisher_perturbed`` (``sum_p F_p``), ``n_weights``,
        ``risk`` (``0.5 eps^2 sum_p sd_p^2 F_p``).
    """
    _check(key=key, eps=eps)
    named = dict(model.named_parameters())
    rows = []
    for name, f, parts in _groups(model, group_fisher, key):
        sds = [_sd(_parts(named[p.param], p)) for p in parts]
        rows.append(dict(group=name, fisher=f, fisher_perturbed=sum(p.fisher for p in parts),
                         n_weights=sum(_parts(named[p.param], p).numel() for p in parts),
                         risk=0.5 * eps ** 2 * sum(s ** 2 * p.fisher
                                                   for s, p in zip(sds, parts))))
    if not rows:
        raise ValueError(f"group_fisher has no {key!r} groups of 2-D weights of the model "
                         f"(keys like {list(group_fisher)[:3]})")
    return pd.DataFrame(rows)


def _check(**kw):
    if "key" in kw:
        check_choice("key", kw["key"], GROUP_KEYS)
    if "rank" in kw:
        check_choice("rank", kw["rank"], RANKS)
    if "eps" in kw:
        check_range("eps", kw["eps"], 0.0)
    if "concentration" in kw:
        check_range("concentration", kw["concentration"], 0.0, 1.0)
    if "seed" in kw:
        check_range("seed", kw["seed"], 0, integer=True)


def select_groups(values: Tensor, n: int, rank: str, generator: torch.Generator) -> Tensor:
    """Indices of ``n`` of the ``values``: the largest (``"top"``; ties by position), the
    smallest (``"bottom"``) or a uniform random subset (``"random"``, from ``generator``).
    """
    _check(rank=rank)
    if rank == "random":
        return torch.randperm(values.numel(), generator=generator)[:n]
    order = torch.argsort(values, descending=rank == "top", stable=True)
    return order[:n]


@dataclass
class GroupPerturbation:
    """A perturbation in place; :meth:`restore` (or leaving the ``with`` block) puts the
    exact original weights back.

    Attributes:
        groups: The selected groups (rows of :func:`group_risk`, plus ``sd`` per part
            as a list and ``selected_rank`` = 0 for the first selected).
        key, rank, concentration, eps, seed: The arguments.
        n_groups: Number of groups of that kind in the model.
    """
    model: nn.Module
    groups: pd.DataFrame
    key: str
    rank: str
    concentration: float
    eps: float
    seed: int
    n_groups: int
    _saved: list = field(default_factory=list, repr=False)
    restored: bool = False

    @property
    def predicted_increase(self) -> float:
        """Sum of the selected groups' risk scores (predicted loss increase, nats)."""
        return float(self.groups.risk.sum()) if len(self.groups) else 0.0

    @torch.no_grad()
    def restore(self) -> None:
        """Copy the saved original slices back (bit-exact); idempotent."""
        if self.restored:
            return
        named = dict(self.model.named_parameters())
        for part, original in reversed(self._saved):
            _parts(named[part.param].data, part).copy_(original)
        self._saved.clear()
        self.restored = True

    def __enter__(self) -> "GroupPerturbation":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


@torch.no_grad()
def perturb_groups(model: nn.Module, group_fisher: Mapping[str, Tensor], key: str,
                   concentration: float, eps: float, *, seed: int,
                   rank: str = "top") -> GroupPerturbation:
    """Add Gaussian noise to a fraction ``concentration`` of the groups, ranked by Fisher.

    ``n = round(concentration * n_groups)`` groups of kind ``key`` are chosen over the
    whole model (all layers ranked together) by their group Fisher (``rank="top"``:
    largest, ``"bottom"``: smallest, ``"random"``: uniform, seeded), and every part ``p``
    of a chosen group gets ``eps * sd_p * z``, ``z ~ N(0, I)`` (module docstring). The
    model is changed in place; the returned handle restores it exactly::

        with perturb_groups(lm, g, "channel", 0.05, 4.0, seed=0) as p:
            ppl = wb.perplexity(lm, tokens)
        # weights are back, bit for bit

    Args:
        model: The model (parameters changed in place).
        group_fisher: Output of :func:`~workbench.curvature.collect_group_fisher`.
        key: ``"channel"``, ``"input"`` or ``"head"`` (module docstring).
        concentration: Fraction ``C`` of the groups, in ``[0, 1]``.
        eps: Noise scale in units of each part's weight sd (``>= 0``).
        seed: Seed of the random choice (``rank="random"``) and of the noise ``z``.
        rank: ``"top"``, ``"random"`` or ``"bottom"``.

    Returns:
        A :class:`GroupPerturbation` (context manager) with the selected groups and their
        risk scores.

    Raises:
        ValueError: Bad ``key`` / ``rank`` / ``concentration`` / ``eps`` / ``seed``, no
            group of that kind, or group values that do not fit the model's weights.
    """
    _check(key=key, rank=rank, eps=eps, concentration=concentration, seed=seed)
    table = _groups(model, group_fisher, key)
    if not table:
        raise ValueError(f"group_fisher has no {key!r} groups of 2-D weights of the model "
                         f"(keys like {list(group_fisher)[:3]})")
    gen = torch.Generator().manual_seed(int(seed))
    values = torch.tensor([f for _, f, _ in table], dtype=torch.float64)
    n = int(round(float(concentration) * len(table)))
    chosen = select_groups(values, n, rank, gen).tolist()
    named = dict(model.named_parameters())
    handle = GroupPerturbation(model, pd.DataFrame(), key, rank, float(concentration),
                               float(eps), int(seed), len(table))
    rows = []
    for order, i in enumerate(chosen):
        name, f, parts = table[i]
        sds, risk = [], 0.0
        for part in parts:
            w = _parts(named[part.param].data, part)
            sd = _sd(w)
            handle._saved.append((part, w.clone()))
            z = torch.randn(w.shape, generator=gen, dtype=torch.float32)
            w.add_((float(eps) * sd * z).to(device=w.device, dtype=w.dtype))
            sds.append(sd)
            risk += 0.5 * float(eps) ** 2 * sd ** 2 * part.fisher
        rows.append(dict(group=name, fisher=f, fisher_perturbed=sum(p.fisher for p in parts),
                         n_weights=sum(_parts(named[p.param], p).numel() for p in parts),
                         risk=risk, sd=sds, selected_rank=order))
    handle.groups = pd.DataFrame(rows, columns=["group", "fisher", "fisher_perturbed",
                                                "n_weights", "risk", "sd", "selected_rank"])
    return handle
