"""Token budgets of a lottery cell: stated, recorded, and checked against the training split.

Every round's record carries (:func:`record_fields`):

* ``tokens_per_step``: ``batch_size * seq_len * grad_accum * world_size`` (batch and
  accumulation per rank; :meth:`IMPConfig.tokens_per_step`);
* ``tokens_round``: tokens trained in the round (``steps * tokens_per_step``);
  ``tokens_total``: in this and every earlier round;
* ``epochs_round`` / ``epochs_total``: the same in passes over the training split
  (``train_tokens``: ``n_blocks * seq_len`` for the in-memory blocks, ``n_tokens`` of a
  shard split's sampler);
* ``world_size``: ranks that trained the round (a resumed cell may change it).

**The check** (:func:`check_budget`). The unit that decides memorisation is a *stretch*
of training without a rewind: one round for the iterative schedules (every round
restarts from the rewind target), rounds 1..R together for the one-shot schedule (it
keeps training without rewinding). A plan whose stretch exceeds ``max_epochs`` passes
(a budget field, default 1.0) over its training split is refused with
:class:`BudgetExceeded` before anything trains: by ``grid run`` for every cell (before a
model loads), and again at the start of a cell. ``--allow-repeats`` (environment variable
:data:`ALLOW_REPEATS_ENV` in the cell's kernel) runs it anyway; the records then show
``epochs_round > max_epochs`` and the findings say so.

Choice: the check counts tokens as the loop draws them (with replacement), so "epochs"
is expected passes, not distinct tokens seen.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from workbench.core import paths
from workbench.core.data import load_corpus, token_blocks
from workbench.core.models import load_model
from workbench.core.shards import shard_folder
from workbench.core.tokenizers import ByteTokenizer
from workbench.lottery.schema import IMPConfig

#: Environment variable that allows a plan over ``max_epochs`` (``grid run --allow-repeats``).
ALLOW_REPEATS_ENV = "WORKBENCH_ALLOW_REPEATS"
#: Record columns this module adds.
BUDGET_COLUMNS = ("tokens_per_step", "tokens_round", "tokens_total", "train_tokens",
                  "epochs_round", "epochs_total", "world_size")


class BudgetExceeded(ValueError):
    """A plan that trains more passes over its training split than ``max_epochs``."""


@dataclass(frozen=True)
class BudgetPlan:
    """The token budget of one cell on ``world_size`` ranks.

    Attributes:
        tokens_per_step: Tokens per optimizer step, all ranks.
        steps_per_round: Optimizer steps per round.
        tokens_per_round: ``steps_per_round * tokens_per_step``.
        train_tokens: Tokens of the training split.
        stretch_rounds: Rounds trained without a rewind (1, or R for one-shot).
        epochs_per_round: ``tokens_per_round / train_tokens``.
        epochs_per_stretch: ``stretch_rounds * epochs_per_round`` (what is checked).
        epochs_total: Over all ``n_rounds + 1`` rounds.
        max_epochs: The config's limit.
        world_size: Ranks.
    """

    tokens_per_step: int
    steps_per_round: int
    tokens_per_round: int
    train_tokens: int
    stretch_rounds: int
    epochs_per_round: float
    epochs_per_stretch: float
    epochs_total: float
    max_epochs: float
    world_size: int

    @property
    def exceeds(self) -> bool:
        """Whether the stretch is over ``max_epochs``."""
        return self.epochs_per_stretch > self.max_epochs


def stretch_rounds(cfg: IMPConfig) -> int:
    """Rounds trained one after another without a rewind (module docstring)."""
    if cfg.schedule == "oneshot" and cfg.control != "negative":
        return cfg.n_rounds
    return 1


def plan_budget(cfg: IMPConfig, train_tokens: int, world_size: int = 1) -> BudgetPlan:
    """The budget of ``cfg`` over a training split of ``train_tokens`` tokens."""
    if int(train_tokens) <= 0:
        raise ValueError(f"the training split of {cfg.corpus!r} has no tokens "
                         f"(train_tokens={train_tokens})")
    per_step = cfg.tokens_per_step(world_size)
    steps = cfg.steps_for(world_size)
    per_round = steps * per_step
    epochs = per_round / int(train_tokens)
    stretch = stretch_rounds(cfg)
    return BudgetPlan(tokens_per_step=per_step, steps_per_round=steps,
                      tokens_per_round=per_round, train_tokens=int(train_tokens),
                      stretch_rounds=stretch, epochs_per_round=epochs,
                      epochs_per_stretch=stretch * epochs,
                      epochs_total=(len(cfg.round_targets()) + 1) * epochs,
                      max_epochs=float(cfg.max_epochs), world_size=int(world_size))


def budget_message(cfg: IMPConfig, plan: BudgetPlan) -> str:
    """The refusal: every number of the plan, and what to change."""
    stretch = ("" if plan.stretch_rounds == 1 else
               f" x {plan.stretch_rounds} rounds without a rewind (one-shot)")
    return (f"{cfg.experiment} seed {cfg.seed}: {plan.steps_per_round} steps x "
            f"{plan.tokens_per_step:,} tokens per step ({cfg.batch_size} x {cfg.seq_len} x "
            f"{cfg.grad_accum} accumulation x {plan.world_size} rank(s)) = "
            f"{plan.tokens_per_round:,} tokens per round{stretch} = "
            f"{plan.epochs_per_stretch:.2f} epochs over the training split of "
            f"{cfg.corpus!r} ({plan.train_tokens:,} tokens at seq_len {cfg.seq_len}), more "
            f"than max_epochs={plan.max_epochs:g}. Lower the budget (steps_per_round / "
            f"tokens_per_round, batch), use a larger corpus (token shards: `workbench data "
            f"prepare SOURCE --tokenizer MODEL --out DIR`), raise max_epochs in the spec or "
            f"profile, or run it anyway with `workbench grid run ... --allow-repeats`")


def repeats_allowed() -> bool:
    """Whether :data:`ALLOW_REPEATS_ENV` is set to 1."""
    return os.environ.get(ALLOW_REPEATS_ENV, "") == "1"


def check_budget(cfg: IMPConfig, train_tokens: int, world_size: int = 1, *,
                 allow_repeats: bool | None = None) -> BudgetPlan:
    """:func:`plan_budget`, refused when over ``max_epochs`` (unless repeats are allowed).

    Args:
        cfg: The cell's config.
        train_tokens: Tokens of its training split.
        world_size: Ranks it trains on.
        allow_repeats: Run it anyway; ``None``: :func:`repeats_allowed`.

    Raises:
        BudgetExceeded: With :func:`budget_message`.
    """
    plan = plan_budget(cfg, train_tokens, world_size)
    allow = repeats_allowed() if allow_repeats is None else allow_repeats
    if plan.exceeds and not allow:
        raise BudgetExceeded(budget_message(cfg, plan))
    return plan


def record_fields(cfg: IMPConfig, *, train_tokens: int, world_size: int, steps: int,
                  previous: Mapping[str, Any] | None) -> dict[str, Any]:
    """The :data:`BUDGET_COLUMNS` of a round trained ``steps`` steps on ``world_size``
    ranks (``previous``: the record of the round before, for the totals)."""
    per_step = cfg.tokens_per_step(world_size)
    tokens = int(steps) * per_step
    before = int((previous or {}).get("tokens_total", 0) or 0)
    return dict(tokens_per_step=per_step, tokens_round=tokens, tokens_total=before + tokens,
                train_tokens=int(train_tokens), epochs_round=tokens / int(train_tokens),
                epochs_total=(before + tokens) / int(train_tokens), world_size=int(world_size))


# ----------------------------------------------------------------------------- split size
def shard_train_tokens(folder: str | os.PathLike) -> int | None:
    """Tokens of the training split of a token-shard folder, from its ``manifest.json``
    (``splits -> train -> tokens / n_tokens``) or a nanoGPT ``train.bin`` (uint16);
    ``None`` when ``folder`` is not a shard folder."""
    d = Path(folder)
    manifest = d / "manifest.json"
    if manifest.is_file():
        data = json.loads(manifest.read_text())
        split = (data.get("splits") or {}).get("train") or {}
        for key in ("tokens", "n_tokens", "num_tokens"):
            if isinstance(split.get(key), int):
                return int(split[key])
        raise ValueError(f"{manifest}: no token count of the train split "
                         "(splits.train.tokens)")
    if (d / "train.bin").is_file():
        return (d / "train.bin").stat().st_size // 2
    return None


def looks_like_shards(corpus: str) -> bool:
    """Whether a corpus spec means a token-shard folder (the one rule:
    :func:`workbench.core.shards.shard_folder`) rather than a built-in corpus, a text file
    or a dataset name."""
    return shard_folder(corpus) is not None


def missing_shards_message(corpus: str) -> str:
    """What to do when a spec names a shard folder that is not there (relative paths are
    read against the project root, as :func:`workbench.core.shards.shard_folder` does)."""
    return (f"corpus: the token-shard folder {corpus!r} does not exist (resolved: "
            f"{shard_folder(corpus)}). Prepare it first, e.g. `workbench "
            f"data prepare openwebtext --tokenizer gpt2 --out {corpus}` (or put nanoGPT's "
            "train.bin/val.bin there)")


def _tokenizer_for(model: str):
    """The tokenizer of ``model`` without building the model where that is possible."""
    if model in ("tiny-llama", "tiny-gpt2"):
        return ByteTokenizer()
    path = Path(model).expanduser()
    if path.is_dir() and (path / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)
    if model == "smollm2-135m":
        cache = paths.MODELS_DIR / model
        if (cache / "tokenizer.json").is_file():
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(cache)
    return load_model(model, device="cpu")[1]


def train_split_tokens(cfg: IMPConfig) -> int:
    """Tokens of ``cfg``'s training split as the cell will train on it: the shard
    manifest's count, or ``n_blocks * seq_len`` of the tokenized train documents.

    Raises:
        FileNotFoundError: A shard folder that does not exist
            (:func:`missing_shards_message`).
    """
    if looks_like_shards(cfg.corpus):
        n = shard_train_tokens(shard_folder(cfg.corpus))
        if n is None:
            raise FileNotFoundError(missing_shards_message(cfg.corpus))
        return n
    text = load_corpus(cfg.corpus)
    return int(token_blocks(_tokenizer_for(cfg.model), text.train, cfg.seq_len).numel())
