"""One cell of the lottery grid, end to end: the protocol behind notebook 04.

:func:`run` takes a config (an :class:`~workbench.lottery.schema.IMPConfig` or a
plain dict of overrides, validated by :meth:`IMPConfig.from_params`) and a run folder,
loads the model and the corpus the config names, detects the starting model's super
weights, runs :func:`workbench.lottery.imp.run_imp` (resuming from the folder's
checkpoints) and returns the tables, summary and manifest of the finished run, ready for
:func:`workbench.experiments.running.runs.write_run` (which lives one layer up, so the notebook
calls it). Nothing here depends on the notebook: adding a schema field needs no edit.

Budget: before anything trains, the plan is checked against the training split
(:func:`workbench.lottery.budget.check_budget`: refused above ``max_epochs`` unless
repeats are allowed); the grid checks it earlier, before any model loads.

On N processes (:mod:`workbench.lottery.distributed` has the whole story):

* this process already is one rank of several (torchrun, submitit's
  ``TorchDistributedEnvironment``): it joins the process group (NCCL on CUDA, gloo on
  CPU), runs the cell as its rank (rank 0 writes the checkpoints) and leaves the group;
* ``nproc`` > 1 (argument, or :data:`~workbench.lottery.distributed.NPROC_ENV` set by
  ``grid run --nproc N``): this process is the launcher: it starts N ranks
  (:func:`workbench.lottery.distributed.launch`, torchrun's ``elastic_launch``), waits,
  and reads the finished run back from the checkpoint rank 0 wrote (``run_imp`` returns
  a completed checkpoint without training), so notebook 04 goes on as for one process.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from workbench.core import heartbeat
from workbench.core.data import load_corpus, token_blocks
from workbench.core.models import load_model
from workbench.core.repro import seed_everything
from workbench.core.shards import VALIDATION_SEED, load_tokenizer, open_shards, shard_folder
from workbench.lottery import budget, distributed
from workbench.lottery import checkpoint as ckpt
from workbench.lottery.imp import IMPResult, run_imp
from workbench.lottery.rounds import EMERGENT_COLUMNS
from workbench.lottery.schema import IMPConfig
from workbench.lottery.superweights import find_super_weights, projection_module_name
from workbench.lottery.train import input_tokens

#: Columns notebook 04 shows of the records.
DISPLAY_COLUMNS = ("round", "target_sparsity", "sparsity", "val_ppl_pruned", "val_ppl",
                   "train_loss", "sw_kept", "sw_total", "sw_value_drift", "esw_total",
                   "esw_pretrained", "esw_survival", "mask_jaccard_prev")
#: Columns of the pre-trained rows of the super-weight table (emergent rows add
#: ``round``, ``pretrained``, ``kept``; see :data:`EMERGENT_COLUMNS`).
SW_COLUMNS = ("source", "layer", "param", "row", "col", "in_channel", "out_channel", "value",
              "input_activation", "output_activation", "output_ratio", "iteration")


@dataclass
class CellRun:
    """A finished cell.

    Attributes:
        config: The validated config.
        result: What :func:`run_imp` returned.
        super_weights: The starting model's super weights (detector records).
        tables: ``{records, losses, layer_sparsity, super_weights}`` DataFrames.
        manifest: JSON-able manifest (seed, parameters, design, timings, sizes).
    """

    config: IMPConfig
    result: IMPResult
    super_weights: list[dict]
    tables: dict[str, Any] = field(repr=False)
    manifest: dict[str, Any]


def as_config(config: IMPConfig | Mapping[str, Any] | None) -> IMPConfig:
    """An :class:`IMPConfig` from a config or a dict of overrides (validated)."""
    return config if isinstance(config, IMPConfig) else IMPConfig.from_params(config or {})


def load_inputs(cfg: IMPConfig):
    """``(model, train_tokens, val_tokens, sw_input)`` the config names (seeded by
    ``cfg.seed``); ``sw_input`` is the super-weight detector's input: ``cfg.sw_blocks``
    blocks of ``cfg.sw_seq_len`` tokens of the validation text.

    ``cfg.corpus`` a corpus name or file (:func:`workbench.core.data.load_corpus`):
    ``train_tokens`` is ``LongTensor[n, seq_len]``, every block of the tokenized train
    split; validation and super-weight blocks are seeded subsets (seed 0) of the
    validation split's blocks.

    ``cfg.corpus`` a token shard folder (:mod:`workbench.core.shards`; relative paths read
    against the project root): the folder and its tokenizer are checked against
    ``cfg.model``'s tokenizer before the model loads; ``train_tokens`` is a
    :class:`~workbench.core.shards.WindowSampler` of the train split (random windows of
    ``cfg.seq_len`` drawn by the training loop, no split loaded whole); validation and
    super-weight inputs are :meth:`~workbench.core.shards.ShardSet.fixed_windows` of the
    validation split with seed :data:`~workbench.core.shards.VALIDATION_SEED` (the same
    for every run); their offsets are in ``train_tokens.eval_windows`` and
    ``train_tokens.record()`` (for the run's manifest).
    """
    seed_everything(cfg.seed)
    device = None if cfg.device == "auto" else cfg.device
    folder = shard_folder(cfg.corpus)
    if folder is not None:
        shards = open_shards(folder)  # missing / truncated folder: error before the model
        shards.check_tokenizer(load_tokenizer(cfg.model), name=cfg.model)
        train = shards.sampler("train", cfg.seq_len)
        val_tokens, val_offsets = shards.fixed_windows(
            "validation", cfg.n_val_blocks, cfg.val_seq_len, seed=VALIDATION_SEED)
        sw_input, sw_offsets = shards.fixed_windows(
            "validation", cfg.sw_blocks, cfg.sw_seq_len, seed=VALIDATION_SEED)
        train.eval_windows = dict(
            validation=dict(split="validation", seed=VALIDATION_SEED, seq_len=cfg.val_seq_len,
                            offsets=val_offsets),
            sw_input=dict(split="validation", seed=VALIDATION_SEED, seq_len=cfg.sw_seq_len,
                          offsets=sw_offsets))
        model, _ = load_model(cfg.model, device=device)
        return model, train, val_tokens, sw_input
    model, tokenizer = load_model(cfg.model, device=device)
    text = load_corpus(cfg.corpus)  # fixed document split; the seed drives batches and θ0
    train_tokens = token_blocks(tokenizer, text.train, cfg.seq_len)
    val_tokens = token_blocks(tokenizer, text.validation, cfg.val_seq_len,
                              n_blocks=cfg.n_val_blocks)
    sw_input = token_blocks(tokenizer, text.validation, cfg.sw_seq_len, n_blocks=cfg.sw_blocks)
    return model, train_tokens, val_tokens, sw_input


def detect_super_weights(model: torch.nn.Module, sw_input: torch.Tensor,
                         cfg: IMPConfig) -> list[dict]:
    """Super weights of the starting model on ``sw_input`` (the same detector settings and
    tokens as the emergent ones)."""
    return find_super_weights(model, sw_input, threshold=cfg.sw_threshold,
                              spike_ratio=cfg.sw_spike_ratio,
                              module_name=projection_module_name(model))


def run_tables(result: IMPResult, super_weights: list[dict]) -> dict[str, Any]:
    """The run's tables: pre-trained SWs (``source="pretrained"``) and emergent ones
    (``source="emergent"``, one row per round found) share ``super_weights``."""
    import pandas as pd

    pre = pd.DataFrame([dict(s, source="pretrained") for s in super_weights],
                       columns=list(SW_COLUMNS))
    em = result.emergent if result.emergent is not None else pd.DataFrame(
        columns=list(EMERGENT_COLUMNS))
    frames = [f for f in (pre, em) if len(f)]
    sw = (pd.concat(frames, ignore_index=True) if frames else
          pd.DataFrame(columns=list(dict.fromkeys(SW_COLUMNS + EMERGENT_COLUMNS))))
    if "round" in sw:
        sw["round"] = sw["round"].astype("Int64")
    return dict(records=result.records, losses=result.losses,
                layer_sparsity=result.layer_sparsity, super_weights=sw)


def run_manifest(cfg: IMPConfig, result: IMPResult, *, seconds: float,
                 n_train_blocks: int, **extra: Any) -> dict[str, Any]:
    """Manifest of a cell: seed, every parameter, the design factors, timings (and
    ``extra``: world size, train tokens, ...)."""
    return dict(seed=cfg.seed, parameters=cfg.to_dict(), design=cfg.design(),
                rank=cfg.rank, seconds=seconds, resumed_from=result.resumed_from,
                n_train_blocks=int(n_train_blocks), **extra)


def _nproc(nproc: int | None) -> int:
    value = nproc if nproc is not None else os.environ.get(distributed.NPROC_ENV, "1")
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if isinstance(value, bool) or n < 1:
        raise ValueError(f"nproc ({distributed.NPROC_ENV}) must be a positive integer, "
                         f"got {value!r}")
    return n


def _finished_round(run_dir: str | os.PathLike | None) -> int | None:
    """Last finished round of the checkpoints in ``run_dir`` (``None``: none)."""
    if run_dir is None:
        return None
    path = ckpt.latest_checkpoint(Path(run_dir) / "checkpoints")
    if path is None:
        return None
    return int(ckpt.read_checkpoint(path)[0]["round"])


def run(config: IMPConfig | Mapping[str, Any] | None,
        run_dir: str | os.PathLike | None, *, progress: bool = True,
        nproc: int | None = None) -> CellRun:
    """Run one cell (resuming from ``run_dir/checkpoints``); see the module docstring.

    Args:
        config: An :class:`IMPConfig` or a dict of overrides.
        run_dir: Run folder (checkpoints go to ``run_dir/checkpoints``); ``None``: no
            checkpoints.
        progress: Progress bars.
        nproc: Ranks to launch (``None``: :data:`~workbench.lottery.distributed.NPROC_ENV`,
            default 1). Ignored when this process already is a rank.

    Returns:
        A :class:`CellRun` (on every rank; only rank 0's writes reach the folder).

    Raises:
        workbench.lottery.budget.BudgetExceeded: The plan is over ``max_epochs``.
        workbench.lottery.distributed.RanksInterrupted: A launched rank was killed.
        workbench.lottery.distributed.RanksFailed: A launched rank raised.
    """
    t0 = time.perf_counter()
    cfg = as_config(config)
    n = _nproc(nproc)
    launched, resumed_from = False, None
    if n > 1 and not distributed.in_distributed_env():
        if run_dir is None:
            raise ValueError(f"nproc={n} needs a run_dir: the ranks hand the run back "
                             "through its checkpoints")
        budget.check_budget(cfg, budget.train_split_tokens(cfg), n)  # before any rank starts
        resumed_from = _finished_round(run_dir)
        distributed.launch(n, cfg.to_dict(), run_dir, progress=progress)
        launched = True
    joined = distributed.init_from_env(cfg.device)
    try:
        model, train_tokens, val_tokens, sw_input = load_inputs(cfg)
        n_train = input_tokens(train_tokens)
        world = n if launched else distributed.world_size()
        if not launched:
            budget.check_budget(cfg, n_train, world)
        sws = detect_super_weights(model, sw_input, cfg)
        result = run_imp(model, train_tokens, val_tokens, cfg, super_weights=sws,
                         sw_input=sw_input, output_dir=None if run_dir is None else Path(run_dir),
                         progress=progress, **heartbeat_hooks(cfg, world))
    finally:
        if joined:
            distributed.shutdown()
    if launched:
        result.resumed_from = resumed_from
    n_blocks = train_tokens.shape[0] if isinstance(train_tokens, torch.Tensor) else 0
    extra = {}
    if hasattr(train_tokens, "record"):  # token shards: the folder, its hash, the windows
        extra["train_data"] = train_tokens.record()
    manifest = run_manifest(cfg, result, seconds=time.perf_counter() - t0,
                            n_train_blocks=int(n_blocks), train_tokens=n_train,
                            world_size=world, **extra)
    return CellRun(cfg, result, sws, run_tables(result, sws), manifest)


def heartbeat_hooks(cfg: IMPConfig, world_size: int = 1) -> dict[str, Any]:
    """``run_imp`` hooks that report the round, the step, tokens/s and the ETA to the
    driver's heartbeat file (:mod:`workbench.core.heartbeat`); ``{}`` when the process has
    none (an interactive kernel) or is not the writing rank (rank 0 alone writes into the
    cell folder), so they cost nothing there.

    Progress is counted in optimizer steps over all rounds (round ``r`` of ``n_rounds``,
    round 0 being the dense training): ``done = r * steps_per_round + step``.
    """
    if not heartbeat.enabled() or not distributed.is_writer():
        return {}
    steps, n_rounds = int(cfg.steps_for(world_size)), len(cfg.round_targets())
    tokens_per_step = cfg.tokens_per_step(world_size)
    clock = {"round": None, "t0": time.perf_counter()}

    def on_round_start(rnd: int, model, masks) -> None:
        if clock["round"] is None:  # first round of this process (maybe resumed)
            heartbeat.start("IMP", total=(n_rounds + 1) * steps, done=rnd * steps,
                            unit="step", n_rounds=n_rounds, steps=steps)
        clock.update(round=rnd, t0=time.perf_counter())
        heartbeat.beat(force=True, round=rnd, step=0, item=f"round {rnd}/{n_rounds} training",
                       done=rnd * steps)

    def on_step(rnd: int, step: int) -> None:
        elapsed = time.perf_counter() - clock["t0"]
        heartbeat.beat(round=rnd, step=step + 1, done=rnd * steps + step + 1,
                       tokens_per_s=round((step + 1) * tokens_per_step / max(elapsed, 1e-9)),
                       item=f"round {rnd}/{n_rounds} training")

    def on_round_end(record: dict) -> None:
        rnd = int(record.get("round", clock["round"] or 0))
        heartbeat.beat(force=True, round=rnd, step=steps, done=(rnd + 1) * steps,
                       item=f"round {rnd}/{n_rounds} done, val ppl "
                            f"{float(record.get('val_ppl', float('nan'))):.2f}")

    return dict(on_round_start=on_round_start, on_step=on_step, on_round_end=on_round_end)


def sentence(run: CellRun) -> str:
    """One line: final sparsity, perplexity change, SW survival, winning-ticket score."""
    rec = run.result.records
    last = rec.iloc[-1]
    cfg = run.config
    return (f"{cfg.experiment} seed {cfg.seed} (θ0 {cfg.init}, rank {cfg.rank}): sparsity "
            f"{last['sparsity']:.3f} after {len(rec) - 1} rounds of "
            f"{int(last.get('tokens_round', 0)) // max(1, int(last.get('tokens_per_step', 1)))}"
            f" steps ({last.get('epochs_round', float('nan')):.3g} epochs each), val ppl {rec['val_ppl'].iloc[0]:.2f} -> {last['val_ppl']:.2f}; "
            f"{int(last['sw_kept'])}/{int(last['sw_total'])} pre-trained and "
            f"{int(last['esw_total'])} emergent super weights; winning-ticket score "
            f"{run.result.summary['winning_ticket_score']:.3f}")
