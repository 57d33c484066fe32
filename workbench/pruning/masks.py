"""Pruning masks: selection from scores, apply / restore, reports, overlap, save / load.

A mask set is a plain ``dict[str, torch.BoolTensor]`` keyed by parameter name, each mask
with the parameter's shape; ``True`` means *keep*.

Selection rule (:func:`select_masks`), for every comparison group of ``G`` scores:
exactly ``round(sparsity * G)`` entries are pruned: the lowest scores, with **ties broken
by position**: among equal scores the one that comes first is pruned first, where
"first" means (for ``global``) the earlier parameter in the order of the ``scores`` dict,
then the lower row-major flat index of the stored tensor; for ``row`` and ``n:m`` the
lower input (column) index. Masks are therefore reproducible bit for bit.

Scores of ``+inf`` are never pruned (use them to protect entries, e.g. super weights);
when a group has fewer finite scores than it should prune, all finite ones are pruned and
a warning says the achieved sparsity is below the target.

Orientation: ``row`` means an *output* row and ``n:m`` runs along the *input* dimension.
Parameters stored ``[in, out]`` (GPT-2's ``Conv1D``) are named in ``transposed`` so that
both follow the layer's meaning rather than its storage.
"""

from __future__ import annotations

import fnmatch
import math
import re
import warnings
from pathlib import Path
from typing import Collection, Iterable, Mapping

import torch
from torch import nn

from workbench.pruning.threshold import Source, exact_kth, global_threshold

SCOPES = ("global", "layer", "row", "n:m")
_NM = re.compile(r"^(\d+):(\d+)$")


# ----------------------------------------------------------------------------- parameters
def _linear_types() -> tuple[type, ...]:
    types: list[type] = [nn.Linear]
    try:
        from transformers.pytorch_utils import Conv1D

        types.append(Conv1D)
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


