"""IMP checkpoints: safetensors + JSON, SHA-256 verified on load, no pickle.

A finished round ``r`` leaves two files in ``<output_dir>/checkpoints/``:

* ``round_<r>.safetensors``: tensors only, with the SHA-256 of the file's tensor data in
  its metadata (``__sha256__``): the round's keep-masks **bit-packed**
  (``mask/<param>``, ``uint8``, ``numpy.packbits`` of the row-major flattened mask),
  the masks the next round will use (``next_mask/<param>``, chosen from the trained
  weights before the checkpoint is written, so resuming needs no trained weights), and,
  only when the next round continues training instead of rewinding (the one-shot
  schedule after its single prune), the full float32 state (``state/<key>``, tied
  tensors once).
* ``round_<r>.json``: the small state (config, labels, round, the tables so far) wrapped
  as ``{"sha256": ..., "tensors_sha256": ..., "payload": ...}``; written last, so a round
  counts as checkpointed only when its JSON exists and both checksums match.

Late rewinding (``rewind_step > 0``) adds ``rewind.safetensors`` once (the full float32
state after ``rewind_step`` steps of round 0). A finished run keeps only
``complete.json`` (plus ``complete.safetensors`` with its final weights and masks when
asked). Writing a round removes the superseded ones; leftover ``*.pt`` files of the old
pickle format are removed unread (never unpickled).

Why it is compact: the rewinding rounds need, to resume exactly, only the masks (θ0 is
re-created from the model passed in and the seed), so a SmolLM2-135M round checkpoint is
two bit-packed mask sets (about 2 x 13 MB) instead of a 757 MB pickled state dict with a
bool mask set.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from workbench.core import io
from workbench.pruning.mask_io import split_safetensors

VERSION = 2
CHECKSUM_KEY = "__sha256__"
COMPLETE = "complete"


# ----------------------------------------------------------------------------- masks
def pack_masks(masks: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """``{prefix/name: uint8 packbits of the flattened mask}`` (8 entries a byte)."""
    return {f"{prefix}/{n}": torch.from_numpy(np.packbits(m.detach().bool().cpu().numpy()
                                                          .reshape(-1)))
            for n, m in masks.items()}


def unpack_masks(tensors: Mapping[str, torch.Tensor], prefix: str,
                 shapes: Mapping[str, list[int]]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`pack_masks` for the names in ``shapes`` (in that order)."""
    out = {}
    for n, shape in shapes.items():
        numel = int(np.prod(shape)) if shape else 1
        bits = np.unpackbits(tensors[f"{prefix}/{n}"].numpy(), count=numel)
        out[n] = torch.from_numpy(bits.astype(bool)).reshape(shape)
    return out


