"""Pruning masks: selection from scores (global, per layer, per row, N:M).

Operations on a model (apply / restore / noise / gradient masking) live in
:mod:`workbench.pruning.mask_ops`, reports and overlap in
:mod:`workbench.pruning.mask_report`, save / load in :mod:`workbench.pruning.mask_io`,
the choice of prunable weights in :mod:`workbench.pruning.params`; all of their public
names are importable from here as well.

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

import math
import re
import warnings
from typing import Collection, Mapping

import torch

from workbench.core.checks import check_choice, renamed_keywords
from workbench.pruning.threshold import (
    DEFAULT_TOLERANCE,
    THRESHOLD_ALGORITHMS,
    Source,
    exact_kth,
    global_threshold,
)

SCOPES = ("global", "layer", "row", "n:m")
_NM = re.compile(r"^(\d+):(\d+)$")


from workbench.pruning.params import (  # noqa: F401  (re-exported)
    prunable_modules,
    prunable_parameters,
    transposed_names,
)


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


def prune_lowest(groups: torch.Tensor, k: int) -> torch.Tensor:
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


@renamed_keywords(threshold_method="threshold_algorithm")
def select_masks(
    scores: Mapping[str, torch.Tensor],
    sparsity: float,
    *,
    scope: str = "global",
    n: int | None = None,
    m: int | None = None,
    transposed: Collection[str] = (),
    threshold_algorithm: str = "exact",
    threshold_tolerance: float = DEFAULT_TOLERANCE,
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
        threshold_algorithm: Global scope only: ``"exact"`` (default, counts exact, the
            tie rule above); ``"statistical"`` or ``"histogram"``
            (:mod:`workbench.pruning.threshold`; approximate: prune ``score <=
            threshold``, no tie rule, the count within ``threshold_tolerance`` or a
            :class:`~workbench.pruning.threshold.ThresholdToleranceError`).
        threshold_tolerance: Allowed ``|pruned - round(sparsity * n)| / n`` of the
            approximate methods (default 1e-3).

    Returns:
        ``{name: BoolTensor}`` with each score's shape and device.

    Raises:
        ValueError: Bad sparsity, unknown scope or threshold algorithm, an approximate
            threshold algorithm with a scope other than ``global``, N:M with a width not
            divisible by M or a sparsity other than ``1 - N/M``, NaN scores, or empty
            ``scores``.
        ThresholdToleranceError: An approximate algorithm missed ``threshold_tolerance``.
        TypeError: ``scores`` not a dict of tensors.
    """
    s = check_sparsity(sparsity)
    scope, n, m = parse_scope(scope, n, m)
    check_threshold_algorithm(threshold_algorithm, scope)
    transposed = set(transposed)
    if not isinstance(scores, Mapping):
        raise TypeError(f"scores must be a dict {{param name: score tensor}}, "
                        f"got {type(scores).__name__}")
    if not scores:
        raise ValueError("scores is empty ({}): there is nothing to select masks from")
    bad = [k for k, v in scores.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise TypeError(f"scores[{bad[0]!r}] must be a tensor, "
                        f"got {type(scores[bad[0]]).__name__}")
    if scope == "global":
        return _select_global(scores, s, threshold_algorithm, threshold_tolerance)
    masks = {}
    for name, score in scores.items():
        tr = name in transposed
        rows = _as_rows(score.detach(), tr)
        if torch.isnan(rows).any():
            raise ValueError(f"scores[{name!r}] contains NaN")
        if scope == "layer":
            flat = score.detach().reshape(1, -1)
            k = round(s * flat.shape[1])
            masks[name] = prune_lowest(flat, k).reshape(score.shape)
        elif scope == "row":
            k = round(s * rows.shape[1])
            masks[name] = _from_rows(prune_lowest(rows, k), score, tr)
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
            keep = prune_lowest(groups, m - n).reshape(rows.shape)
            masks[name] = _from_rows(keep, score, tr)
    return masks


def check_threshold_algorithm(threshold_algorithm: str, scope: str = "global") -> str:
    """Raise ``ValueError`` for an unknown threshold algorithm, or an approximate one with a
    scope other than ``global`` (per-group selections are always exact)."""
    check_choice("threshold_algorithm", threshold_algorithm, THRESHOLD_ALGORITHMS)
    if threshold_algorithm != "exact" and scope != "global":
        raise ValueError(f"threshold_algorithm={threshold_algorithm!r} needs scope='global' "
                         "(the only scope with one threshold over all scores), got "
                         f"scope={scope!r}")
    return threshold_algorithm


def _select_global(scores: Mapping[str, torch.Tensor], s: float, algorithm: str,
                   tolerance: float = DEFAULT_TOLERANCE) -> dict:
    n_total = sum(int(t.numel()) for t in scores.values())
    k = round(s * n_total)
    if k == 0:
        return {name: torch.ones_like(t, dtype=torch.bool) for name, t in scores.items()}
    if algorithm != "exact":
        th = global_threshold(scores, k, algorithm=algorithm, tolerance=tolerance)
        if math.isinf(th.value) and th.value > 0:
            warnings.warn("fewer finite scores than the number to prune; +inf scores were "
                          "kept, so sparsity is below the target", stacklevel=3)
        # compare in float32 (the threshold is a float32 value; a bf16 comparison rounds)
        return {name: (t.detach().float() > th.value) | torch.isposinf(t)
                for name, t in scores.items()}
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


# ----------------------------------------------------------------------------- re-exports
# Operations, reports and I/O live in their own modules; importable from here too.
from workbench.pruning.mask_io import load_masks, save_masks  # noqa: E402
from workbench.pruning.mask_ops import (  # noqa: E402
    apply_masks,
    mask_gradients,
    remove_with_noise,
    restore,
)
from workbench.pruning.mask_report import mask_overlap, overlap_matrix, sparsity_report  # noqa: E402

__all__ = [
    "SCOPES", "select_masks", "apply_masks", "restore", "remove_with_noise",
    "mask_gradients", "sparsity_report", "mask_overlap", "overlap_matrix", "save_masks",
    "load_masks", "prunable_modules", "prunable_parameters", "transposed_names",
    "parse_scope", "check_sparsity", "Source",
    "check_threshold_algorithm",
]