def is_transposed_module(module: nn.Module) -> bool:
    """True for modules whose weight is stored ``[in, out]`` (GPT-2 ``Conv1D``)."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover
        return False
    return isinstance(module, Conv1D)


def _matches(name: str, patterns: Iterable[str]) -> bool:
    for p in patterns:
        if fnmatch.fnmatchcase(name, p):
            return True
        try:
            if re.search(p, name):
                return True
        except re.error:
            pass
    return False


def prunable_modules(
    model: nn.Module,
    include: Collection[str] | None = None,
    exclude: Collection[str] | None = None,
) -> dict[str, nn.Module]:
    """Modules whose ``weight`` is scored/pruned, keyed by the *parameter* name.

    Default: the linear layers (``nn.Linear`` and GPT-2 ``Conv1D``) inside the
    transformer blocks, so biases, norms, embeddings and the LM head are excluded.
    ``include`` (glob or regex patterns on parameter names such as
    ``"model.layers.0.mlp.*"``) replaces the default with every linear/Conv1D weight
    whose name matches; ``exclude`` then removes matches.

    Returns:
        ``{"<module name>.weight": module}`` in model order.
    """
    linear = _linear_types()
    if include is None:
        try:
            from workbench.core.models import transformer_blocks

            blocks = transformer_blocks(model)
            block_ids = {id(m) for b in blocks for m in b.modules()}
        except ValueError:
            block_ids = None  # not a transformer: every linear layer
    out: dict[str, nn.Module] = {}
    for mname, module in model.named_modules():
        if not isinstance(module, linear):
            continue
        pname = f"{mname}.weight" if mname else "weight"
        if include is None:
            if block_ids is not None and id(module) not in block_ids:
                continue
        elif not _matches(pname, include):
            continue
        if exclude and _matches(pname, exclude):
            continue
        out[pname] = module
    return out


def prunable_parameters(model: nn.Module, include=None, exclude=None) -> dict[str, nn.Parameter]:
    """``{name: weight parameter}`` for :func:`prunable_modules`."""
    return {n: m.weight for n, m in prunable_modules(model, include, exclude).items()}


def transposed_names(model: nn.Module) -> set[str]:
    """Names of weight parameters stored ``[in, out]`` (GPT-2 ``Conv1D``)."""
    return {f"{n}.weight" for n, m in model.named_modules() if is_transposed_module(m)}


# ----------------------------------------------------------------------------- selection
def parse_scope(scope: str, n: int | None = None, m: int | None = None):
    """Normalise a scope string: returns ``(scope, n, m)`` (n kept of every m for N:M).

    Raises:
        ValueError: Unknown scope (lists the allowed ones) or bad N:M numbers.
    """
    if not isinstance(scope, str):
        raise ValueError(f"scope must be one of {SCOPES} or 'N:M' like '2:4', got {scope!r}")
    match = _NM.match(scope)
    if match:
        n, m = int(match.group(1)), int(match.group(2))
        scope = "n:m"
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES} or 'N:M' like '2:4', got {scope!r}")
    if scope == "n:m":
        n = 2 if n is None else int(n)
        m = 4 if m is None else int(m)
        if not 0 <= n < m:
            raise ValueError(f"N:M needs 0 <= n < m (n kept of every m), got n={n}, m={m}")
    return scope, n, m


def check_sparsity(sparsity: float) -> float:
    """Raise ``ValueError`` unless ``0 <= sparsity < 1``."""
    try:
        s = float(sparsity)
    except (TypeError, ValueError):
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}") from None
    if not (0.0 <= s < 1.0) or math.isnan(s):
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    return s


def _prune_lowest(groups: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask of ``groups`` ``[G, size]``: prune the ``k`` lowest of every row, ties by
    lower index; ``+inf`` never pruned."""
    if k <= 0:
        return torch.ones_like(groups, dtype=torch.bool)
    # k-th smallest per group (O(n) selection), then the first ties by index
    kth = torch.kthvalue(groups, k, dim=-1, keepdim=True).values
    below = groups < kth
    need = k - torch.count_nonzero(below, dim=-1).unsqueeze(-1)
    tie = groups == kth
    keep = ~(below | (tie & (torch.cumsum(tie, dim=-1, dtype=torch.int32) <= need)))
    inf = torch.isposinf(kth)
    if inf.any():
        keep |= torch.isposinf(groups)
        warnings.warn("some groups have fewer finite scores than the number to prune; "
                      "+inf scores were kept, so sparsity is below the target", stacklevel=3)
    return keep


def _as_rows(t: torch.Tensor, transposed: bool) -> torch.Tensor:
    """View as ``[out, in]`` (2-D); 1-D tensors become one row."""
    if t.dim() == 1:
        return t.unsqueeze(0)
    t = t.reshape(t.shape[0], -1) if t.dim() > 2 else t
    return t.t() if transposed else t


def _from_rows(mask: torch.Tensor, like: torch.Tensor, transposed: bool) -> torch.Tensor:
    if like.dim() >= 2 and transposed:
        mask = mask.t()
    return mask.reshape(like.shape).contiguous()


