"""Private: storing curvature tensors in low precision without silent underflow.

Shared by :func:`~workbench.curvature.diagonal.diagonal_fisher`,
:func:`~workbench.curvature.groups.collect_group_fisher` (cast of the result to
``storage_dtype``) and :class:`~workbench.curvature.accumulator.FisherAccumulator`
(per-tensor power-of-two scale of its state).
"""

from __future__ import annotations

import math
import warnings
from typing import Mapping

import torch
from torch import Tensor

UNDERFLOW_WARN_SHARE = 0.01  # warn when more than 1 % of the entries underflow to zero


def check_storage_dtype(storage_dtype) -> torch.dtype:
    """Return ``storage_dtype`` if it is a floating ``torch.dtype``.

    Raises:
        TypeError: Anything else.
    """
    if not isinstance(storage_dtype, torch.dtype) or not storage_dtype.is_floating_point:
        raise TypeError(f"storage_dtype must be a floating torch.dtype, got {storage_dtype!r}")
    return storage_dtype


def underflow_share(reference: Mapping[str, Tensor], stored: Mapping[str, Tensor]) -> float:
    """Share of all entries that are non-zero in ``reference`` but zero in ``stored``.

    Args:
        reference: ``{name: tensor}`` in the computation dtype (float32/float64).
        stored: The same tensors after the cast to the storage dtype (same names, shapes).

    Returns:
        ``#{reference != 0 and stored == 0} / #entries`` over all tensors (0.0 if empty).
    """
    lost = total = 0
    for n, r in reference.items():
        lost += int(((r != 0) & (stored[n] == 0)).sum())
        total += r.numel()
    return lost / total if total else 0.0


def warn_underflow(share: float, dtype: torch.dtype, where: str, stacklevel: int = 3) -> None:
    """``RuntimeWarning`` when ``share`` (see :func:`underflow_share`) exceeds 1 %."""
    if share > UNDERFLOW_WARN_SHARE:
        warnings.warn(f"{where}: {share:.2%} of the entries underflow to zero in {dtype} "
                      f"storage (more than {UNDERFLOW_WARN_SHARE:.0%}); use "
                      "storage_dtype=torch.float32 or torch.bfloat16", RuntimeWarning,
                      stacklevel=stacklevel)


def is_low_precision(dtype: torch.dtype) -> bool:
    """True for floating dtypes of fewer than 32 bits (float16, bfloat16)."""
    return dtype.is_floating_point and torch.finfo(dtype).bits < 32


def store(values: Mapping[str, Tensor], storage_dtype: torch.dtype, device, where: str
          ) -> dict[str, Tensor]:
    """``values`` cast to ``storage_dtype`` on ``device`` (``None``: where they are), with a
    ``RuntimeWarning`` (naming ``where``) when more than 1 % of the entries underflow to
    zero in a low-precision dtype."""
    check_storage_dtype(storage_dtype)
    stored = {k: v.to(device=device, dtype=storage_dtype) for k, v in values.items()}
    if is_low_precision(storage_dtype):
        warn_underflow(underflow_share(values, {k: v.to(values[k].device)
                                                for k, v in stored.items()}),
                       storage_dtype, where, stacklevel=4)
    return stored


def pow2_scale(values: Tensor, dtype: torch.dtype) -> float:
    """Power of two ``s`` such that ``max|values| / s`` lies in ``[2^(e-1), 2^e)`` with
    ``2^e = finfo(dtype).max / 4`` (rounded down to a power of two): the largest entry
    sits two binades below the top of the storage range. ``1.0`` for float32/float64
    storage, for an all-zero tensor, or for non-finite values."""
    if not is_low_precision(dtype):
        return 1.0
    top = float(values.abs().max()) if values.numel() else 0.0
    if top == 0.0 or top != top or top == float("inf"):
        return 1.0
    target = math.floor(math.log2(torch.finfo(dtype).max)) - 1  # fp16: 2^14, bf16: 2^126
    return 2.0 ** (math.frexp(top)[1] - target)
