"""The pieces of one IMP round: which weights are ranked, the prune step, the rewind, the
super-weight fields (pre-trained and emergent) and the round's record.

:func:`workbench.lottery.imp.run_imp` strings these together; each is usable alone.
Mask operations come from :mod:`workbench.pruning.masks` (``select_masks``,
``apply_masks``, ``mask_overlap``).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from workbench.core.checks import check_choice
from workbench.pruning.masks import apply_masks, mask_overlap, prunable_parameters, select_masks
from workbench.pruning.scores import importance
from workbench.lottery.schema import RANKS, IMPConfig
from workbench.lottery.superweights import (
    find_super_weights, projection_module_name, protect_scores, super_weight_status,
)

#: Fraction of a round's last steps averaged into ``train_loss``.
TRAIN_LOSS_TAIL = 0.25
#: Columns of the emergent rows of the super-weight table.
EMERGENT_COLUMNS = ("source", "round", "layer", "param", "row", "col", "value",
                    "input_activation", "output_activation", "output_ratio", "pretrained",
                    "kept")


def ranked_parameters(model: nn.Module, rank: str = "block_linear") -> dict[str, nn.Parameter]:
    """The weights IMP ranks and prunes.

    Args:
        model: The model.
        rank: ``"block_linear"``: the weight matrices of the transformer blocks' linear
            layers (:func:`workbench.pruning.masks.prunable_parameters`, the default of
            the one-shot pruning methods); ``"all_matrices"``: every parameter with >= 2
            dimensions, token/position embeddings and the LM head included (a head tied
            to the embedding is one tensor, listed once), as the origin study ranks all
            parameters globally. Norm scales and biases are never ranked.

    Returns:
        ``{name: parameter}`` in ``named_parameters`` order.
    """
    check_choice("rank", rank, RANKS)
    if rank == "block_linear":
        return dict(prunable_parameters(model))
    return {n: p for n, p in model.named_parameters() if p.dim() >= 2}


def round_scores(model: nn.Module, cfg: IMPConfig, names: Sequence[str],
                 calibration_tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Importance of the ranked weights (float32, on the weights' device).

    ``rank="all_matrices"`` supports ``score_kind="magnitude"`` only (the other score
    kinds score the blocks' linear layers).
    """
    if cfg.rank == "all_matrices":
        if cfg.score_kind != "magnitude":
            raise ValueError("rank='all_matrices' supports score_kind='magnitude' only, "
                             f"got score_kind={cfg.score_kind!r}")
        return {n: model.get_parameter(n).detach().abs().float() for n in names}
    score_kind = cfg.score_kind
    scores = importance(model, score_kind,
                        tokens=None if score_kind == "magnitude" else calibration_tokens)
    missing = [n for n in names if n not in scores]
    if missing:
        raise ValueError(f"score kind {score_kind!r} gave no scores for {missing[:3]}")
    return {n: scores[n].detach().float().to(model.get_parameter(n).device) for n in names}


def nested_scores(scores: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]):
    """Entries already pruned get a score below every other, so masks stay nested."""
    low = min(float(s.amin()) for s in scores.values() if s.numel()) - 1.0
    if not math.isfinite(low):
        raise ValueError("importance scores must be finite (got inf or NaN)")
    return {n: s.masked_fill(~masks[n].to(s.device), low) for n, s in scores.items()}


def prune_step(model: nn.Module, cfg: IMPConfig, masks: Mapping[str, torch.Tensor],
               target: float, calibration_tokens: torch.Tensor,
               super_weights: Sequence[Mapping[str, Any]] = ()) -> dict[str, torch.Tensor]:
    """Masks of the next round: rank the current (trained) weights, keep earlier prunes,
    protect the super weights when ``cfg.protect_sw``, prune to cumulative ``target``."""
    names = list(masks)
    scores = nested_scores(round_scores(model, cfg, names, calibration_tokens), masks)
    if cfg.protect_sw and super_weights:
        scores = protect_scores(scores, super_weights)
    new = select_masks(scores, target, scope=cfg.scope)
    return {n: new[n].to(masks[n].device) for n in names}


@torch.no_grad()
def rewind(model: nn.Module, state: Mapping[str, torch.Tensor],
           masks: Mapping[str, torch.Tensor]) -> None:
    """Load the rewind target ``state`` (a state dict) into every parameter, then zero
    the pruned entries (:func:`workbench.pruning.masks.apply_masks`)."""
    model.load_state_dict(state)
    apply_masks(model, masks)


def rewinds_in(cfg: IMPConfig, rnd: int) -> bool:
    """Whether round ``rnd`` prunes and rewinds (the one-shot schedule does so in round 1
    only; later one-shot rounds keep the mask and continue training)."""
    if rnd <= 0:
        return False
    return not (cfg.schedule == "oneshot" and cfg.control != "negative" and rnd >= 2)


def tail_mean(losses: Sequence[float]) -> float:
    """Mean of the last :data:`TRAIN_LOSS_TAIL` of a round's losses (NaN when empty)."""
    if not losses:
        return float("nan")
    k = max(1, math.ceil(TRAIN_LOSS_TAIL * len(losses)))
    return float(np.mean(losses[-k:]))


