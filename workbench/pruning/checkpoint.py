"""Pruned checkpoints: a Hugging Face model directory plus its masks and a manifest.

:func:`save_pruned` writes, atomically, one folder that ``workbench.load_model(folder)``
(or ``transformers.AutoModelForCausalLM.from_pretrained``) opens anywhere::

    <out_dir>/
      config.json, generation_config.json, model.safetensors   (save_pretrained)
      tokenizer.json, tokenizer_config.json, ...                (the tokenizer)
      masks.safetensors                                        (save_masks: True = keep)
      manifest.json          (what was pruned and how; environment; sparsity per tensor)

Pruned weights are stored as exact zeros in the dense ``model.safetensors`` (no sparse
format), so any loader gives the same function; the masks say which zeros are pruned
(a kept weight may be zero too).

Integrity: the manifest records the SHA-256 and size of every other file of the folder
(``"files"``, the weights included, like the masks file's own checksum), and
:func:`load_pruned` verifies them, then checks the masks against the loaded weights
(every mask names a parameter of the same shape, and every weight it prunes is zero), so
flipped weight bytes, another model's masks or a cut-off file are errors naming the
file. The workbench's byte tokenizer of the tiny test models
is saved as the equivalent ``PreTrainedTokenizerFast`` with the same ids
(:func:`workbench.core.zeroshot.hf_tokenizer`). A ``quantization_config`` left in the
config (models dequantized from GGUF) is dropped before saving: the weights written are
the dense float ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from workbench.core import io, paths
from workbench.core.models import load_model
from workbench.core.repro import write_manifest
from workbench.core.zeroshot import hf_tokenizer
from workbench.pruning.masks import load_masks, save_masks, sparsity_report

MASKS_FILE = "masks.safetensors"
MANIFEST_FILE = "manifest.json"


def _check_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Every mask names a parameter of the same shape whose pruned entries are zero."""
    params = dict(model.named_parameters())
    unknown = [n for n in masks if n not in params]
    if unknown:
        raise ValueError(f"masks name parameters the model does not have: {unknown[:5]}")
    nonzero = {}
    for name, keep in masks.items():
        p = params[name]
        if tuple(keep.shape) != tuple(p.shape):
            raise ValueError(f"mask {name!r} has shape {tuple(keep.shape)}, the parameter "
                             f"{tuple(p.shape)}")
        bad = int(torch.count_nonzero(p.detach()[~keep.to(p.device).bool()]))
        if bad:
            nonzero[name] = bad
    if nonzero:
        raise ValueError(f"masks do not match the model: weights the masks prune are non-zero "
                         f"in {len(nonzero)} tensors (e.g. {next(iter(nonzero.items()))}); "
                         "apply the masks first (workbench.apply_masks)")
    return params


