"""Lottery tickets: iterative magnitude pruning (IMP) with rewinding and retraining.

Semantics follow open_lth's "levels" (Frankle & Carbin 2019; Frankle et al. 2020). Every
parameter is declared once in :class:`workbench.lottery.schema.IMPConfig`.

* **θ0** (``init``, :mod:`workbench.lottery.init`): ``pretrained`` keeps the model as
  passed in; ``xavier`` / ``kaiming`` / ``normal`` replace every parameter by a fresh
  draw of that scheme (embeddings and head included, norms 1, biases 0, seeded by
  ``seed``). θ0 is both the weights round 0 trains *and* the rewind target.
* **Round 0** trains θ0 (dense) for ``steps_per_round`` steps; its record is the dense
  reference.
* **Round r >= 1** uses the masks chosen from the weights *trained in round r-1*:
  ranked (``rank``: the blocks' linear layers, or every weight matrix), scored
  (magnitude by default, or any score kind), pruned to the round's cumulative target
  (entries pruned earlier stay pruned; pre-trained super weights get score ``+inf`` when
  ``protect_sw``), then every parameter is **rewound** and the pruned entries zeroed, and
  the model is retrained ``steps_per_round`` steps with the mask enforced
  (:func:`workbench.lottery.train.train_masked`, a fresh AdamW each round, as in
  open_lth).

Rewind targets (``rewind_to``):

* ``init``: θ0, or with ``rewind_step = k > 0`` the weights after ``k`` steps of round 0
  (late rewinding, Frankle et al. 2020).
* ``reinit``: the control of Frankle & Carbin: the ranked tensors get a fresh draw of
  ``reinit_scheme`` (seeded by ``seed``, one fixed draw for all rounds, different from
  θ0's draw), all other parameters rewind to θ0. ``init="pretrained", rewind_to="reinit"``
  is the former "train the pre-trained model, rewind to Xavier" arm.

Schedules (targets are *cumulative* sparsities of the ranked weights):

* ``constant``: prune ``prune_pct`` of the *remaining* weights each round, target
  ``1 - (1 - p)^r``. Counts are exact: the kept count after round r is
  ``N - round(N * (1 - (1 - p)^r))`` (per tensor for ``scope="layer"``).
* ``gradual``: follow ``targets`` (strictly increasing, one round each; ``n_rounds`` is
  then ``len(targets)``).
* ``oneshot``: prune ``prune_pct`` at round 1, rewind once; later rounds keep that mask
  and continue training without rewinding (same total budget as the iterative runs).

Super weights: the pre-trained model's SWs (passed in) are tracked under the masks
(``sw_*`` columns); after each round's training the detector runs on the trained
weights (:func:`workbench.lottery.rounds.emergent_super_weights`), the emergent SWs go to
``IMPResult.emergent`` and their count, coincidence with the pre-trained coordinates and
survival under the next masks to the ``esw_*`` columns.

Controls (the experiment table's positive and negative controls):

* ``positive``: the same procedure with every target 0 (train and rewind, never prune).
* ``negative``: aggressive pruning, ``negative_prune_pct`` (default 50%) of the remaining
  weights each round, constant schedule, whatever ``schedule`` says.

Per round one tidy record (see :data:`RECORD_COLUMNS`, plus every config field), the
loss curve, the per-tensor sparsity and the emergent SWs. A checkpoint is written after
each finished round (:mod:`workbench.lottery.checkpoint`: safetensors + JSON with
SHA-256 checksums, bit-packed masks, no pickle; only the latest kept); calling
:func:`run_imp` again with the same ``output_dir`` and config resumes after the last
finished round and yields the same records as an uninterrupted run (on CPU).

Token budgets: every record carries ``tokens_per_step``, ``tokens_round``,
``tokens_total``, ``train_tokens``, ``epochs_round``, ``epochs_total`` and ``world_size``
(:mod:`workbench.lottery.budget`); a round trains ``cfg.steps_for(world_size)`` steps
(``steps_per_round``, or ``tokens_per_round`` converted at the run's world size).

Distributed (a process group is initialised, :mod:`workbench.lottery.distributed`): every
rank runs this same loop on its own windows; training is DDP; the next masks are
computed on every rank and broadcast from rank 0; evaluation and the super-weight
detector run on every rank on the same tokens and weights (identical results); only
rank 0 writes checkpoints. Every rank reads the checkpoints when resuming (a barrier
follows), so a run can resume on any number of ranks; its records then say per round
how many ranks trained it.

Robustness summary: :func:`workbench.lottery.summary.robustness_summary` (re-exported here).
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from workbench.core.checks import check_kwargs
from workbench.core.evaluate import perplexity
from workbench.pruning.params import transposed_names
from workbench.lottery import budget
from workbench.lottery import checkpoint as ckpt
from workbench.lottery import distributed
from workbench.lottery.init import init_model, reinit_weights  # noqa: F401  (re-exported)
from workbench.lottery.rounds import (
    EMERGENT_COLUMNS, emergent_fields, emergent_super_weights, layer_rows,
    prune_step, ranked_parameters, rewind, rewinds_in, round_record, sw_fields,
)
from workbench.lottery.summary import robustness_summary  # noqa: F401  (re-exported)
from workbench.lottery.schema import (  # noqa: F401  (re-exported)
    CONTROLS, IMP_SCOPES, INITS, RANKS, REINIT_SCHEMES, REWIND_TO, SCHEDULES, IMPConfig,
    config_fields, design_keys,
)
from workbench.lottery.train import input_tokens, is_sampler, train_masked

CHECKPOINT_VERSION = ckpt.VERSION

RECORD_COLUMNS = (
    "round", "target_sparsity", "sparsity", "density", "n_kept", "n_prunable", "val_ppl",
    "val_ppl_pruned", "train_loss", "sw_total", "sw_kept", "sw_zeroed", "sw_survival",
    "sw_value_drift", "esw_total", "esw_pretrained", "esw_survival", "esw0_survival",
    "mask_jaccard_prev", "rewound", *budget.BUDGET_COLUMNS,
)


@dataclass
class IMPResult:
    """Output of :func:`run_imp`.

    Attributes:
        records: One row per round (:data:`RECORD_COLUMNS` + labels + config columns).
        losses: ``round, step, loss, lr`` per optimizer step.
        layer_sparsity: ``round, param, sparsity`` per prunable tensor.
        summary: :func:`robustness_summary` of ``records``.
        masks: Final keep-masks (``None`` when returned from a completed checkpoint
            written without ``keep_final_weights``).
        resumed_from: Last finished round found in a checkpoint, or ``None``.
        seconds: Wall time of this call, seconds.
        emergent: Super weights detected after each round's training
            (:data:`workbench.lottery.rounds.EMERGENT_COLUMNS`).
    """

    records: Any
    losses: Any
    layer_sparsity: Any
    summary: dict[str, Any]
    masks: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    resumed_from: int | None = None
    seconds: float = 0.0
    emergent: Any = None


# ----------------------------------------------------------------------------- run state
@dataclass
class _Context:
    """What stays fixed during a run."""

    model: nn.Module
    cfg: IMPConfig
    labels: dict[str, Any]
    super_weights: list[dict]
    targets: list[float]
    theta0: dict[str, torch.Tensor]
    fresh: dict[str, torch.Tensor]
    train_tokens: Any
    val_tokens: torch.Tensor
    sw_input: torch.Tensor
    ckdir: Path | None
    progress: bool
    writer: bool = True
    world_size: int = 1


@dataclass
class _State:
    """What a finished round hands to the next one (and to its checkpoint)."""

    masks: dict[str, torch.Tensor]
    next_masks: dict[str, torch.Tensor] | None = None
    records: list[dict] = field(default_factory=list)
    losses: list[dict] = field(default_factory=list)
    layers: list[dict] = field(default_factory=list)
    emergent: list[dict] = field(default_factory=list)
    rewind_state: dict[str, torch.Tensor] | None = None
    last_round: int = -1
    complete: bool = False
    final: dict[str, torch.Tensor] | None = None


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def sw_input_ids(val_tokens: torch.Tensor, cfg: IMPConfig) -> torch.Tensor:
    """Detector input: the first ``cfg.sw_blocks`` validation blocks cut to
    ``cfg.sw_seq_len`` tokens (the same tokens for the pre-trained and emergent SWs)."""
    return val_tokens[: cfg.sw_blocks, : cfg.sw_seq_len]


def _prepare(model, cfg, labels, super_weights, train_tokens, val_tokens, sw_input,
             output_dir, progress) -> _Context:
    """Set θ0 (in place for the random schemes) and the fixed rewind targets."""
    if cfg.init != "pretrained":
        init_model(model, cfg.init, seed=cfg.seed)
    names = list(ranked_parameters(model, cfg.rank))
    theta0 = _cpu_state(model)
    fresh = {}
    if cfg.rewind_to == "reinit":
        fresh = reinit_weights(theta0, names, cfg.reinit_scheme, seed=cfg.seed,
                               transposed=sorted(transposed_names(model)))
    return _Context(model=model, cfg=cfg, labels=dict(labels or {}),
                    super_weights=list(super_weights), targets=cfg.round_targets(),
                    theta0=theta0, fresh=fresh, train_tokens=train_tokens,
                    val_tokens=val_tokens,
                    sw_input=sw_input if sw_input is not None else sw_input_ids(val_tokens, cfg),
                    ckdir=None if output_dir is None else Path(output_dir) / "checkpoints",
                    progress=progress, writer=distributed.is_writer(),
                    world_size=distributed.world_size())


def _fresh_state(ctx: _Context) -> _State:
    device = next(ctx.model.parameters()).device
    names = ranked_parameters(ctx.model, ctx.cfg.rank)
    return _State(masks={n: torch.ones(p.shape, dtype=torch.bool, device=device)
                         for n, p in names.items()})


def _resume(ctx: _Context) -> _State:
    """The state after the last checkpointed round (a fresh state when there is none)."""
    state = _fresh_state(ctx)
    path = ckpt.latest_checkpoint(ctx.ckdir)
    if path is None:
        return state
    payload, tensors = ckpt.read_checkpoint(path)
    if payload.get("config") != ctx.cfg.to_dict() or payload.get("labels") != ctx.labels:
        raise ValueError(f"output_dir {ctx.ckdir.parent} holds a checkpoint of a different "
                         "configuration; use a new output_dir or delete its checkpoints/ folder")
    shapes = payload["shapes"]
    state.records, state.losses = payload["records"], payload["losses"]
    state.layers, state.emergent = payload["layer_sparsity"], payload["emergent"]
    state.last_round, state.complete = int(payload["round"]), bool(payload["complete"])
    device = next(ctx.model.parameters()).device
    if any(k.startswith("mask/") for k in tensors):
        state.masks = {n: m.to(device) for n, m in
                       ckpt.unpack_masks(tensors, "mask", shapes).items()}
    if any(k.startswith("next_mask/") for k in tensors):
        state.next_masks = {n: m.to(device) for n, m in
                            ckpt.unpack_masks(tensors, "next_mask", shapes).items()}
    if any(k.startswith("state/") for k in tensors):
        ckpt.load_state_tensors(ctx.model, tensors)
        state.final = tensors if state.complete else None
    if ctx.cfg.rewind_step > 0 and not state.complete:
        state.rewind_state = ckpt.load_tensors(ctx.ckdir / "rewind.safetensors")
    return state


def _rewind_target(ctx: _Context, state: _State) -> dict[str, torch.Tensor]:
    if ctx.cfg.rewind_step > 0:
        return state.rewind_state
    if ctx.fresh:
        return {**ctx.theta0, **ctx.fresh}
    return ctx.theta0


def _evaluate(ctx: _Context) -> float:
    return perplexity(ctx.model, ctx.val_tokens, batch_size=ctx.cfg.eval_batch_size,
                      progress=False)


def _run_round(ctx: _Context, state: _State, rnd: int, hooks: Mapping[str, Callable]) -> dict:
    """Prune + rewind (when this round does), train, evaluate, detect, record."""
    cfg, model = ctx.cfg, ctx.model
    target = 0.0 if rnd == 0 else ctx.targets[rnd - 1]
    prev, rewound, val_pruned = state.masks, False, float("nan")
    if rewinds_in(cfg, rnd):
        state.masks = state.next_masks
        rewind(model, _rewind_target(ctx, state), state.masks)
        rewound = True
        if hooks.get("on_rewind") is not None:
            hooks["on_rewind"](rnd, model, state.masks)
        if cfg.eval_pruned:
            val_pruned = _evaluate(ctx)
    if hooks.get("on_round_start") is not None:
        hooks["on_round_start"](rnd, model, state.masks)
    snap = cfg.rewind_step if (rnd == 0 and cfg.rewind_step > 0) else None
    steps = cfg.steps_for(ctx.world_size)
    result = train_masked(model, ctx.train_tokens, steps=steps,
                          masks=state.masks if rnd > 0 else None,
                          seed=cfg.seed * 100003 + rnd, snapshot_step=snap,
                          desc=f"round {rnd}", progress=ctx.progress, **cfg.train_kwargs(),
                          callback=None if hooks.get("on_step") is None else
                          (lambda step: hooks["on_step"](rnd, step)))
    if snap is not None:
        state.rewind_state = result.snapshot
        if ctx.ckdir is not None and ctx.writer:
            ckpt.save_tensors(ctx.ckdir / "rewind.safetensors", result.snapshot)
    emergent = emergent_super_weights(model, ctx.sw_input, cfg, rnd, state.masks,
                                      ctx.super_weights)
    record = round_record(
        cfg=cfg, labels=ctx.labels, rnd=rnd, target=target, masks=state.masks,
        prev_masks=prev, val_ppl=_evaluate(ctx), val_ppl_pruned=val_pruned,
        losses=result.losses, rewound=rewound,
        sw=sw_fields(ctx.super_weights, state.masks, model),
        esw=emergent_fields(emergent, state.emergent, rnd, state.masks),
        budget=budget.record_fields(cfg, train_tokens=input_tokens(ctx.train_tokens),
                                    world_size=ctx.world_size, steps=steps,
                                    previous=state.records[-1] if state.records else None))
    state.records.append(record)
    state.emergent.extend(emergent)
    state.losses.extend(dict(round=rnd, step=i, loss=loss, lr=lr)
                        for i, (loss, lr) in enumerate(zip(result.losses, result.lrs)))
    state.layers.extend(layer_rows(rnd, state.masks))
    state.last_round = rnd
    return record


def _plan_next(ctx: _Context, state: _State, rnd: int) -> None:
    """Choose the next round's masks from the weights trained in round ``rnd``."""
    state.next_masks = None
    if rnd < len(ctx.targets) and rewinds_in(ctx.cfg, rnd + 1):
        state.next_masks = distributed.broadcast_masks(
            prune_step(ctx.model, ctx.cfg, state.masks, ctx.targets[rnd],
                       calibration_inputs(ctx.train_tokens, ctx.cfg), ctx.super_weights))


