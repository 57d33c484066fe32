"""Mask operations on a model: apply, restore, restore with noise, gradient masking.

A mask set is a ``dict[str, torch.BoolTensor]`` keyed by parameter name (``True`` =
keep), as produced by :func:`workbench.pruning.masks.select_masks`.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn


def _param_dict(model_or_params) -> dict[str, torch.Tensor]:
    if isinstance(model_or_params, nn.Module):
        return dict(model_or_params.named_parameters())
    return dict(model_or_params)


def _check_names(params: Mapping, masks: Mapping) -> None:
    missing = [n for n in masks if n not in params]
    if missing:
        raise ValueError(f"masks name parameters the model does not have: {missing[:5]}")
    for name, mask in masks.items():
        if tuple(mask.shape) != tuple(params[name].shape):
            raise ValueError(
                f"mask {name!r} has shape {tuple(mask.shape)}, parameter has "
                f"{tuple(params[name].shape)}"
            )


@torch.no_grad()
def apply_masks(model_or_params, masks: Mapping[str, torch.Tensor], *,
                keep_original: bool = False) -> dict[str, torch.Tensor] | None:
    """Zero the pruned weights in place.

    Args:
        model_or_params: An ``nn.Module`` or a mapping ``name -> Parameter/Tensor``.
        masks: Keep-masks as from :func:`select_masks`.
        keep_original: Return CPU copies of the touched tensors (for :func:`restore`).

    Returns:
        ``{name: original tensor}`` when ``keep_original``, else ``None``.

    Raises:
        ValueError: Names or shapes that do not match.
    """
    params = _param_dict(model_or_params)
    _check_names(params, masks)
    originals = {} if keep_original else None
    for name, mask in masks.items():
        p = params[name]
        if originals is not None:
            originals[name] = p.detach().to("cpu", copy=True)
        p.mul_(mask.to(device=p.device, dtype=p.dtype))
    return originals


@torch.no_grad()
def restore(model_or_params, originals: Mapping[str, torch.Tensor]) -> None:
    """Write the saved originals back (undo :func:`apply_masks`)."""
    params = _param_dict(model_or_params)
    _check_names(params, originals)
    for name, orig in originals.items():
        params[name].copy_(orig.to(params[name].device))


@torch.no_grad()
def remove_with_noise(model_or_params, originals: Mapping[str, torch.Tensor],
                      masks: Mapping[str, torch.Tensor], *, noise: float = 0.01,
                      seed: int = 0) -> None:
    """Restore the pruned weights with Gaussian noise (noisy-restore ablation).

    Kept weights are untouched; every pruned weight becomes
    ``original + noise * std(original tensor) * N(0, 1)`` (relative noise scale,
    seeded; ``noise=0`` is :func:`restore`).
    """
    params = _param_dict(model_or_params)
    _check_names(params, masks)
    gen = torch.Generator().manual_seed(seed)
    for name, mask in masks.items():
        p, orig = params[name], originals[name].float()
        eps = torch.randn(orig.shape, generator=gen) * (noise * float(orig.std()))
        value = torch.where(mask.cpu(), p.detach().float().cpu(), orig + eps)
        p.copy_(value.to(device=p.device, dtype=p.dtype))


def mask_gradients(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> list:
    """Register hooks that zero gradients of pruned weights; returns the hook handles."""
    params = _param_dict(model)
    _check_names(params, masks)
    handles = []
    for name, mask in masks.items():
        mk = mask.to(params[name].device)
        handles.append(params[name].register_hook(lambda g, mk=mk: g * mk.to(g.dtype)))
    return handles


