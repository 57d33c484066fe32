"""Save and load mask sets as safetensors files with an integrity checksum.

The file is a plain safetensors file (bool tensors, one per parameter name). Its
metadata holds the saved order (``__order__``) and the SHA-256 of the file's tensor data
section (``__sha256__``, the bytes after the header), so a flipped byte anywhere in the
tensor data is detected on load; a damaged header fails to parse. Either way
:func:`load_masks` raises an error naming the file. Files written before checksums
existed load with a warning.
"""

from __future__ import annotations

import hashlib
import json
import struct
import warnings
from pathlib import Path
from typing import Mapping

import torch

from workbench.core.io import atomic_path

CHECKSUM_KEY = "__sha256__"
ORDER_KEY = "__order__"


def split_safetensors(blob: bytes, path, what: str = "masks file") -> tuple[dict, bytes]:
    """``(header dict, data section)`` of a safetensors byte string.

    Raises:
        ValueError: The header is unreadable; names ``what`` and ``path``.
    """
    try:
        (n,) = struct.unpack("<Q", blob[:8])
        header = json.loads(blob[8:8 + n].decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (struct.error, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{what} {path} is damaged or not a safetensors file "
                         f"(header unreadable: {err})") from None
    return header, blob[8 + n:]


def save_masks(masks: Mapping[str, torch.Tensor], path, *, metadata: dict | None = None) -> Path:
    """Write masks to a safetensors file (atomically) with a SHA-256 of the tensor data.

    Args:
        masks: ``{param name: BoolTensor}``.
        path: Target file.
        metadata: Extra string metadata (values become ``str``).

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: A metadata key that is reserved (``__order__``, ``__sha256__``).
    """
    from safetensors.torch import save

    path = Path(path)
    tensors = {n: mk.detach().bool().contiguous().cpu() for n, mk in masks.items()}
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    reserved = sorted({ORDER_KEY, CHECKSUM_KEY} & set(meta))
    if reserved:
        raise ValueError(f"metadata keys {reserved} are reserved")
    meta[ORDER_KEY] = json.dumps(list(tensors))
    # The data section does not depend on the metadata: hash it, then write again.
    _, data = split_safetensors(save(tensors, metadata=meta), path)
    meta[CHECKSUM_KEY] = hashlib.sha256(data).hexdigest()
    blob = save(tensors, metadata=meta)
    if split_safetensors(blob, path)[1] != data:  # pragma: no cover - safetensors layout changed
        raise RuntimeError("safetensors data layout depends on metadata; cannot checksum")
    with atomic_path(path) as tmp:
        tmp.write_bytes(blob)
    return path


def load_masks(path, *, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read masks written by :func:`save_masks` (in the saved order), checking the SHA-256.

    Raises:
        FileNotFoundError: No such file.
        ValueError: The checksum does not match or the file is damaged (names the file).
    """
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"masks file {path} does not exist")
    blob = path.read_bytes()
    header, data = split_safetensors(blob, path)
    meta = header.get("__metadata__") or {}
    expected = meta.get(CHECKSUM_KEY)
    if expected is None:
        warnings.warn(f"masks file {path} has no checksum (written by an older version); "
                      "its contents cannot be verified", stacklevel=2)
    elif hashlib.sha256(data).hexdigest() != expected:
        raise ValueError(f"masks file {path} is corrupted: SHA-256 of its tensor data does "
                         f"not match the checksum stored in it ({expected[:12]}...)")
    try:
        tensors = load(blob)
        order = json.loads(meta[ORDER_KEY]) if ORDER_KEY in meta else list(tensors)
    except Exception as err:  # safetensors raises its own error types
        raise ValueError(f"masks file {path} is damaged: {err}") from None
    return {name: tensors[name].bool().to(device) for name in order}