# ----------------------------------------------------------------------------- files
def _split(blob: bytes, path) -> tuple[dict, bytes]:
    return split_safetensors(blob, path, what="checkpoint")


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> str:
    """Write ``tensors`` atomically as safetensors with the data's SHA-256 in the
    metadata; returns the checksum."""
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    _, data = _split(save(tensors), path)
    digest = hashlib.sha256(data).hexdigest()
    blob = save(tensors, metadata={CHECKSUM_KEY: digest})
    with io.atomic_path(path) as tmp:
        tmp.write_bytes(blob)
    return digest


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a file of :func:`save_tensors`, verifying its checksum.

    Raises:
        ValueError: Missing checksum, checksum mismatch or damaged file (names the file).
    """
    from safetensors.torch import load

    blob = Path(path).read_bytes()
    header, data = _split(blob, path)
    expected = (header.get("__metadata__") or {}).get(CHECKSUM_KEY)
    if expected is None or hashlib.sha256(data).hexdigest() != expected:
        raise ValueError(f"checkpoint {path} is corrupted or unverifiable: the SHA-256 of "
                         "its tensor data does not match the checksum stored in it")
    try:
        return load(blob)
    except Exception as err:  # safetensors raises its own error types
        raise ValueError(f"checkpoint {path} is damaged: {err}") from None


def _digest(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_checkpoint(ckdir: Path, name: str, payload: Mapping[str, Any],
                     tensors: Mapping[str, torch.Tensor] | None = None) -> Path:
    """Write ``<name>.safetensors`` (if ``tensors``) then ``<name>.json``; remove the
    superseded round checkpoints. Returns the JSON path."""
    ckdir = Path(ckdir)
    payload = dict(payload, version=VERSION)
    tensors_sha = None
    if tensors:
        tensors_sha = save_tensors(ckdir / f"{name}.safetensors", tensors)
    wrapped = {"sha256": _digest(payload), "tensors_sha256": tensors_sha, "payload": payload}
    target = ckdir / f"{name}.json"
    io.write_text(target, json.dumps(wrapped, allow_nan=True))  # keeps column order
    keep = {target, ckdir / f"{name}.safetensors"}
    for old in list(ckdir.glob("round_*.json")) + list(ckdir.glob("round_*.safetensors")):
        if old not in keep:
            old.unlink(missing_ok=True)
    return target


def read_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(payload, tensors)`` of a checkpoint JSON, both verified.

    Raises:
        ValueError: A checksum does not match, a file is damaged or missing (names it).
    """
    path = Path(path)
    try:
        wrapped = json.loads(path.read_text(encoding="utf-8"))
        payload = wrapped["payload"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"checkpoint {path} is damaged: {err}") from None
    if _digest(payload) != wrapped.get("sha256"):
        raise ValueError(f"checkpoint {path} is corrupted: SHA-256 of its state does not "
                         "match the checksum stored in it")
    if payload.get("version") != VERSION:
        raise ValueError(f"checkpoint {path} has version {payload.get('version')!r}, "
                         f"this workbench reads version {VERSION}")
    tensors: dict[str, torch.Tensor] = {}
    if wrapped.get("tensors_sha256") is not None:
        tfile = path.with_suffix(".safetensors")
        if not tfile.is_file():
            raise ValueError(f"checkpoint {path} names {tfile.name}, which is missing")
        tensors = load_tensors(tfile)
        if (_split(tfile.read_bytes(), tfile)[0].get("__metadata__") or {}).get(
                CHECKSUM_KEY) != wrapped["tensors_sha256"]:
            raise ValueError(f"checkpoint {path} and {tfile.name} do not belong together")
    return payload, tensors


def latest_checkpoint(ckdir: Path | None) -> Path | None:
    """The JSON of the last finished round (``complete.json`` first), or ``None``.

    Leftover files of the old pickle format (``*.pt``) are removed unread.
    """
    if ckdir is None or not Path(ckdir).is_dir():
        return None
    ckdir = Path(ckdir)
    legacy = sorted(ckdir.glob("*.pt"))
    if legacy:
        warnings.warn(f"removing {len(legacy)} checkpoint(s) of the old pickle format in "
                      f"{ckdir} unread (they are never unpickled): "
                      f"{[p.name for p in legacy]}", stacklevel=2)
        for p in legacy:
            p.unlink(missing_ok=True)
    done = ckdir / f"{COMPLETE}.json"
    if done.is_file():
        return done
    rounds = sorted(ckdir.glob("round_*.json"))
    return rounds[-1] if rounds else None


def finish_checkpoints(ckdir: Path, payload: Mapping[str, Any],
                       tensors: Mapping[str, torch.Tensor] | None = None) -> Path:
    """Write ``complete.json`` and remove every round and rewind file."""
    ckdir = Path(ckdir)
    path = write_checkpoint(ckdir, COMPLETE, payload, tensors)
    for old in (list(ckdir.glob("round_*")) + [ckdir / "rewind.safetensors"]):
        old.unlink(missing_ok=True)
    return path


def state_tensors(model: torch.nn.Module, prefix: str = "state") -> dict[str, torch.Tensor]:
    """Float32-exact CPU copies of the model's parameters and buffers, tied tensors once
    (``{prefix/name: tensor}``; dtype kept)."""
    seen: dict[int, str] = {}
    out = {}
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        key = t.data_ptr() if t.numel() else id(t)
        if key in seen:
            continue
        seen[key] = name
        out[f"{prefix}/{name}"] = t.detach().to("cpu", copy=True)
    return out


@torch.no_grad()
def load_state_tensors(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor],
                       prefix: str = "state") -> None:
    """Copy tensors of :func:`state_tensors` back into ``model`` (tied ones through their
    shared storage)."""
    named = dict(model.named_parameters())
    named.update(dict(model.named_buffers()))
    cut = len(prefix) + 1
    for key, value in tensors.items():
        if key.startswith(prefix + "/"):
            named[key[cut:]].copy_(value.to(named[key[cut:]].device))
