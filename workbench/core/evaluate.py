"""Perplexity: exp of the token-weighted mean negative log-likelihood.

:func:`perplexity` is the public name (``workbench.perplexity``) and returns a float;
:func:`evaluate_perplexity` runs the same evaluation and also returns the token count
and the timing (:class:`PerplexityResult`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from workbench.core.checks import check_range
from workbench.core.devices import model_device
from workbench.core.models import check_model_tokens, forward_logits


def causal_lm_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy (nats/token); logits ``[B, T, V]``, tokens ``[B, T]``."""
    return nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), tokens[:, 1:].reshape(-1)
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
    tokens: torch.Tensor,
    *,
    batch_size: int = 8,
    progress: bool = True,
) -> PerplexityResult:
    """Token-weighted perplexity of ``model`` on ``tokens``.

    Every block predicts its tokens 1..seq_len-1 from the preceding ones; the NLL of all
    predicted tokens of all blocks is summed in float64 (log-softmax in float32 whatever
    the model dtype) and divided by their count.

    Args:
        model: A causal LM (any output form :func:`workbench.core.models.logits_of` accepts).
        tokens: ``LongTensor[n, seq_len]`` of token ids (e.g. from
            :func:`workbench.core.data.token_blocks`), ``seq_len >= 2``.
        batch_size: Sequences per forward pass.
        progress: Show a ``tqdm.auto`` progress bar.

    Raises:
        TypeError: ``model`` not a module, ``tokens`` not an integer tensor, ``batch_size``
            not an integer.
        ValueError: ``tokens`` empty, not 2-D, shorter than 2, out of the model's
            vocabulary or longer than its positions; ``batch_size < 1``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_model_tokens("tokens", tokens, model)
    if tokens.shape[1] < 2:
        raise ValueError(f"tokens must have seq_len >= 2 (a block predicts seq_len - 1 "
                         f"tokens), got shape {tuple(tokens.shape)}")
    check_range("batch_size", batch_size, 1, integer=True)
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be True or False, got {progress!r}")
    blocks = tokens.long()
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


def perplexity(model: nn.Module, tokens: torch.Tensor, *, batch_size: int = 8,
               progress: bool = True) -> float:
    """Perplexity of ``model`` on ``tokens`` (``LongTensor[n, seq_len]``): ``exp`` of the
    mean NLL of every predicted token; arguments and errors as :func:`evaluate_perplexity`."""
    return evaluate_perplexity(model, tokens, batch_size=batch_size, progress=progress).perplexity


@dataclass(frozen=True)
class CardPerplexity:
    """Perplexity of a model under a named protocol card.

    Attributes:
        result: The :class:`PerplexityResult`.
        windows: The :class:`workbench.core.protocols.CardWindows` evaluated.
    """

    result: PerplexityResult
    windows: object

    def record(self) -> dict:
        """One row: ``ppl, nll, n_predicted`` and the protocol columns (card, fingerprint,
        seq_len, windows, source, level)."""
        return dict(ppl=self.result.perplexity, nll=self.result.nll,
                    n_predicted=self.result.n_tokens, seconds=self.result.seconds,
                    **self.windows.record("eval"))


def evaluate_card(
    model: nn.Module,
    tokenizer,
    card: str,
    seq_len: int,
    *,
    data=None,
    n_windows: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
) -> CardPerplexity:
    """Perplexity of ``model`` under perplexity card ``card`` at an explicit ``seq_len``.

    The windows come from :func:`workbench.core.protocols.perplexity_windows`; the NLL is
    :func:`evaluate_perplexity`'s: the mean over every predicted token of every window
    (``seq_len - 1`` per window). The authors' ``eval_ppl_wikitext`` (locuslab/wanda
    ``lib/eval.py``) computes ``exp(sum_w mean_nll_w * seq_len / (n * seq_len))``, the same
    number because every window has the same count.

    Args:
        model, tokenizer: The model and its tokenizer.
        card: Perplexity card name (``wikitext2``, ``c4-val``, ``wiki-excerpt``).
        seq_len: Window length (required).
        data: File or folder holding the card's file.
        n_windows, seed: A cut to fewer windows (recorded in the fingerprint).
        batch_size, progress: As :func:`evaluate_perplexity`.
    """
    from workbench.core.protocols import perplexity_windows

    windows = perplexity_windows(card, tokenizer, seq_len, data=data, n_windows=n_windows,
                                 seed=seed)
    res = evaluate_perplexity(model, windows.tokens, batch_size=batch_size, progress=progress)
    return CardPerplexity(result=res, windows=windows)