def calibration_inputs(train_tokens: Any, cfg: IMPConfig) -> torch.Tensor:
    """Calibration blocks of the data-dependent score kinds: the first
    ``n_calibration`` training blocks, or as many windows of a sampler drawn with a
    generator seeded by ``cfg.seed`` (the same on every rank)."""
    if is_sampler(train_tokens):
        return train_tokens.sample(cfg.n_calibration, torch.Generator().manual_seed(cfg.seed))
    return train_tokens[: cfg.n_calibration]


def _payload(ctx: _Context, state: _State, complete: bool) -> dict[str, Any]:
    return dict(config=ctx.cfg.to_dict(), labels=ctx.labels, round=state.last_round,
                complete=complete, shapes={n: list(m.shape) for n, m in state.masks.items()},
                records=state.records, losses=state.losses, layer_sparsity=state.layers,
                emergent=state.emergent)


def _checkpoint_round(ctx: _Context, state: _State, rnd: int) -> None:
    """Masks (bit-packed), next masks, and the full state only when the next round
    continues training without rewinding."""
    tensors = ckpt.pack_masks(state.masks, "mask")
    if state.next_masks is not None:
        tensors.update(ckpt.pack_masks(state.next_masks, "next_mask"))
    else:
        tensors.update(ckpt.state_tensors(ctx.model))
    ckpt.write_checkpoint(ctx.ckdir, f"round_{rnd:03d}", _payload(ctx, state, False), tensors)