def select_masks(
    scores: Mapping[str, torch.Tensor],
    sparsity: float,
    *,
    scope: str = "global",
    n: int | None = None,
    m: int | None = None,
    transposed: Collection[str] = (),
    threshold_method: str = "exact",
) -> dict[str, torch.Tensor]:
    """Keep-masks (``True`` = keep) pruning the lowest scores.

    Args:
        scores: ``{name: score tensor}``; higher = more important; ``+inf`` = protected.
        sparsity: Fraction to prune in ``[0, 1)``.
        scope: ``"global"`` (one threshold over everything), ``"layer"`` (per tensor),
            ``"row"`` (per output row), ``"n:m"`` or a string like ``"2:4"`` / ``"4:8"``
            (N kept of every M consecutive inputs of a row; ``sparsity`` must equal
            ``1 - N/M``).
        n, m: N and M for ``scope="n:m"`` (default 2:4).
        transposed: Names of tensors stored ``[in, out]`` (GPT-2 ``Conv1D``), so rows
            and N:M groups follow the output/input meaning.
        threshold_method: Global scope only: ``"exact"`` (default, counts exact);
            ``"statistical"`` or ``"histogram"`` (approximate, for comparison: prune
            ``score <= threshold``, so counts may differ and the tie rule is not used).

    Returns:
        ``{name: BoolTensor}`` with each score's shape and device.

    Raises:
        ValueError: Bad sparsity, unknown scope, N:M with a width not divisible by M or a
            sparsity other than ``1 - N/M``, or NaN scores.
    """
    s = check_sparsity(sparsity)
    scope, n, m = parse_scope(scope, n, m)
    transposed = set(transposed)
    if not scores:
        return {}
    if scope == "global":
        return _select_global(scores, s, threshold_method)
    masks = {}
    for name, score in scores.items():
        tr = name in transposed
        rows = _as_rows(score.detach(), tr)
        if torch.isnan(rows).any():
            raise ValueError(f"scores[{name!r}] contains NaN")
        if scope == "layer":
            flat = score.detach().reshape(1, -1)
            k = round(s * flat.shape[1])
            masks[name] = _prune_lowest(flat, k).reshape(score.shape)
        elif scope == "row":
            k = round(s * rows.shape[1])
            masks[name] = _from_rows(_prune_lowest(rows, k), score, tr)
        else:
            if abs(s - (m - n) / m) > 1e-9:
                raise ValueError(
                    f"sparsity must be 1 - N/M = {(m - n) / m} for {n}:{m} scope, got {sparsity}"
                )
            if rows.shape[1] % m:
                raise ValueError(
                    f"N:M scope needs the input width divisible by M={m}; "
                    f"{name!r} has width {rows.shape[1]}"
                )
            groups = rows.reshape(rows.shape[0], rows.shape[1] // m, m)
            keep = _prune_lowest(groups, m - n).reshape(rows.shape)
            masks[name] = _from_rows(keep, score, tr)
    return masks


def _select_global(scores: Mapping[str, torch.Tensor], s: float, method: str) -> dict:
    n_total = sum(int(t.numel()) for t in scores.values())
    k = round(s * n_total)
    if k == 0:
        return {name: torch.ones_like(t, dtype=torch.bool) for name, t in scores.items()}
    if method != "exact":
        th = global_threshold(scores, k, method=method)
        return {name: t > th.value for name, t in scores.items()}
    th = exact_kth(scores, k, n_total=n_total)
    value = th.value
    if math.isinf(value) and value > 0:  # never prune +inf: prune every finite score
        warnings.warn("fewer finite scores than the number to prune; +inf scores were kept, "
                      "so sparsity is below the target", stacklevel=3)
        return {name: torch.isposinf(t) for name, t in scores.items()}
    ties_left = k - th.n_below  # scores == value still to prune, in order
    masks = {}
    for name, t in scores.items():
        t = t.detach()
        tf = t if t.dtype == torch.float32 else t.float()
        keep = tf > value
        if ties_left > 0:
            tie = (tf == value).reshape(-1)
            n_tie = int(tie.sum())
            if n_tie <= ties_left:
                ties_left -= n_tie
            else:
                idx = tie.nonzero().squeeze(1)[ties_left:]
                keep.view(-1)[idx] = True
                ties_left = 0
        else:
            keep |= tf == value
        masks[name] = keep
    return masks


# ----------------------------------------------------------------------------- apply
def _param_dict(model_or_params) -> dict[str, torch.Tensor]:
    if isinstance(model_or_params, nn.Module):
        return dict(model_or_params.named_parameters())
    return dict(model_or_params)


def _check_names(params: Mapping, masks: Mapping) -> None:
    missing = [n for n in masks if n not in params]
    if missing:
        raise ValueError(f"masks name parameters the model does not have: {missing[:5]}")
    for name, mask in masks.items():
        if tuple(mask.shape) != tuple(params[name].shape):
            raise ValueError(
                f"mask {name!r} has shape {tuple(mask.shape)}, parameter has "
                f"{tuple(params[name].shape)}"
            )


@torch.no_grad()
def apply_masks(model_or_params, masks: Mapping[str, torch.Tensor], *,
                keep_original: bool = False) -> dict[str, torch.Tensor] | None:
    """Zero the pruned weights in place.

    Args:
        model_or_params: An ``nn.Module`` or a mapping ``name -> Parameter/Tensor``.
        masks: Keep-masks as from :func:`select_masks`.
        keep_original: Return CPU copies of the touched tensors (for :func:`restore`).

    Returns:
        ``{name: original tensor}`` when ``keep_original``, else ``None``.

    Raises:
        ValueError: Names or shapes that do not match.
    """
    params = _param_dict(model_or_params)
    _check_names(params, masks)
    originals = {} if keep_original else None
    for name, mask in masks.items():
        p = params[name]
        if originals is not None:
            originals[name] = p.detach().to("cpu", copy=True)
        p.mul_(mask.to(device=p.device, dtype=p.dtype))
    return originals


@torch.no_grad()
def restore(model_or_params, originals: Mapping[str, torch.Tensor]) -> None:
    """Write the saved originals back (undo :func:`apply_masks`)."""
    params = _param_dict(model_or_params)
    _check_names(params, originals)
    for name, orig in originals.items():
        params[name].copy_(orig.to(params[name].device))


remove_masks = restore


@torch.no_grad()
def remove_with_noise(model_or_params, originals: Mapping[str, torch.Tensor],
                      masks: Mapping[str, torch.Tensor], *, noise: float = 0.01,
                      seed: int = 0) -> None:
    """Restore the pruned weights with Gaussian noise (seed 000's ``remove_mask_with_noise``).

    Kept weights are untouched; every pruned weight becomes
    ``original + noise * std(original tensor) * N(0, 1)`` (relative noise scale,
    seeded; ``noise=0`` is :func:`restore`).
    """
    params = _param_dict(model_or_params)
    _check_names(params, masks)
    gen = torch.Generator().manual_seed(seed)
    for name, mask in masks.items():
        p, orig = params[name], originals[name].float()
        eps = torch.randn(orig.shape, generator=gen) * (noise * float(orig.std()))
        value = torch.where(mask.cpu(), p.detach().float().cpu(), orig + eps)
        p.copy_(value.to(device=p.device, dtype=p.dtype))


def mask_gradients(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> list:
    """Register hooks that zero gradients of pruned weights; returns the hook handles."""
    params = _param_dict(model)
    _check_names(params, masks)
    handles = []
    for name, mask in masks.items():
        mk = mask.to(params[name].device)
        handles.append(params[name].register_hook(lambda g, mk=mk: g * mk.to(g.dtype)))
    return handles


# ----------------------------------------------------------------------------- reports
def sparsity_report(masks_or_model, *, include=None, exclude=None):
    """Per-tensor and total sparsity as a DataFrame.

    Args:
        masks_or_model: A mask dict (counts ``False``) or a model (counts zero weights of
            :func:`prunable_parameters`).

    Returns:
        Columns ``name, numel, kept, pruned, sparsity``; the last row is ``name="total"``.
    """
    import pandas as pd

    if isinstance(masks_or_model, nn.Module):
        tensors = {n: p.detach() != 0 for n, p in
                   prunable_parameters(masks_or_model, include, exclude).items()}
    else:
        tensors = dict(masks_or_model)
    rows = []
    for name, keep in tensors.items():
        kept = int(torch.count_nonzero(keep))
        rows.append(dict(name=name, numel=keep.numel(), kept=kept, pruned=keep.numel() - kept))
    numel = sum(r["numel"] for r in rows)
    kept = sum(r["kept"] for r in rows)
    rows.append(dict(name="total", numel=numel, kept=kept, pruned=numel - kept))
    frame = pd.DataFrame(rows)
    frame["sparsity"] = frame["pruned"] / frame["numel"].clip(lower=1)
    return frame


def mask_overlap(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], *,
                 per_layer: bool = False):
    """Agreement of two mask sets over their common names.

    Returns:
        ``dict(jaccard_pruned, jaccard_kept, hamming, hamming_fraction, numel)``: Jaccard
        index of the pruned sets and of the kept sets, the number (and fraction) of entries
        on which they differ. With ``per_layer=True`` a DataFrame with one row per name and
        a final ``"total"`` row.
    """
    import pandas as pd

    common = [n for n in a if n in b]
    if not common:
        raise ValueError("a and b have no parameter names in common")
    rows = []
    for name in common:
        x, y = a[name].bool().cpu(), b[name].to(a[name].device).bool().cpu()
        if x.shape != y.shape:
            raise ValueError(f"mask {name!r} shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
        rows.append(dict(name=name, numel=x.numel(),
                         both_pruned=int((~x & ~y).sum()), any_pruned=int((~x | ~y).sum()),
                         both_kept=int((x & y).sum()), any_kept=int((x | y).sum()),
                         hamming=int((x ^ y).sum())))
    total = {k: sum(r[k] for r in rows) for k in rows[0] if k != "name"}
    rows.append(dict(name="total", **total))

    def finish(r):
        return dict(name=r["name"], numel=r["numel"],
                    jaccard_pruned=r["both_pruned"] / r["any_pruned"] if r["any_pruned"] else 1.0,
                    jaccard_kept=r["both_kept"] / r["any_kept"] if r["any_kept"] else 1.0,
                    hamming=r["hamming"], hamming_fraction=r["hamming"] / max(r["numel"], 1))

    if per_layer:
        return pd.DataFrame([finish(r) for r in rows])
    out = finish(rows[-1])
    out.pop("name")
    return out


def overlap_matrix(masks_by_key: Mapping[str, Mapping[str, torch.Tensor]], *,
                   measure: str = "jaccard_pruned"):
    """Square DataFrame of :func:`mask_overlap` ``measure`` between every pair of mask sets."""
    import pandas as pd

    keys = list(masks_by_key)
    out = pd.DataFrame(index=keys, columns=keys, dtype=float)
    for a in keys:
        for b in keys:
            out.loc[a, b] = mask_overlap(masks_by_key[a], masks_by_key[b])[measure]
    return out


# ----------------------------------------------------------------------------- save / load
def save_masks(masks: Mapping[str, torch.Tensor], path, *, metadata: dict | None = None) -> Path:
    """Write masks to a safetensors file (atomically); ``metadata`` values become strings."""
    from safetensors.torch import save_file

    from workbench.core.io import atomic_path

    path = Path(path)
    import json

    tensors = {n: mk.detach().bool().contiguous().cpu() for n, mk in masks.items()}
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    meta["__order__"] = json.dumps(list(tensors))
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def load_masks(path, *, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read masks written by :func:`save_masks` (in the saved order)."""
    from safetensors import safe_open

    import json

    out = {}
    with safe_open(str(path), framework="pt", device=str(device)) as fh:
        meta = fh.metadata() or {}
        order = json.loads(meta["__order__"]) if "__order__" in meta else list(fh.keys())
        for name in order:
            out[name] = fh.get_tensor(name).bool()
    return out


__all__ = [
    "SCOPES", "select_masks", "apply_masks", "restore", "remove_masks", "remove_with_noise",
    "mask_gradients", "sparsity_report", "mask_overlap", "save_masks", "load_masks",
    "prunable_modules", "prunable_parameters", "transposed_names", "parse_scope",
    "check_sparsity", "Source",
]
