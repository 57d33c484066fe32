"""Streamed input statistics of linear layers, collected with forward pre-hooks.

For every hooked layer with input width ``d_in`` (``nn.Linear`` and GPT-2 ``Conv1D``
both see inputs ``[..., d_in]``), :class:`InputStats` accumulates over **all** tokens, in
float32, without storing activations:

* ``sq_sum[j] = sum_t x_tj^2`` -> Wanda's input-feature norms ``||X_j||_2 = sqrt(sq_sum)``;
* ``mean_sum[j] = sum_t x_tj`` (PRAC's ``mean_sum``, seed 003) -> the feature means
  ``mean_sum / count`` and their James-Stein shrinkage (:meth:`InputStats.js_mean`,
  :func:`workbench.pruning.correction.james_stein_mean`);
* optionally ``hessian = sum_t x_t x_t^T`` (``[d_in, d_in]``, SparseGPT's ``X^T X``);
* optionally the first ``max_samples`` token rows (on ``sample_device``) for PRAC's
  limited-sample correction. The norms still use all tokens (PRAC's design).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Mapping

import torch
from torch import nn

from workbench.core.devices import model_device
from workbench.core.models import forward_logits
from workbench.pruning.correction import james_stein_mean


@dataclass
class InputStats:
    """Running statistics of one layer's inputs.

    Attributes:
        sq_sum: ``[d_in]`` float32 sum of squares over all tokens.
        mean_sum: ``[d_in]`` float32 sum over all tokens (PRAC's ``mean_sum``).
        count: Number of tokens seen.
        hessian: ``[d_in, d_in]`` float32 ``sum x x^T`` or ``None``.
        samples: Stored token rows (each ``[n_i, d_in]`` float32), at most ``max_samples``.
        max_samples: Cap on stored rows (0 = none stored).
    """

    sq_sum: torch.Tensor | None = None
    mean_sum: torch.Tensor | None = None
    count: int = 0
    hessian: torch.Tensor | None = None
    samples: list = field(default_factory=list)
    max_samples: int = 0
    want_hessian: bool = False
    sample_device: str | torch.device = "cpu"

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Add a batch of inputs ``[..., d_in]``."""
        x = x.detach().reshape(-1, x.shape[-1]).float()
        if self.sq_sum is None:
            self.sq_sum = torch.zeros(x.shape[1], dtype=torch.float32, device=x.device)
        self.sq_sum += (x * x).sum(0)
        if self.mean_sum is None:
            self.mean_sum = torch.zeros(x.shape[1], dtype=torch.float32, device=x.device)
        self.mean_sum += x.sum(0)
        self.count += x.shape[0]
        if self.want_hessian:
            if self.hessian is None:
                self.hessian = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float32,
                                           device=x.device)
            self.hessian.addmm_(x.t(), x)
        stored = self.n_stored
        if stored < self.max_samples:
            self.samples.append(x[: self.max_samples - stored].to(self.sample_device, copy=True))

    @property
    def n_stored(self) -> int:
        """Number of stored token rows."""
        return sum(s.shape[0] for s in self.samples)

    def norms(self) -> torch.Tensor:
        """Wanda's ``||X_j||_2`` over all tokens, ``[d_in]`` float32."""
        if self.sq_sum is None:
            raise ValueError("no inputs were seen: run the calibration forward first")
        return self.sq_sum.sqrt()

    def mean(self) -> torch.Tensor:
        """Feature means over all tokens, ``mean_sum / count``, ``[d_in]`` float32."""
        if self.mean_sum is None or self.count == 0:
            raise ValueError("no inputs were seen: run the calibration forward first")
        return self.mean_sum / self.count

    def js_mean(self, variance="sampling", *, offset: int = 3) -> torch.Tensor:
        """James-Stein shrinkage of :meth:`mean` towards the grand mean (see
        :func:`workbench.pruning.correction.james_stein_mean`); ``variance="sampling"``
        uses the per-feature variances ``sq_sum / count - mean^2`` of these tokens."""
        return james_stein_mean(self.mean(), variance, count=self.count,
                                sq_mean=self.sq_sum / self.count, offset=offset)

    def sample_matrix(self) -> torch.Tensor:
        """The stored samples as one ``[n_stored, d_in]`` matrix."""
        if not self.samples:
            raise ValueError("no samples stored (max_samples=0?)")
        return torch.cat(self.samples)


@contextmanager
def input_statistics(
    modules: Mapping[str, nn.Module],
    *,
    hessian: bool = False,
    max_samples: int = 0,
    sample_device: str | torch.device = "cpu",
) -> Iterator[dict[str, InputStats]]:
    """Hook ``modules`` for the duration of the ``with`` block.

    Args:
        modules: ``{key: module}``; every forward call of a module updates ``stats[key]``.
        hessian: Also accumulate ``X^T X``.
        max_samples: Store up to this many input rows per module.
        sample_device: Where stored rows live.

    Yields:
        ``{key: InputStats}`` filled by the forward passes run inside the block.
    """
    stats = {k: InputStats(max_samples=max_samples, want_hessian=hessian,
                           sample_device=sample_device) for k in modules}
    handles = []
    for key, module in modules.items():
        def hook(_mod, args, key=key):
            stats[key].update(args[0])
        handles.append(module.register_forward_pre_hook(hook))
    try:
        yield stats
    finally:
        for h in handles:
            h.remove()


def batches_of(tokens, batch_size: int = 8) -> list[torch.Tensor]:
    """Split ``tokens`` (``LongTensor[n, seq]`` or a list of such) into a list of batches.

    Raises:
        ValueError: ``tokens`` is ``None``/empty or ``batch_size < 1``.
    """
    if tokens is None:
        raise ValueError("calibration data is required (a LongTensor [n, seq_len] of token ids)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(tokens, torch.Tensor):
        if tokens.dim() != 2 or tokens.shape[0] == 0:
            raise ValueError("calibration tokens must be a LongTensor [n, seq_len], got "
                             f"{tuple(tokens.shape)}")
        return [tokens[i : i + batch_size] for i in range(0, tokens.shape[0], batch_size)]
    out = list(tokens)
    if not out:
        raise ValueError("calibration data is empty")
    return out


@torch.no_grad()
def collect_input_statistics(model: nn.Module, modules: Mapping[str, nn.Module], tokens, *,
                             batch_size: int = 8, **options) -> dict[str, InputStats]:
    """Run ``model`` over ``tokens`` once (all at once, no pruning) and return the stats."""
    device = model_device(model)
    with input_statistics(modules, **options) as stats:
        for batch in batches_of(tokens, batch_size):
            forward_logits(model, batch.to(device))
    return stats
