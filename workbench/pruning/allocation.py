"""Layer-sparsity allocation: uniform, or OWL (outlier-weighted layerwise sparsity).

OWL (Yin et al. 2024, "Outlier Weighed Layerwise Sparsity (OWL): A Missing Secret Sauce
for Pruning LLMs to High Sparsity", ICML) gives blocks with many activation outliers a
lower sparsity. For every group ``l`` (a transformer block; a selected weight outside
every block is its own group), from Wanda scores ``|W_ij| * ||X_j||`` of the **dense**
model on the calibration tokens:

* outlier ratio ``D_l`` = share of the group's scores (all its layers together) above
  ``threshold_m`` times the group's mean score (``M = 5`` by default);
* normalised ratio ``r_l = 2 (D_l - min D) / (max D - min D)`` in ``[0, 2]`` (min-max
  normalisation scaled by 2, as in the authors' code ``luuyin/OWL``, where the densities
  are ``(D - min) / (max - min) * 2 lambda - mean + (1 - target)``; so the sparsities
  span an interval of width ``2 lambda`` around the target);
* sparsity ``s_l = target - lam * (r_l - rbar)`` with ``rbar = sum_l P_l r_l / P`` the
  mean weighted by the groups' parameter counts ``P_l``, so that the parameter-weighted
  mean sparsity equals ``target`` exactly (the authors use the plain mean, identical when
  all blocks have the same size). Default ``lam = 0.08``.

Every layer of group ``l`` is then pruned at ``s_l`` by the method (per row, per layer or
inside SparseGPT's blocks as the scope says). Choices: the scores are computed once
from the dense model (the authors' code computes them in a first pass that prunes
nothing, i.e. the same values); equal ratios give the uniform allocation.
"""

from __future__ import annotations

import torch

from workbench.core.checks import check_choice, check_range
from workbench.core.models import is_conv1d
from workbench.pruning.calibration import collect_input_statistics
from workbench.pruning.scores import wanda_score
from workbench.pruning.sequential import modules_by_block

ALLOCATIONS = ("uniform", "owl")


def _groups(model, modules) -> list[dict]:
    """Modules grouped by transformer block (others: one group each), in model order."""
    try:
        groups = [g for g in modules_by_block(model, modules) if g]
    except ValueError:  # not a transformer
        groups = []
    grouped = {n for g in groups for n in g}
    groups += [{n: m} for n, m in modules.items() if n not in grouped]
    return groups


@torch.no_grad()
def outlier_ratios(model, modules, tokens, *, threshold_m: float = 5.0,
                   batch_size: int = 8) -> tuple[list[dict], list[float], list[int]]:
    """OWL's per-group outlier ratio from the dense model's Wanda scores.

    Returns:
        ``(groups, ratios, sizes)``: the groups (``{param name: module}`` each), the share
        of each group's scores above ``threshold_m`` x its mean score, and its number of
        weights.
    """
    stats = collect_input_statistics(model, modules, tokens, batch_size=batch_size)
    groups = _groups(model, modules)
    ratios, sizes = [], []
    for group in groups:
        def scores():
            for name, mod in group.items():
                yield wanda_score(mod.weight, stats[name].norms(), is_conv1d(mod))

        total = sum(float(s.double().sum()) for s in scores())
        size = sum(mod.weight.numel() for mod in group.values())
        cut = threshold_m * total / size
        above = sum(int((s > cut).sum()) for s in scores())
        ratios.append(above / size)
        sizes.append(size)
    return groups, ratios, sizes


def owl_sparsities(ratios, sizes, target: float, *, lam: float = 0.08) -> list[float]:
    """OWL group sparsities from outlier ratios (see the module docstring).

    Args:
        ratios: Outlier ratio per group.
        sizes: Number of weights per group (the weights of the mean).
        target: Target overall sparsity.
        lam: OWL's lambda (half the width of the sparsity interval).

    Returns:
        One sparsity per group; ``sum(s * size) / sum(size) == target`` up to rounding.

    Raises:
        ValueError: A group would fall outside ``[0, 1)`` (names it and the values).
    """
    D = torch.tensor(ratios, dtype=torch.float64)
    P = torch.tensor(sizes, dtype=torch.float64)
    spread = D.max() - D.min()
    r = 2 * (D - D.min()) / spread if spread > 0 else torch.zeros_like(D)
    rbar = (P * r).sum() / P.sum()
    s = target - lam * (r - rbar)
    bad = [(i, float(v)) for i, v in enumerate(s) if not 0.0 <= float(v) < 1.0]
    if bad:
        raise ValueError(f"OWL with target sparsity {target} and lam={lam} puts group(s) "
                         f"{[i for i, _ in bad]} at sparsity {[round(v, 4) for _, v in bad]}, "
                         "outside [0, 1); lower lam or the target")
    return [float(v) for v in s]


def allocate(allocation: str, req, *, threshold_m: float = 5.0,
             lam: float = 0.08) -> tuple[dict, dict]:
    """Per-layer target sparsities for ``req`` (a :class:`~workbench.pruning.methods.PruneRequest`).

    Args:
        allocation: ``"owl"`` (``"uniform"`` needs no allocation).
        threshold_m: OWL's ``M``: a score is an outlier above ``M`` x the group mean.
        lam: OWL's ``lambda``.

    Returns:
        ``({param name: sparsity}, info)`` with ``info`` holding ``owl_groups`` (first
        parameter name of each group), ``owl_outlier_ratio``, ``owl_group_sparsity`` and
        ``layer_sparsity``.

    Raises:
        ValueError: Unknown allocation, missing calibration, N:M or global scope, or an
            infeasible target.
    """
    check_choice("allocation", allocation, ALLOCATIONS)
    check_range("threshold_m", threshold_m, 0, None, lo_open=True)
    check_range("lam", lam, 0, None)
    if req.calibration_tokens is None:
        raise ValueError("allocation='owl' needs calibration data (its outlier ratios come "
                         "from Wanda scores)")
    if req.scope_name in ("global", "n:m"):
        raise ValueError(f"allocation='owl' needs scope 'layer' or 'row', got {req.scope!r}")
    groups, ratios, sizes = outlier_ratios(req.model, req.modules, req.calibration_tokens,
                                           threshold_m=threshold_m, batch_size=req.batch_size)
    group_s = owl_sparsities(ratios, sizes, req.sparsity, lam=lam)
    layer_s = {name: s for group, s in zip(groups, group_s) for name in group}
    info = dict(owl_threshold_m=threshold_m, owl_lambda=lam,
                owl_groups=[next(iter(g)) for g in groups], owl_outlier_ratio=ratios,
                owl_group_sparsity=group_s, layer_sparsity=layer_s)
    return layer_s, info
