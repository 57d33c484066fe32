"""Devices and dtypes: where a model lives and the names accepted for both.

:func:`model_device` reads a model's device; :func:`default_device`,
:func:`resolve_device` and :func:`resolve_dtype` parse and check the ``device`` and
``dtype`` arguments of :func:`workbench.core.models.load_model` (and anything else that
takes them) before a model is built. It imports only torch, so every layer can use it.
"""

from __future__ import annotations

import torch
from torch import nn

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float64": torch.float64,
    "fp64": torch.float64,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (CPU for a parameterless module)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def default_device() -> torch.device:
    """CUDA when present, CPU otherwise."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Parse ``device`` and make sure this machine has it; ``None`` means
    :func:`default_device`.

    Raises:
        TypeError: Not a string or ``torch.device``.
        ValueError: Not a device name, or CUDA/MPS asked for where it is not available
            (raised before any model is built).
    """
    if device is None:
        return default_device()
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a string like 'cpu' or 'cuda:0' or a torch.device, "
                        f"got {type(device).__name__} {device!r}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"device must be like 'cpu', 'cuda' or 'cuda:0', got {device!r}") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but CUDA is not available on this machine "
                             "(torch.cuda.is_available() is False); use device='cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r} but this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r} but MPS is not available on this machine; "
                         "use device='cpu'")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Map a dtype name or ``torch.dtype`` to a ``torch.dtype``; ``None`` means float32.

    Raises:
        ValueError: For an unknown name, listing the allowed ones.
    """
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in set(_DTYPES.values()):
            raise ValueError(f"dtype must be one of {sorted(set(_DTYPES))}, got {dtype}")
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    return _DTYPES[key]