def _finish(ctx: _Context, state: _State, keep_final_weights: bool) -> None:
    tensors = None
    if keep_final_weights:
        tensors = {**ckpt.pack_masks(state.masks, "mask"), **ckpt.state_tensors(ctx.model)}
    ckpt.finish_checkpoints(ctx.ckdir, _payload(ctx, state, True), tensors)


def _result(state: _State, *, masks, resumed_from, max_quality_loss, t_start) -> IMPResult:
    import pandas as pd

    records = pd.DataFrame(state.records)
    emergent = pd.DataFrame(state.emergent, columns=list(EMERGENT_COLUMNS))
    return IMPResult(records, pd.DataFrame(state.losses), pd.DataFrame(state.layers),
                     robustness_summary(records, max_quality_loss=max_quality_loss),
                     masks=masks, resumed_from=resumed_from, seconds=time.perf_counter() - t_start,
                     emergent=emergent)


# ----------------------------------------------------------------------------- main loop
def run_imp(
    model: nn.Module,
    train_tokens: torch.Tensor,
    val_tokens: torch.Tensor,
    config: IMPConfig | None = None,
    *,
    super_weights: Sequence[Mapping[str, Any]] = (),
    sw_input: torch.Tensor | None = None,
    output_dir: str | os.PathLike | None = None,
    labels: Mapping[str, Any] | None = None,
    keep_final_weights: bool = False,
    max_quality_loss: float = 0.05,
    progress: bool = True,
    on_round_end: Callable[[dict], None] | None = None,
    on_rewind: Callable[[int, nn.Module, dict], None] | None = None,
    on_round_start: Callable[[int, nn.Module, dict], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    **overrides: Any,
) -> IMPResult:
    """Run iterative magnitude pruning with rewinding and retraining (module docstring).

    Args:
        model: The model as loaded (normally pre-trained). For a random ``init`` its
            parameters are replaced in place by θ0 first. Trained and pruned in place.
            When resuming, pass it freshly loaded again: θ0 is re-created from it.
        train_tokens: ``LongTensor[n, seq_len]`` training tokens, or a window sampler
            (:func:`workbench.lottery.train.train_masked`).
        val_tokens: ``LongTensor[m, val_seq_len]`` validation tokens.
        config: An :class:`IMPConfig`; ``overrides`` (config field names only) replace
            its fields.
        super_weights: The pre-trained model's SW records
            (:func:`workbench.find_super_weights`) to protect (``protect_sw``) and track.
        sw_input: Detector input for the emergent SWs (default :func:`sw_input_ids`).
        output_dir: Folder for ``checkpoints/``; ``None`` disables checkpointing.
        labels: Extra constant columns for every record.
        keep_final_weights: Keep the final weights and masks in ``complete.safetensors``.
        max_quality_loss: For :func:`robustness_summary`.
        progress: Progress bars.
        on_round_end: Called with each finished record after its checkpoint is written.
        on_rewind: ``on_rewind(round, model, masks)`` right after prune + rewind.
        on_round_start: ``on_round_start(round, model, masks)`` right before each
            round's training (round 0 included).
        on_step: ``on_step(round, step)`` after each optimizer step of a round's training
            (``step`` as passed to ``train_masked``'s ``callback``), e.g. a heartbeat.

    Returns:
        An :class:`IMPResult`.

    Raises:
        ValueError: Bad configuration, a damaged checkpoint, or a checkpoint in
            ``output_dir`` from a different configuration.
        TypeError: An override that is not a config field.
    """
    t_start = time.perf_counter()
    check_kwargs("run_imp", overrides, [f.name for f in dataclasses.fields(IMPConfig)])
    cfg = dataclasses.replace(config or IMPConfig(), **overrides)
    ctx = _prepare(model, cfg, labels, super_weights, train_tokens, val_tokens, sw_input,
                   output_dir, progress)
    state = _resume(ctx)
    distributed.barrier()  # every rank has read the checkpoints before rank 0 writes again
    resumed_from = state.last_round if state.last_round >= 0 else None
    if state.complete:
        return _result(state, masks=state.masks if state.final is not None else None,
                       resumed_from=resumed_from, max_quality_loss=max_quality_loss,
                       t_start=t_start)
    n_rounds = len(ctx.targets)
    for rnd in range(state.last_round + 1, n_rounds + 1):
        record = _run_round(ctx, state, rnd, dict(on_rewind=on_rewind,
                                                  on_round_start=on_round_start,
                                                  on_step=on_step))
        _plan_next(ctx, state, rnd)
        if ctx.ckdir is not None and rnd < n_rounds and ctx.writer:
            _checkpoint_round(ctx, state, rnd)
        if on_round_end is not None:
            on_round_end(record)
    if ctx.ckdir is not None and ctx.writer:
        _finish(ctx, state, keep_final_weights)
    return _result(state, masks=state.masks, resumed_from=resumed_from,
                   max_quality_loss=max_quality_loss, t_start=t_start)
