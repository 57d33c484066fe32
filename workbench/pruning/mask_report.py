"""Reports on masks: sparsity per tensor, agreement between mask sets."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from workbench.pruning.params import prunable_parameters


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
