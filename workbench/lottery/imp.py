"""Lottery tickets: iterative magnitude pruning (IMP) with rewinding and retraining.

Semantics follow open_lth's "levels" (Frankle & Carbin 2019; Frankle et al. 2020):

* **Round 0** trains the dense model for ``steps_per_round`` steps, starting from the
  model as passed in (normally the pre-trained weights, ``θ0``). Its record is the dense
  reference ("before pruning").
* **Round r >= 1** scores the weights *trained in round r-1* (magnitude by default, or
  any :func:`workbench.pruning.scores.importance` kind), prunes to the round's target
  sparsity (entries pruned earlier stay pruned; super weights get score ``+inf`` when
  ``protect_sw``), **rewinds** the surviving weights, then retrains ``steps_per_round``
  steps with the mask enforced (:func:`workbench.lottery.train.train_masked`, a fresh AdamW each
  round, as in open_lth).

Schedules (targets are *cumulative* sparsities of the prunable weights):

* ``constant``: prune ``prune_pct`` of the *remaining* weights each round, target
  ``1 - (1 - p)^r``. Counts are exact: the kept count after round r is
  ``N - round(N * (1 - (1 - p)^r))`` (per tensor for ``scope="layer"``).
* ``gradual``: follow ``targets`` (strictly increasing, one round each; ``n_rounds`` is
  then ``len(targets)``).
* ``oneshot``: prune ``prune_pct`` at round 1, rewind once; later rounds keep that mask
  and continue training without rewinding (same total budget as the iterative runs).

Rewind targets (``init``), applied to every parameter after pruning:

* ``pretrained``: the weights at the start of the run (``θ0``).
* ``rewind``: the weights after ``rewind_step`` steps of round 0 (``k = 0`` is ``θ0``).
* ``xavier`` / ``kaiming``: the prunable weight matrices get a fresh Xavier-normal
  (``std = sqrt(2 / (fan_in + fan_out))``) or Kaiming-normal (``std = sqrt(2 /
  fan_in)``) draw, seeded by ``seed`` and identical in every round (one fixed ``θ0'``);
  all other parameters (embeddings, norms, head) rewind to ``θ0``.

Controls (seed 002's "positive and negative controls"):

* ``positive``: the same procedure with every target 0 (train and rewind, never prune).
* ``negative``: aggressive pruning, ``negative_prune_pct`` (default 50%) of the remaining
  weights each round, constant schedule, whatever ``schedule`` says.

Per round one tidy record (see :data:`RECORD_COLUMNS`), plus the loss curve and the
per-tensor sparsity. A checkpoint is written after each finished round
(``output_dir/checkpoints/round_XXX.pt``, only the latest kept); calling
:func:`run_imp` again with the same ``output_dir`` and config resumes after the last
finished round and yields the same records as an uninterrupted run (on CPU).

Robustness summary (seed 000), from the records by :func:`robustness_summary`, with
``retained_r = ppl_0 / ppl_r`` (quality retained vs the dense round-0 model; 1 = as
good as dense, > 1 better):

* ``curve``: (sparsity, val_ppl, retained) per round;
* ``winning_ticket_score``: ``retained`` at the sparsest round (> 1: the ticket beats the
  dense model trained with the same budget); ``is_winning_ticket``: score >=
  ``1 - max_quality_loss``;
* ``optimal_sparsity``: the highest achieved sparsity with ``retained >= 1 -
  max_quality_loss`` (default 5% quality loss, i.e. perplexity at most ~5.3% higher);
* ``critical_sparsity``: the sparsity where ``retained`` first falls to 0.5 (perplexity
  doubles), linearly interpolated between rounds; ``None`` if it never does.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from workbench.core import io
from workbench.core.evaluate import perplexity
from workbench.pruning.scores import importance
from workbench.pruning.masks import prunable_parameters, select_masks
from workbench.lottery.superweights import protect_scores, super_weight_status
from workbench.lottery.schema import (  # noqa: F401  (re-exported)
    CONTROLS, IMP_SCOPES, INITS, RANKS, REINIT_SCHEMES, REWIND_TO, SCHEDULES, IMPConfig,
    config_fields, design_keys,
)
from workbench.lottery.train import train_masked

#: Fraction of a round's last steps averaged into ``train_loss``.
TRAIN_LOSS_TAIL = 0.25
CHECKPOINT_VERSION = 1

RECORD_COLUMNS = (
    "round", "target_sparsity", "sparsity", "density", "n_kept", "n_prunable", "val_ppl",
    "val_ppl_pruned", "train_loss", "sw_total", "sw_kept", "sw_zeroed", "sw_survival",
    "sw_value_drift", "mask_jaccard_prev", "rewound",
)


@dataclass
class IMPResult:
    """Output of :func:`run_imp`.

    Attributes:
        records: One row per round (:data:`RECORD_COLUMNS` + labels + config columns).
        losses: ``round, step, loss, lr`` per optimizer step.
        layer_sparsity: ``round, param, sparsity`` per prunable tensor.
        summary: :func:`robustness_summary` of ``records``.
        masks: Final keep-masks (``None`` when returned from a completed checkpoint).
        resumed_from: Last finished round found in a checkpoint, or ``None``.
        seconds: Wall time of this call, seconds.
    """

    records: Any
    losses: Any
    layer_sparsity: Any
    summary: dict[str, Any]
    masks: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    resumed_from: int | None = None
    seconds: float = 0.0


# ----------------------------------------------------------------------------- pieces
def reinit_weights(
    reference: Mapping[str, torch.Tensor], names: Sequence[str], kind: str, *, seed: int
) -> dict[str, torch.Tensor]:
    """Fresh Xavier- or Kaiming-normal draws for ``names`` (2-D weights ``[out, in]``).

    Args:
        reference: ``{name: tensor}`` giving shapes/dtypes (e.g. a state dict).
        names: Which tensors to draw, in this order (the draw order is part of the seed).
        kind: ``"xavier"`` (``std = sqrt(2 / (fan_in + fan_out))``) or ``"kaiming"``
            (``std = sqrt(2 / fan_in)``, ReLU gain, fan-in mode).
        seed: Generator seed.

    Returns:
        ``{name: new CPU tensor}``.
    """
    if kind not in ("xavier", "kaiming", "normal"):
        raise ValueError(f"kind must be one of ('xavier', 'kaiming', 'normal'), got {kind!r}")
    gen = torch.Generator().manual_seed(int(seed) + 7919)
    out = {}
    for name in names:
        ref = reference[name]
        w = torch.empty(ref.shape, dtype=torch.float32)
        if kind == "xavier":
            nn.init.xavier_normal_(w, generator=gen)
        elif kind == "normal":
            nn.init.normal_(w, std=0.02, generator=gen)
        else:
            nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu", generator=gen)
        out[name] = w.to(ref.dtype)
    return out


def _scores(model: nn.Module, kind: str, names: Sequence[str], calib: torch.Tensor) -> dict:
    scores = importance(model, kind, data=None if kind == "magnitude" else calib)
    missing = [n for n in names if n not in scores]
    if missing:
        raise ValueError(f"importance kind {kind!r} gave no scores for {missing[:3]}")
    return {n: scores[n].detach().float().to(model.get_parameter(n).device) for n in names}


def _nested(scores: dict, masks: dict) -> dict:
    """Entries already pruned get a score below every other, so masks stay nested."""
    low = min(float(s.amin()) for s in scores.values() if s.numel()) - 1.0
    if not math.isfinite(low):
        raise ValueError("importance scores must be finite (got inf or NaN)")
    return {n: s.masked_fill(~masks[n].to(s.device), low) for n, s in scores.items()}


def _jaccard_kept(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """Jaccard index of the kept sets of two mask dicts (same names and shapes)."""
    both = sum(int(torch.count_nonzero(a[n] & b[n])) for n in a)
    either = sum(int(torch.count_nonzero(a[n] | b[n])) for n in a)
    return both / either if either else 1.0


def _sw_fields(super_weights, masks, model) -> dict[str, Any]:
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


def _tail_mean(losses: list[float]) -> float:
    if not losses:
        return float("nan")
    k = max(1, math.ceil(TRAIN_LOSS_TAIL * len(losses)))
    return float(np.mean(losses[-k:]))


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- summary
def robustness_summary(records, *, max_quality_loss: float = 0.05,
                       metric: str = "val_ppl") -> dict[str, Any]:
    """Sparsity-performance curve, winning-ticket score, optimal and critical sparsity.

    Args:
        records: IMP records (DataFrame or list of dicts) with ``round``, ``sparsity``
            and ``metric``; round 0 is the dense reference.
        max_quality_loss: Allowed quality loss for ``optimal_sparsity`` (fraction, in
            ``[0, 1)``).
        metric: A lower-is-better column (perplexity).

    Returns:
        Dict with ``dense_<metric>``, ``curve`` (list of ``round, sparsity, <metric>,
        retained``), ``winning_ticket_score``, ``is_winning_ticket``,
        ``optimal_sparsity``, ``critical_sparsity`` (``None`` when never reached) and
        ``max_quality_loss``. See the module docstring for the definitions.
    """
    import pandas as pd

    if not 0.0 <= max_quality_loss < 1.0:
        raise ValueError(f"max_quality_loss must be in [0, 1), got {max_quality_loss!r}")
    df = pd.DataFrame(records).sort_values("round")
    if df.empty or metric not in df:
        raise ValueError(f"records must be non-empty and have a {metric!r} column")
    dense = float(df[metric].iloc[0])
    curve = []
    for _, row in df.iterrows():
        value = float(row[metric])
        retained = dense / value if value > 0 and math.isfinite(value) else 0.0
        curve.append(dict(round=int(row["round"]), sparsity=float(row["sparsity"]),
                          **{metric: value}, retained=retained))
    ok = [c["sparsity"] for c in curve if c["retained"] >= 1.0 - max_quality_loss]
    critical = None
    for a, b in zip(curve, curve[1:]):
        if a["retained"] > 0.5 >= b["retained"]:
            span = a["retained"] - b["retained"]
            frac = (a["retained"] - 0.5) / span if span > 0 else 0.0
            critical = a["sparsity"] + frac * (b["sparsity"] - a["sparsity"])
            break
    if critical is None and curve and curve[0]["retained"] <= 0.5:
        critical = curve[0]["sparsity"]
    sparsest = max(curve, key=lambda c: (c["sparsity"], c["round"]))
    score = sparsest["retained"]
    return {
        f"dense_{metric}": dense,
        "curve": curve,
        "winning_ticket_score": score,
        "is_winning_ticket": bool(score >= 1.0 - max_quality_loss),
        "optimal_sparsity": max(ok) if ok else 0.0,
        "critical_sparsity": critical,
        "max_quality_loss": max_quality_loss,
    }


# ----------------------------------------------------------------------------- checkpoints
def _checkpoint_dir(output_dir) -> Path | None:
    return None if output_dir is None else Path(output_dir) / "checkpoints"


def _latest_checkpoint(ckdir: Path | None) -> Path | None:
    if ckdir is None or not ckdir.is_dir():
        return None
    done = ckdir / "complete.pt"
    if done.is_file():
        return done
    rounds = sorted(ckdir.glob("round_*.pt"))
    return rounds[-1] if rounds else None


def _save_checkpoint(ckdir: Path, name: str, payload: dict) -> Path:
    target = ckdir / name
    with io.atomic_path(target) as tmp:
        torch.save(payload, tmp)
    for old in ckdir.glob("round_*.pt"):
        if old != target:
            old.unlink(missing_ok=True)
    return target


# ----------------------------------------------------------------------------- main loop
def run_imp(
    model: nn.Module,
    train_blocks: torch.Tensor,
    val_blocks: torch.Tensor,
    config: IMPConfig | None = None,
    *,
    super_weights: Sequence[Mapping[str, Any]] = (),
    output_dir: str | os.PathLike | None = None,
    labels: Mapping[str, Any] | None = None,
    keep_final_weights: bool = False,
    max_quality_loss: float = 0.05,
    progress: bool = True,
    on_round_end: Callable[[dict], None] | None = None,
    on_rewind: Callable[[int, nn.Module, dict], None] | None = None,
    **overrides: Any,
) -> IMPResult:
    """Run iterative magnitude pruning with rewinding and retraining.

    Args:
        model: The model in its starting state (``θ0``, normally pre-trained). Trained
            and pruned in place. When resuming, pass it freshly loaded again: the
            checkpoint restores the round weights, ``θ0`` is read from this model.
        train_blocks: ``LongTensor[n, seq_len]`` training tokens.
        val_blocks: ``LongTensor[m, val_seq_len]`` validation tokens.
        config: An :class:`IMPConfig`; ``overrides`` replace its fields (or build one).
        super_weights: SW records (:func:`workbench.find_super_weights`) to protect (if
            ``config.protect_sw``) and track.
        output_dir: Folder for ``checkpoints/``; ``None`` disables checkpointing.
        labels: Extra constant columns for every record (e.g. ``experiment``, ``model``).
        keep_final_weights: Keep the last round's weights and masks in the final
            checkpoint (otherwise it keeps only the tables, a few kB).
        max_quality_loss: For :func:`robustness_summary`.
        progress: Progress bars.
        on_round_end: Called with each finished record after its checkpoint is written.
        on_rewind: Called as ``on_rewind(round, model, masks)`` right after prune +
            rewind, before retraining (for inspection).

    Returns:
        An :class:`IMPResult`.

    Raises:
        ValueError: Bad configuration, or a checkpoint in ``output_dir`` from a different
            configuration.
    """
    import pandas as pd

    t_start = time.perf_counter()
    config = dataclasses.replace(config or IMPConfig(), **overrides) if overrides else (
        config or IMPConfig())
    cfg = config
    labels = dict(labels or {})
    super_weights = list(super_weights)
    targets = cfg.round_targets()
    n_rounds = len(targets)
    device = next(model.parameters()).device
    names = list(prunable_parameters(model))
    if not names:
        raise ValueError("model has no prunable weight matrices inside transformer blocks")
    theta0 = _cpu_state(model)
    if cfg.init != "pretrained":
        raise NotImplementedError("random θ0 (init != 'pretrained') lands in the next commit")
    fresh = (reinit_weights(theta0, names, cfg.reinit_scheme, seed=cfg.seed)
             if cfg.rewind_to == "reinit" else {})
    calib = train_blocks[: cfg.n_calibration]
    ckdir = _checkpoint_dir(output_dir)

    records: list[dict] = []
    loss_rows: list[dict] = []
    layer_rows: list[dict] = []
    masks = {n: torch.ones_like(model.get_parameter(n), dtype=torch.bool) for n in names}
    rewind_state: dict | None = None
    start_round = 0
    resumed_from = None

    ckpt = _latest_checkpoint(ckdir)
    if ckpt is not None:
        payload = torch.load(ckpt, map_location="cpu", weights_only=False)
        if payload.get("config") != cfg.to_dict() or payload.get("labels") != labels:
            raise ValueError(
                f"output_dir {output_dir} holds a checkpoint of a different configuration; "
                "use a new output_dir or delete its checkpoints/ folder"
            )
        records, loss_rows, layer_rows = (payload["records"], payload["losses"],
                                          payload["layer_sparsity"])
        resumed_from = int(payload["round"])
        if payload.get("complete"):
            if payload.get("state") is not None:
                model.load_state_dict(payload["state"])
            final_masks = payload.get("masks")
            recs = pd.DataFrame(records)
            return IMPResult(recs, pd.DataFrame(loss_rows), pd.DataFrame(layer_rows),
                             robustness_summary(recs, max_quality_loss=max_quality_loss),
                             masks=final_masks, resumed_from=resumed_from,
                             seconds=time.perf_counter() - t_start)
        model.load_state_dict(payload["state"])
        masks = {n: m.to(device) for n, m in payload["masks"].items()}
        start_round = resumed_from + 1
        if cfg.rewind_step > 0:
            rewind_state = torch.load(ckdir / "rewind.pt", map_location="cpu",
                                      weights_only=True)
    masks = {n: m.to(device) for n, m in masks.items()}

    def rewind_to() -> dict[str, torch.Tensor]:
        if cfg.rewind_step > 0:
            return rewind_state
        if fresh:
            return {**theta0, **fresh}
        return theta0

    train_kw = dict(batch_size=cfg.batch_size, lr=cfg.lr, lr_schedule=cfg.lr_schedule,
                    warmup_steps=cfg.warmup_steps, grad_accum=cfg.grad_accum,
                    weight_decay=cfg.weight_decay, autocast=cfg.autocast,
                    compile=cfg.compile, progress=progress)
    n_prunable = sum(m.numel() for m in masks.values())

    for rnd in range(start_round, n_rounds + 1):
        target = 0.0 if rnd == 0 else targets[rnd - 1]
        prev = masks
        rewound = False
        val_pruned = float("nan")
        if rnd > 0 and not (cfg.schedule == "oneshot" and cfg.control != "negative"
                            and rnd >= 2):
            scores = _nested(_scores(model, cfg.importance_kind, names, calib), masks)
            if cfg.protect_sw and super_weights:
                scores = protect_scores(scores, super_weights)
            masks = select_masks(scores, target, scope=cfg.scope)
            masks = {n: masks[n].to(device) for n in names}
            model.load_state_dict(rewind_to())
            with torch.no_grad():
                for n in names:
                    model.get_parameter(n).mul_(masks[n])
            rewound = True
            if on_rewind is not None:
                on_rewind(rnd, model, masks)
            if cfg.eval_pruned:
                val_pruned = perplexity(model, val_blocks, batch_size=cfg.eval_batch_size,
                                        progress=False)
        snap = cfg.rewind_step if (rnd == 0 and cfg.rewind_step > 0) else None
        result = train_masked(model, train_blocks, steps=cfg.steps_per_round,
                              masks=masks if rnd > 0 else None, seed=cfg.seed * 100003 + rnd,
                              snapshot_step=snap, desc=f"round {rnd}", **train_kw)
        if snap is not None:
            rewind_state = result.snapshot
            if ckdir is not None:
                with io.atomic_path(ckdir / "rewind.pt") as tmp:
                    torch.save(rewind_state, tmp)
        val = perplexity(model, val_blocks, batch_size=cfg.eval_batch_size, progress=False)
        kept_per = {n: int(torch.count_nonzero(m)) for n, m in masks.items()}
        n_kept = sum(kept_per.values())
        record = {
            **labels,
            "round": rnd,
            "target_sparsity": target,
            "sparsity": 1.0 - n_kept / n_prunable,
            "density": n_kept / n_prunable,
            "n_kept": n_kept,
            "n_prunable": n_prunable,
            "val_ppl": val,
            "val_ppl_pruned": val_pruned,
            "train_loss": _tail_mean(result.losses),
            **_sw_fields(super_weights, masks, model),
            "mask_jaccard_prev": _jaccard_kept(prev, masks) if rnd > 0 else float("nan"),
            "rewound": rewound,
            **{k: v for k, v in cfg.to_dict().items() if k != "targets"},
            "targets": None if cfg.targets is None else ",".join(map(str, cfg.targets)),
        }
        records.append(record)
        loss_rows.extend(dict(round=rnd, step=i, loss=loss, lr=lr)
                         for i, (loss, lr) in enumerate(zip(result.losses, result.lrs)))
        layer_rows.extend(dict(round=rnd, param=n, sparsity=1.0 - kept_per[n] / m.numel())
                          for n, m in masks.items())
        if ckdir is not None:
            _save_checkpoint(ckdir, f"round_{rnd:03d}.pt", dict(
                version=CHECKPOINT_VERSION, config=cfg.to_dict(), labels=labels, round=rnd,
                complete=False, state=_cpu_state(model),
                masks={n: m.cpu() for n, m in masks.items()},
                records=records, losses=loss_rows, layer_sparsity=layer_rows,
            ))
        if on_round_end is not None:
            on_round_end(record)

    if ckdir is not None:
        _save_checkpoint(ckdir, "complete.pt", dict(
            version=CHECKPOINT_VERSION, config=cfg.to_dict(), labels=labels, round=n_rounds,
            complete=True, state=_cpu_state(model) if keep_final_weights else None,
            masks={n: m.cpu() for n, m in masks.items()} if keep_final_weights else None,
            records=records, losses=loss_rows, layer_sparsity=layer_rows,
        ))
        for old in list(ckdir.glob("round_*.pt")) + [ckdir / "rewind.pt"]:
            old.unlink(missing_ok=True)
    recs = pd.DataFrame(records)
    return IMPResult(recs, pd.DataFrame(loss_rows), pd.DataFrame(layer_rows),
                     robustness_summary(recs, max_quality_loss=max_quality_loss),
                     masks=masks, resumed_from=resumed_from,
                     seconds=time.perf_counter() - t_start)
