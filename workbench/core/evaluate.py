"""Perplexity: exp of the token-weighted mean negative log-likelihood."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from workbench.core.models import forward_logits, model_device


def causal_lm_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy (nats/token); logits ``[B, T, V]``, ids ``[B, T]``."""
    return nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1)
    )


@dataclass(frozen=True)
class PerplexityResult:
    """Perplexity with what it was computed from.

    Attributes:
        perplexity: ``exp(nll)``.
        nll: Mean negative log-likelihood per predicted token, in nats.
        n_tokens: Number of predicted tokens (``n_blocks * (seq_len - 1)``).
        seconds: Wall time of the evaluation.
        tokens_per_s: Input tokens processed per second (``n_blocks * seq_len / seconds``).
    """

    perplexity: float
    nll: float
    n_tokens: int
    seconds: float
    tokens_per_s: float


@torch.no_grad()
def evaluate_perplexity(
    model: nn.Module,
    blocks: torch.Tensor,
    *,
    batch_size: int = 8,
    progress: bool = True,
) -> PerplexityResult:
    """Token-weighted perplexity of ``model`` on ``blocks``.

    Every block predicts its tokens 1..seq_len-1 from the preceding ones; the NLL of all
    predicted tokens of all blocks is summed in float64 (log-softmax in float32 whatever
    the model dtype) and divided by their count.

    Args:
        model: A causal LM (any output form :func:`workbench.core.models.logits_of` accepts).
        blocks: ``LongTensor[n, seq_len]``.
        batch_size: Blocks per forward pass.
        progress: Show a ``tqdm.auto`` progress bar.

    Raises:
        ValueError: For an empty or malformed ``blocks`` or ``batch_size < 1``.
    """
    if not isinstance(blocks, torch.Tensor) or blocks.dim() != 2 or blocks.dtype != torch.long:
        raise ValueError("blocks must be a LongTensor of shape [n_blocks, seq_len]")
    if blocks.shape[0] == 0 or blocks.shape[1] < 2:
        raise ValueError(f"blocks must have n_blocks >= 1 and seq_len >= 2, got {tuple(blocks.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = model_device(model)
    was_training = model.training
    model.eval()
    total_nll = torch.zeros((), dtype=torch.float64)
    n_tokens = 0
    t0 = time.perf_counter()
    try:
        for start in tqdm(range(0, blocks.shape[0], batch_size), desc="perplexity",
                          disable=not progress, leave=False):
            batch = blocks[start : start + batch_size].to(device)
            logits = forward_logits(model, batch)[:, :-1].float()
            targets = batch[:, 1:]
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"
            )
            total_nll += nll.double().cpu()
            n_tokens += targets.numel()
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - t0
    mean_nll = float(total_nll) / n_tokens
    return PerplexityResult(
        perplexity=math.exp(mean_nll),
        nll=mean_nll,
        n_tokens=n_tokens,
        seconds=seconds,
        tokens_per_s=blocks.numel() / max(seconds, 1e-9),
    )


def perplexity(model: nn.Module, blocks: torch.Tensor, *, batch_size: int = 8,
               progress: bool = True) -> float:
    """Perplexity of ``model`` on ``blocks`` (see :func:`evaluate_perplexity`)."""
    return evaluate_perplexity(model, blocks, batch_size=batch_size, progress=progress).perplexity
