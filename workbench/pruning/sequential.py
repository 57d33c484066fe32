"""Sequential (block-by-block) calibration, the Wanda / SparseGPT protocol.

The inputs of transformer block 0 are captured once (a forward pre-hook on block 0 records
its hidden states and every other argument it receives, e.g. transformers 5.x Llama's
``position_embeddings`` / ``attention_mask``, then stops the forward). Block ``i`` is then
run on the outputs of the already pruned block ``i - 1``: its linear layers' input
statistics are streamed, the block is pruned, and its outputs become the next block's
inputs. Each block runs exactly twice (statistics, then outputs).

Large models: with ``device`` given, the model stays where it is (e.g. CPU) and only the
block being calibrated is moved to ``device`` and back, so the peak on ``device`` is one
block plus its calibration activations (the captured block inputs live on ``device``
too; ``store_device`` can keep them on the CPU instead).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from workbench.core.devices import model_device
from workbench.core.models import is_hf_model, transformer_blocks
from workbench.pruning.calibration import batches_of, input_statistics


class _Stop(Exception):
    pass


def _to(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to(o, device) for o in obj)
    if isinstance(obj, list):
        return [_to(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def _detach(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, (tuple, list)):
        return type(obj)(_detach(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _detach(v) for k, v in obj.items()}
    return obj


@torch.no_grad()
def capture_block_inputs(model: nn.Module, batches: Sequence[torch.Tensor], *,
                         store_device: str | torch.device | None = None) -> list[tuple]:
    """Inputs of the first transformer block for every batch, without running the rest.

    A forward pre-hook on block 0 records ``(hidden_states, other positional args,
    keyword args)`` (attention mask, position ids, rotary ``position_embeddings``, ...)
    and raises to stop the forward. Only the modules before block 0 (embeddings, rotary
    embedding) run, on the model's own device.

    Returns:
        ``[(hidden, args, kwargs), ...]``, one per batch (on ``store_device`` if given).
    """
    block0 = transformer_blocks(model)[0]
    device = model_device(model)
    captured: list[tuple] = []

    def hook(_mod, args, kwargs):
        kwargs = dict(kwargs)
        if args:
            hidden, rest = args[0], tuple(args[1:])
        else:
            hidden, rest = kwargs.pop("hidden_states"), ()
        kwargs.pop("past_key_values", None)
        kwargs.pop("past_key_value", None)
        kwargs["use_cache"] = False if "use_cache" in kwargs else kwargs.get("use_cache")
        if kwargs["use_cache"] is None:
            kwargs.pop("use_cache")
        item = (_detach(hidden), _detach(rest), _detach(kwargs))
        captured.append(_to(item, store_device) if store_device is not None else item)
        raise _Stop

    handle = block0.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in batches:
            try:
                (model(batch.to(device), use_cache=False) if is_hf_model(model)
                 else model(batch.to(device)))
            except _Stop:
                pass
    finally:
        handle.remove()
    if len(captured) != len(batches):
        raise RuntimeError("block 0 was not reached for every calibration batch")
    return captured


def _block_forward(block: nn.Module, item: tuple, device) -> torch.Tensor:
    hidden, rest, kwargs = _to(item, device)
    out = block(hidden, *rest, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


def _home(block: nn.Module) -> torch.device:
    """Where a block's weights live between its passes (its first parameter's device)."""
    return next(block.parameters()).device


def _place(block: nn.Module, device: torch.device) -> None:
    """Move a block (weights and buffers) to ``device``."""
    block.to(device)


def modules_by_block(model: nn.Module, modules: Mapping[str, nn.Module]) -> list[dict]:
    """Split ``{param name: module}`` by the transformer block that owns each module.

    Returns:
        One dict per block (in block order); modules outside every block are left out.
    """
    blocks = transformer_blocks(model)
    by_block: list[dict] = [{} for _ in blocks]
    owner = {id(m): i for i, b in enumerate(blocks) for m in b.modules()}
    for name, module in modules.items():
        if id(module) in owner:
            by_block[owner[id(module)]][name] = module
    return by_block


@torch.no_grad()
def sequential_calibration(
    model: nn.Module,
    tokens,
    prune_block: Callable[[int, dict, dict], Any],
    *,
    modules: Mapping[str, nn.Module],
    batch_size: int = 8,
    device: str | torch.device | None = None,
    stats_options: Mapping[str, Any] | None = None,
) -> None:
    """Calibrate and prune block by block.

    Args:
        model: The causal LM (its blocks from :func:`workbench.core.models.transformer_blocks`).
        tokens: Calibration token ids ``[n, seq]``.
        prune_block: ``f(index, {name: module}, {name: InputStats})`` pruning one block in
            place from the statistics of its (already pruned-upstream) inputs.
        modules: All prunable modules (``{param name: module}``); split per block.
        batch_size: Sequences per batch.
        device: Where each block runs. ``None``: the block's own device. Otherwise the
            embeddings run where the model is, the captured block inputs are moved to
            ``device``, and each block is moved to ``device`` for its two passes and back
            to where it was (so a model kept on the CPU is pruned one block at a time on
            a GPU).
        stats_options: Passed to :func:`workbench.pruning.calibration.input_statistics`.
    """
    blocks = transformer_blocks(model)
    run_on = torch.device(device) if device is not None else None
    items = capture_block_inputs(model, batches_of(tokens, batch_size),
                                 store_device=run_on)
    by_block = modules_by_block(model, modules)
    for i, block in enumerate(blocks):
        home = _home(block)
        here = run_on if run_on is not None else home
        if here != home:
            _place(block, here)
        try:
            if by_block[i]:
                with input_statistics(by_block[i], **(stats_options or {})) as stats:
                    for item in items:
                        _block_forward(block, item, here)
                prune_block(i, by_block[i], stats)
            outs = [_block_forward(block, item, here).to(item[0].device) for item in items]
            items = [(o, rest, kw) for o, (_, rest, kw) in zip(outs, items)]
        finally:
            if here != home:
                _place(block, home)