# ----------------------------------------------------------------------------- super weights
def sw_fields(super_weights: Sequence[Mapping[str, Any]], masks, model) -> dict[str, Any]:
    """Record fields of the pre-trained super weights under ``masks`` (see RECORD_COLUMNS)."""
    total = len(super_weights)
    if not total:
        return dict(sw_total=0, sw_kept=0, sw_zeroed=0, sw_survival=float("nan"),
                    sw_value_drift=float("nan"))
    status = super_weight_status(super_weights, masks=masks, weights=model)
    kept = [s for s in status if s["kept"]]
    drifts = [s["rel_drift"] for s in kept if not math.isnan(s["rel_drift"])]
    return dict(sw_total=total, sw_kept=len(kept), sw_zeroed=total - len(kept),
                sw_survival=len(kept) / total,
                sw_value_drift=float(np.mean(drifts)) if drifts else float("nan"))


def emergent_super_weights(model: nn.Module, tokens: torch.Tensor, cfg: IMPConfig, rnd: int,
                           masks: Mapping[str, torch.Tensor],
                           pretrained: Sequence[Mapping[str, Any]] = ()) -> list[dict]:
    """Super weights of the weights trained in round ``rnd`` (Yu et al. 2024 detector,
    :func:`workbench.lottery.superweights.find_super_weights` with ``cfg.sw_threshold``
    and ``cfg.sw_spike_ratio``), one row each (:data:`EMERGENT_COLUMNS`): ``pretrained``
    says whether its coordinate is one of the pre-trained model's super weights,
    ``kept`` whether the round's mask keeps it."""
    found = find_super_weights(model, tokens, threshold=cfg.sw_threshold,
                               spike_ratio=cfg.sw_spike_ratio,
                               module_name=projection_module_name(model))
    known = {(s["param"], int(s["row"]), int(s["col"])) for s in pretrained}
    rows = []
    for sw in found:
        pos = (sw["param"], int(sw["row"]), int(sw["col"]))
        kept = bool(masks[pos[0]][pos[1], pos[2]]) if pos[0] in masks else True
        rows.append(dict(source="emergent", round=rnd, layer=sw["layer"], param=pos[0],
                         row=pos[1], col=pos[2], value=sw["value"],
                         input_activation=sw["input_activation"],
                         output_activation=sw["output_activation"],
                         output_ratio=sw["output_ratio"], pretrained=pos in known, kept=kept))
    return rows


def _kept_fraction(rows: Sequence[Mapping[str, Any]], masks) -> float:
    if not rows:
        return float("nan")
    kept = [bool(masks[r["param"]][r["row"], r["col"]]) if r["param"] in masks else True
            for r in rows]
    return float(np.mean(kept))


def emergent_fields(current: Sequence[Mapping], history: Sequence[Mapping], rnd: int,
                    masks) -> dict[str, Any]:
    """Record fields of the emergent super weights.

    ``esw_total``: found after this round's training; ``esw_pretrained``: of those, at a
    pre-trained SW coordinate; ``esw_survival``: fraction of the SWs that emerged in round
    ``rnd - 1`` kept by this round's mask (NaN in round 0 or when none emerged);
    ``esw0_survival``: the same for the SWs that emerged in the dense round 0.
    """
    previous = [r for r in history if r["round"] == rnd - 1]
    first = [r for r in history if r["round"] == 0]
    return dict(esw_total=len(current), esw_pretrained=sum(bool(r["pretrained"])
                                                          for r in current),
                esw_survival=_kept_fraction(previous, masks) if rnd > 0 else float("nan"),
                esw0_survival=_kept_fraction(first, masks) if rnd > 0 else float("nan"))


# ----------------------------------------------------------------------------- record
def round_record(*, cfg: IMPConfig, labels: Mapping[str, Any], rnd: int, target: float,
                 masks, prev_masks, val_ppl: float, val_ppl_pruned: float,
                 losses: Sequence[float], rewound: bool, sw: Mapping[str, Any],
                 esw: Mapping[str, Any], budget: Mapping[str, Any] | None = None
                 ) -> dict[str, Any]:
    """One row of the records table (:data:`workbench.lottery.imp.RECORD_COLUMNS`, the
    labels, and every config field as a column; ``targets`` as a comma-joined string).
    ``budget``: the token columns (:func:`workbench.lottery.budget.record_fields`)."""
    n_kept = sum(int(torch.count_nonzero(m)) for m in masks.values())
    n_prunable = sum(m.numel() for m in masks.values())
    jaccard = (mask_overlap(prev_masks, masks)["jaccard_kept"] if rnd > 0 else float("nan"))
    config = cfg.to_dict()
    config["targets"] = None if cfg.targets is None else ",".join(map(str, cfg.targets))
    return {
        **labels, "round": rnd, "target_sparsity": target,
        "sparsity": 1.0 - n_kept / n_prunable, "density": n_kept / n_prunable,
        "n_kept": n_kept, "n_prunable": n_prunable, "val_ppl": val_ppl,
        "val_ppl_pruned": val_ppl_pruned, "train_loss": tail_mean(losses), **sw, **esw,
        "mask_jaccard_prev": jaccard, "rewound": rewound, **dict(budget or {}), **config,
    }


def layer_rows(rnd: int, masks) -> list[dict[str, Any]]:
    """``round, param, sparsity`` per ranked tensor."""
    return [dict(round=rnd, param=n, sparsity=1.0 - int(torch.count_nonzero(m)) / m.numel())
            for n, m in masks.items()]