def save_pruned(
    model: nn.Module,
    tokenizer,
    masks: Mapping[str, torch.Tensor],
    out_dir: str | os.PathLike,
    manifest: Mapping[str, Any] | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Save a pruned model as a Hugging Face directory with its masks and manifest.

    Args:
        model: A Hugging Face causal LM (``PreTrainedModel``) with the masks applied.
        tokenizer: Its tokenizer (``transformers`` or the workbench byte tokenizer).
        masks: ``{param name: BoolTensor}`` (True = keep), e.g. ``prune(...).masks``.
        out_dir: Target folder; a relative path is relative to the project root
            (:func:`workbench.core.paths.resolve`).
        manifest: What a reader needs to know (method, sparsity, calibration, ...); kept
            under ``"parameters"`` beside the environment record and a sparsity report.
        overwrite: Replace an existing folder.

    Returns:
        The folder written.

    Raises:
        TypeError: ``model`` is not a Hugging Face model (no ``save_pretrained``).
        ValueError: Masks naming unknown parameters, with other shapes, or whose pruned
            weights are non-zero in the model.
        FileExistsError: ``out_dir`` exists and ``overwrite`` is false.
    """
    if not hasattr(model, "save_pretrained") or not hasattr(model, "config"):
        raise TypeError(f"model must be a Hugging Face PreTrainedModel (with save_pretrained), "
                        f"got {type(model).__name__}")
    if manifest is not None and not isinstance(manifest, Mapping):
        raise TypeError(f"manifest must be a mapping (dict), got {type(manifest).__name__}")
    _check_masks(model, masks)
    out = paths.resolve(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"out_dir: {out} exists; pass overwrite=True to replace it")
    tok = hf_tokenizer(tokenizer)
    config = model.config
    quant = getattr(config, "quantization_config", None)
    report = sparsity_report(masks)
    with io.atomic_path(out) as tmp:
        tmp.mkdir()
        try:
            if quant is not None:
                del config.quantization_config
            model.save_pretrained(tmp, safe_serialization=True)
        finally:
            if quant is not None:
                config.quantization_config = quant
        tok.save_pretrained(tmp)
        save_masks(masks, tmp / MASKS_FILE, metadata={"source": "workbench.save_pruned"})
        total = report.iloc[-1]
        checksums = file_checksums(tmp)
        write_manifest(
            tmp / MANIFEST_FILE, parameters=dict(manifest or {}),
            masks=dict(file=MASKS_FILE, tensors=len(masks), numel=int(total["numel"]),
                       pruned=int(total["pruned"]), sparsity=float(total["sparsity"]),
                       per_tensor={r["name"]: float(r["sparsity"])
                                   for _, r in report.iloc[:-1].iterrows()}),
            model_class=type(model).__name__, dtype=str(next(model.parameters()).dtype),
            files=checksums,
        )
    return out


def load_pruned(path: str | os.PathLike, *, device: str | torch.device | None = None):
    """Load a folder written by :func:`save_pruned`.

    Returns:
        ``(model, tokenizer, masks, manifest)``; ``model`` and ``tokenizer`` come from
        :func:`workbench.core.models.load_model`, so ``load_model(path)`` alone gives the
        same model.

    Raises:
        FileNotFoundError: The folder, its masks, its manifest or a file the manifest
            lists are missing (named).
        ValueError: A cut-off or damaged manifest, a file whose SHA-256 does not match
            the manifest, or masks that do not match the loaded weights (names, shapes,
            non-zero pruned weights).
    """
    folder = paths.resolve(path)
    for f in (folder / MASKS_FILE, folder / MANIFEST_FILE):
        if not f.is_file():
            raise FileNotFoundError(f"path: {f} is missing; {folder} is not a checkpoint "
                                    "written by save_pruned")
    manifest = read_manifest(folder)
    verify_files(folder, manifest)
    masks = load_masks(folder / MASKS_FILE)
    model, tok = load_model(folder, device=device)
    try:
        _check_masks(model, masks)
    except ValueError as err:
        raise ValueError(f"path: {folder / MASKS_FILE} does not match the weights in "
                         f"{folder}: {err}") from None
    return model, tok, masks, manifest


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_checksums(folder: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """``{file name: {"sha256", "bytes"}}`` of every file in ``folder`` but the manifest."""
    folder = Path(folder)
    return {f.name: {"sha256": _sha256(f), "bytes": f.stat().st_size}
            for f in sorted(folder.iterdir()) if f.is_file() and f.name != MANIFEST_FILE}


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a pruned-model folder, parsed.

    Raises:
        ValueError: Not valid JSON (cut off or damaged) or not an object (file named).
    """
    path = Path(folder) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"path: {path} is cut off or damaged (not valid JSON: {err}); "
                         "rewrite the folder with save_pruned") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"path: {path} must hold a JSON object, got "
                         f"{type(manifest).__name__}")
    return manifest


def verify_files(folder: str | os.PathLike, manifest: Mapping[str, Any]) -> None:
    """Every file the manifest lists exists with its recorded size and SHA-256.

    Folders written before checksums were recorded (no ``"files"``) load with a warning.

    Raises:
        FileNotFoundError: A listed file is missing.
        ValueError: A listed file has another size or SHA-256 (flipped bytes, truncated).
    """
    folder = Path(folder)
    files = manifest.get("files")
    if files is None:
        warnings.warn(f"{folder / MANIFEST_FILE} records no file checksums (written by an "
                      "older version); the weights cannot be verified", stacklevel=3)
        return
    if not isinstance(files, Mapping):
        raise ValueError(f"path: {folder / MANIFEST_FILE}: 'files' must map file names to "
                         f"{{sha256, bytes}}, got {type(files).__name__}")
    for name, record in files.items():
        f = folder / name
        if not f.is_file():
            raise FileNotFoundError(f"path: {f} is listed in {MANIFEST_FILE} but missing")
        if not isinstance(record, Mapping) or "sha256" not in record:
            raise ValueError(f"path: {folder / MANIFEST_FILE}: files[{name!r}] has no sha256")
        if record.get("bytes") is not None and f.stat().st_size != record["bytes"]:
            raise ValueError(f"path: {f} has {f.stat().st_size} bytes, the manifest recorded "
                             f"{record['bytes']}: the file is truncated or was replaced")
        if _sha256(f) != record["sha256"]:
            raise ValueError(f"path: {f} is corrupted or was replaced: its SHA-256 does not "
                             f"match the one in {MANIFEST_FILE} ({record['sha256'][:12]}...)")


__all__ = ["save_pruned", "load_pruned", "file_checksums", "read_manifest", "verify_files",
           "MASKS_FILE", "MANIFEST_FILE"]
