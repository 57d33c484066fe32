"""Per-task running EMA of diagonal (or group) Fishers with low-precision storage.

:class:`FisherAccumulator` folds Fishers from
:func:`~workbench.curvature.diagonal.diagonal_fisher` or
:func:`~workbench.curvature.groups.collect_group_fisher` into one exponential moving
average per task name (e.g. for EWC-style penalties, notebook 08).
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from workbench.core.checks import check_choice, check_kwargs
from workbench.curvature import _storage
from workbench.curvature.diagonal import RENAMED, diagonal_fisher
from workbench.curvature.groups import collect_group_fisher

REDUCTIONS = ("diagonal", "group")


class FisherAccumulator:
    """Running EMA of diagonal (or group) Fishers, one accumulator per task name.

    ``update`` computes (or takes) a diagonal Fisher ``x_t`` (``reduction="diagonal"``,
    :func:`~workbench.curvature.diagonal_fisher`) or a group Fisher (``reduction="group"``,
    :func:`~workbench.curvature.groups.collect_group_fisher`: the state is then
    ``O(groups)``, never a per-parameter tensor) and defines the EMA
    ``m_t = decay * m_{t-1} + (1 - decay) * x_t`` with ``m_0 = 0``; :meth:`get` returns
    the bias-corrected ``m_t / (1 - decay^t)`` (which equals ``x`` exactly when every
    ``x_t = x``, up to float rounding) or the raw ``m_t``.

    Storage (chosen so that float16/bfloat16 state does not underflow): the state is not
    ``m_t`` but the **bias-corrected mean** ``A_t = m_t / (1 - decay^t)``, updated as
    ``A_t = A_{t-1} + w_t (x_t - A_{t-1})`` with ``w_t = (1 - decay) / (1 - decay^t)``
    (``w_1 = 1``) in float32, and stored per tensor as ``q = A_t / s`` in
    ``storage_dtype`` with a float32 **per-tensor power-of-two scale** ``s`` (recomputed
    every update) that puts the tensor's largest entry two binades below the top of the
    storage range (float16: ``max|q|`` in ``[2^13, 2^14)``). The raw ``m_t`` is
    ``(1 - decay^t) * s * q``, a scalar applied on read, in float32. Why: the raw ``m_t``
    of the first steps carries the factor ``1 - decay^t`` (``0.01`` at ``t = 1`` for
    decay 0.99), which pushed the small entries of an LM Fisher (``~1e-8`` and below,
    already near float16's smallest subnormal ``6e-8``) to zero; ``A_t`` keeps the
    magnitude of one Fisher, and the scale moves float16's ``~2^38`` dynamic range
    (``2^14`` down to ``2^-24``, subnormals included) to start at the largest entry
    instead of at ``65504``. Scaling by a power of two is exact, so float32 storage gives
    the old numbers (``s = 1``), and the error of low-precision storage is one rounding of
    ``A_t`` per update. (Unscaled sums ``sum_s decay^-s x_s`` were rejected: they grow as
    ``decay^-t`` and overflow float16 after ~1100 steps at decay 0.99.) After every update
    the share of entries that are non-zero in float32 but zero in storage is kept
    (:meth:`underflow_share`) and a ``RuntimeWarning`` is raised above 1 %.

    Args:
        decay: EMA decay in ``[0, 1)``.
        storage_dtype: dtype of the stored state (``torch.float16`` / ``torch.bfloat16``
            halve memory; the update itself is computed in float32).
        device: Where the state lives (``"cpu"`` offloads from a GPU).
        reduction: ``"diagonal"`` or ``"group"`` (see above).
        **fisher_kwargs: Defaults passed to :func:`diagonal_fisher` (or
            ``collect_group_fisher``) by :meth:`update`; checked against its signature.
    """

    def __init__(self, decay: float = 0.99, *, storage_dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", reduction: str = "diagonal",
                 **fisher_kwargs: Any):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must lie in [0, 1), got {decay}")
        _storage.check_storage_dtype(storage_dtype)
        self.reduction = check_choice("reduction", reduction, REDUCTIONS)
        check_kwargs("FisherAccumulator", fisher_kwargs, self._options(), renamed=RENAMED)
        self.decay = float(decay)
        self.storage_dtype = storage_dtype
        self.device = torch.device(device)
        self.fisher_kwargs = fisher_kwargs
        self._state: dict[str, dict[str, Tensor]] = {}
        self._scale: dict[str, dict[str, float]] = {}
        self._steps: dict[str, int] = {}
        self._underflow: dict[str, float] = {}

    @property
    def tasks(self) -> list[str]:
        """Task names seen so far."""
        return sorted(self._state)

    def steps(self, task: str = "default") -> int:
        """Number of updates of ``task``."""
        return self._steps.get(task, 0)

    def underflow_share(self, task: str = "default") -> float:
        """Share of entries of ``task``'s state that were non-zero in float32 but zero in
        storage after the last update (see :func:`._storage.underflow_share`)."""
        self._check_task(task)
        return self._underflow[task]

    def _collector(self):
        return collect_group_fisher if self.reduction == "group" else diagonal_fisher

    def _options(self) -> set[str]:
        return set(inspect.signature(self._collector()).parameters) - {"model", "batches"}

    def update(self, model: nn.Module, batches: Any, task: str = "default",
               **kwargs: Any) -> dict[str, Tensor]:
        """Compute the diagonal (group) Fisher on ``batches`` and fold it into ``task``'s
        EMA."""
        check_kwargs("FisherAccumulator.update", kwargs, self._options(), renamed=RENAMED)
        fisher = self._collector()(model, batches, **{**self.fisher_kwargs, **kwargs})
        self.update_from(fisher, task)
        return fisher

    def update_from(self, fisher: Mapping[str, Tensor], task: str = "default") -> None:
        """Fold an already computed ``{name: tensor}`` into ``task``'s EMA (see the class
        docstring for what is stored)."""
        state = self._state.setdefault(task, {})
        scales = self._scale.setdefault(task, {})
        if state and set(state) != set(fisher):
            raise ValueError(f"fisher: parameter names differ from earlier updates of {task!r}")
        t = self._steps.get(task, 0) + 1
        w = (1.0 - self.decay) / (1.0 - self.decay ** t)
        reference = {}
        for n, x in fisher.items():
            x = x.detach().to(self.device, torch.float32)
            if n in state:
                prev = state[n].float() * scales[n]
                a = prev.add_(x - prev, alpha=w)
            else:
                a = x.clone()
            s = _storage.pow2_scale(a, self.storage_dtype)
            q = (a / s).to(self.storage_dtype)
            reference[n] = a
            state[n], scales[n] = q, s
        self._steps[task] = t
        self._underflow[task] = _storage.underflow_share(reference, state)
        _storage.warn_underflow(self._underflow[task], self.storage_dtype,
                                f"FisherAccumulator task {task!r}")

    def _check_task(self, task: str) -> None:
        if task not in self._state:
            raise ValueError(f"task {task!r} has no updates; known tasks: {self.tasks}")

    def get(self, task: str = "default", *, bias_corrected: bool = True,
            dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
        """The EMA of ``task`` (bias-corrected by ``1 - decay^t`` unless asked not to).

        Args:
            task: Task name.
            bias_corrected: ``m_t / (1 - decay^t)`` (default) or the raw ``m_t``.
            dtype: dtype of the returned tensors (default float32: the decoded state;
                casting back to float16 would underflow the small entries again).

        Raises:
            ValueError: If ``task`` was never updated (the message lists known tasks).
        """
        self._check_task(task)
        corr = 1.0 if bias_corrected else 1.0 - self.decay ** self._steps[task]
        scales = self._scale[task]
        return {n: (q.float() * (scales[n] * corr)).to(dtype)
                for n, q in self._state[task].items()}

    def state_bytes(self, task: str = "default") -> int:
        """Bytes of ``task``'s stored state (the scales, one float per tensor, excluded)."""
        self._check_task(task)
        return sum(q.numel() * q.element_size() for q in self._state[task].values())
