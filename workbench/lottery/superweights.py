"""Super weights: detection, causal check, protection from pruning, and tracking.

Definition used throughout (Yu et al. 2024, "The Super Weight in Large Language Models"):
a *super weight* (SW) is one scalar of an MLP output projection (``mlp.down_proj`` in
Llama-family models) that creates a *super activation*. Run a forward pass, and for every
block record the largest absolute activation entering the projection (over all tokens;
its channel is the SW's input channel ``col``) and leaving it (its channel is the output
channel ``row``). A layer whose input and output maxima both reach ``threshold``, and
whose output maximum is a *spike* (at least ``spike_ratio`` times the largest activation
of any other output channel), has a coincident spike; its SW is ``weight[row, col]``.
The found SWs are zeroed and the pass repeated, so SWs hidden behind a stronger one are
found too; the model is restored at the end.

Why the spike ratio: once a SW is zeroed, the massive *input* activation (created
upstream) is still there, and every ordinary weight of column ``col`` now writes a large
but unremarkable output; without the ratio the iteration would list the whole column,
one entry per pass, as long as ``|x_col * w| >= threshold``. The real SmolLM2-135M shows
this after zeroing its layer-28 SW (largest output 2071 vs 1983 for the next channel).
The price: two SWs of similar size in one layer *in the same pass* (largest / second <
``spike_ratio``) are not flagged; lower ``spike_ratio`` towards 1 to see them (and the
cascade) and judge with :func:`super_weight_effect`.

Positions are stored in *weight-tensor coordinates*: ``(param, row, col)`` indexes
``model.get_parameter(param)[row, col]``. For ``nn.Linear`` that is
``[out_channel, in_channel]``; for GPT-2's transposed ``Conv1D`` it is
``[in_channel, out_channel]``. Both channels are also kept in the record.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from workbench.core.evaluate import perplexity
from workbench.core.devices import model_device
from workbench.core.models import check_model_tokens, is_conv1d, transformer_blocks

DEFAULT_THRESHOLD = 1000.0
DEFAULT_SPIKE_RATIO = 2.0
DEFAULT_MODULE = "mlp.down_proj"

Position = tuple[str, int, int]


def _block_names(model: nn.Module) -> list[str]:
    """Qualified module names of the transformer blocks, in order."""
    blocks = transformer_blocks(model)
    names = {id(m): n for n, m in model.named_modules()}
    return [names[id(b)] for b in blocks]


def projection_module_name(model: nn.Module) -> str:
    """The MLP output projection inside a block: ``"mlp.down_proj"`` (Llama family) or
    ``"mlp.c_proj"`` (GPT-2).

    Raises:
        ValueError: The first block has neither.
    """
    block = transformer_blocks(model)[0]
    for name in (DEFAULT_MODULE, "mlp.c_proj"):
        try:
            block.get_submodule(name)
            return name
        except AttributeError:
            continue
    raise ValueError("no MLP output projection found in the first block (looked for "
                     f"{DEFAULT_MODULE!r} and 'mlp.c_proj'); pass module_name explicitly")


def _projection_modules(model: nn.Module, module_name: str) -> list[tuple[int, str, nn.Module]]:
    out = []
    for layer, block_name in enumerate(_block_names(model)):
        block = model.get_submodule(block_name)
        try:
            module = block.get_submodule(module_name)
        except AttributeError as err:
            raise ValueError(
                f"module_name {module_name!r} not found in block {block_name!r}; use e.g. "
                "'mlp.down_proj' (Llama family) or 'mlp.c_proj' (GPT-2)"
            ) from err
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise ValueError(f"module_name {module_name!r} must name a module with a 2-D weight")
        out.append((layer, f"{block_name}.{module_name}.weight", module))
    return out


@torch.no_grad()
def _activation_maxima(
    model: nn.Module, tokens: torch.Tensor, modules: list[tuple[int, str, nn.Module]]
) -> dict[int, tuple[float, int, float, int, float]]:
    """Per layer: (max |input|, its channel, max |output|, its channel, second-largest
    per-channel max |output|)."""
    stats: dict[int, tuple[float, int, float, int, float]] = {}

    def hook_for(layer: int):
        def hook(_mod, inputs, output):
            x = inputs[0].detach().abs().flatten(0, -2).amax(dim=0)
            y = output.detach().abs().flatten(0, -2).amax(dim=0)
            top = y.topk(min(2, y.numel())).values
            second = float(top[1]) if top.numel() > 1 else 0.0
            stats[layer] = (float(x.max()), int(x.argmax()), float(top[0]), int(y.argmax()),
                            second)

        return hook

    handles = [m.register_forward_hook(hook_for(layer)) for layer, _, m in modules]
    was_training = model.training
    model.eval()
    try:
        kwargs = {"use_cache": False} if hasattr(model, "config") else {}
        model(tokens.to(model_device(model)), **kwargs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return stats


def activation_profile(
    model: nn.Module, tokens: torch.Tensor, *, module_name: str = DEFAULT_MODULE
) -> list[dict[str, Any]]:
    """Largest |input| and |output| activation of every block's projection, one row a layer.

    Args:
        model: A causal LM whose blocks hold ``module_name``.
        tokens: ``LongTensor[batch, seq]``.
        module_name: The projection inside each block.

    Returns:
        Records ``layer, param, input_max, input_channel, output_max, output_channel,
        output_second`` (activation magnitudes in the model's activation units;
        ``output_second`` is the largest activation of any other output channel).
    """
    check_model_tokens("tokens", tokens, model)
    modules = _projection_modules(model, module_name)
    stats = _activation_maxima(model, tokens, modules)
    return [
        dict(layer=layer, param=param, input_max=stats[layer][0], input_channel=stats[layer][1],
             output_max=stats[layer][2], output_channel=stats[layer][3],
             output_second=stats[layer][4])
        for layer, param, _ in modules
    ]


def find_super_weights(
    model: nn.Module,
    tokens: torch.Tensor,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    spike_ratio: float = DEFAULT_SPIKE_RATIO,
    max_iter: int = 10,
    module_name: str = DEFAULT_MODULE,
) -> list[dict[str, Any]]:
    """Detect super weights by coincident activation spikes (Yu et al. 2024).

    Each iteration runs one forward pass on ``tokens``, flags every layer whose
    projection input maximum and output maximum both reach ``threshold``, whose output
    maximum is at least ``spike_ratio`` times that of any other output channel, and whose
    ``weight[row, col]`` is not yet listed, then zeroes the new SWs and looks again. It
    stops when an iteration finds nothing new or after ``max_iter`` iterations. The model
    weights are restored before returning.

    Args:
        model: A causal LM.
        tokens: ``LongTensor[batch, seq]``; a few sentences suffice (the spikes are
            input-agnostic in practice).
        threshold: Activation magnitude both spikes must reach (absolute units). The
            default suits the real SmolLM2-135M (SW spikes are in the thousands there,
            ordinary layers below ~500).
        spike_ratio: Minimum ratio of the largest to the second-largest per-channel
            output maximum (>= 1; 1 disables the check). See the module docstring.
        max_iter: Maximum number of detect-and-zero passes (>= 1).
        module_name: The projection inside each block (``"mlp.down_proj"`` for Llama,
            ``"mlp.c_proj"`` for GPT-2).

    Returns:
        One record per SW, in discovery order: ``layer``, ``param``, ``row``, ``col``
        (weight coordinates), ``in_channel``, ``out_channel``, ``value`` (the weight),
        ``input_activation`` and ``output_activation`` (the spikes, absolute),
        ``output_ratio`` (largest / second-largest output channel) and ``iteration``
        (0-based pass that found it).

    Raises:
        ValueError: Bad ``threshold``, ``max_iter``, ``tokens`` or ``module_name``.
    """
    check_model_tokens("tokens", tokens, model)
    if not (isinstance(threshold, (int, float)) and threshold > 0):
        raise ValueError(f"threshold must be a positive number, got {threshold!r}")
    if not (isinstance(spike_ratio, (int, float)) and spike_ratio >= 1):
        raise ValueError(f"spike_ratio must be a number >= 1, got {spike_ratio!r}")
    if not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    modules = _projection_modules(model, module_name)
    by_layer = {layer: (param, module) for layer, param, module in modules}
    found: list[dict[str, Any]] = []
    seen: set[Position] = set()
    with restored(model, []) as saved:
        for iteration in range(max_iter):
            stats = _activation_maxima(model, tokens, modules)
            new = []
            for layer in sorted(stats):
                x_max, in_ch, y_max, out_ch, y_second = stats[layer]
                if x_max < threshold or y_max < threshold:
                    continue
                ratio = y_max / y_second if y_second > 0 else float("inf")
                if ratio < spike_ratio:
                    continue
                param, module = by_layer[layer]
                row, col = (in_ch, out_ch) if is_conv1d(module) else (out_ch, in_ch)
                if (param, row, col) in seen:
                    continue
                weight = module.weight
                new.append(dict(
                    layer=layer, param=param, row=row, col=col, in_channel=in_ch,
                    out_channel=out_ch, value=float(weight.detach()[row, col]),
                    input_activation=x_max,
                    output_activation=y_max, output_ratio=ratio, iteration=iteration,
                ))
            if not new:
                break
            for sw in new:
                seen.add((sw["param"], sw["row"], sw["col"]))
                saved.save(model, [sw])
                with torch.no_grad():
                    model.get_parameter(sw["param"])[sw["row"], sw["col"]] = 0
            found.extend(new)
    return found


class _Saved:
    """Original values of weight entries, to put back later."""

    def __init__(self) -> None:
        self.values: dict[Position, torch.Tensor] = {}

    def save(self, model: nn.Module, positions: Iterable) -> None:
        for pos in _positions(positions):
            if pos not in self.values:
                self.values[pos] = model.get_parameter(pos[0])[pos[1], pos[2]].detach().clone()

    @torch.no_grad()
    def restore(self, model: nn.Module) -> None:
        for (param, row, col), value in self.values.items():
            model.get_parameter(param)[row, col] = value


@contextlib.contextmanager
def restored(model: nn.Module, positions: Iterable) -> Iterator[_Saved]:
    """Context: remember the listed weight entries (more can be added) and restore them."""
    saved = _Saved()
    saved.save(model, positions)
    try:
        yield saved
    finally:
        saved.restore(model)


@contextlib.contextmanager
def zeroed(model: nn.Module, positions: Iterable) -> Iterator[None]:
    """Context: the listed weight entries are zero inside, restored on exit.

    Args:
        model: The model to modify in place.
        positions: SW records (dicts with ``param``, ``row``, ``col``) or
            ``(param, row, col)`` tuples.
    """
    positions = list(_positions(positions))
    with restored(model, positions):
        with torch.no_grad():
            for param, row, col in positions:
                model.get_parameter(param)[row, col] = 0
        yield


def _positions(items: Iterable) -> Iterator[Position]:
    for item in items:
        if isinstance(item, Mapping):
            yield (str(item["param"]), int(item["row"]), int(item["col"]))
        else:
            param, row, col = item
            yield (str(param), int(row), int(col))


def control_positions(
    model: nn.Module, super_weights: Sequence, *, seed: int = 0
) -> list[Position]:
    """Control weights for the causal check: one per SW, from the same matrix.

    For each SW, draw (seeded) one other entry of the same weight matrix whose magnitude
    is at least the SW's, excluding all listed SWs. When the SW is the largest entry of
    its matrix (no such entry exists), take the largest-magnitude non-SW entry instead.

    Returns:
        ``(param, row, col)`` tuples, as many as SWs, all distinct.
    """
    rng = np.random.default_rng(seed)
    sws = list(_positions(super_weights))
    excluded = set(sws)
    chosen: list[Position] = []
    for param, row, col in sws:
        w = model.get_parameter(param).detach().abs().float().cpu()
        flat = w.flatten()
        n_cols = w.shape[1]
        taken = {r * n_cols + c for p, r, c in excluded | set(chosen) if p == param}
        ok = torch.nonzero(flat >= flat[row * n_cols + col]).flatten().tolist()
        candidates = [i for i in ok if i not in taken]
        if candidates:
            idx = int(candidates[int(rng.integers(len(candidates)))])
        else:
            order = torch.argsort(flat, descending=True).tolist()
            idx = next(i for i in order if i not in taken)
        chosen.append((param, idx // n_cols, idx % n_cols))
    return chosen


def super_weight_effect(
    model: nn.Module,
    tokens: torch.Tensor,
    super_weights: Sequence,
    *,
    n_controls: int = 1,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = False,
) -> dict[str, Any]:
    """Causal check: perplexity with the SWs zeroed vs zeroing as many control weights.

    Args:
        model: The model (restored on return).
        tokens: Evaluation ``LongTensor[n, seq_len]``.
        super_weights: The SWs to zero together (records or tuples); pass ``sws[:1]`` for
            the top one alone.
        n_controls: Number of independent control draws (seeds ``seed..seed+n-1``).
        seed: First control seed.
        batch_size: Blocks per forward pass.
        progress: Show progress bars.

    Returns:
        ``ppl_dense``, ``ppl_zeroed``, ``ppl_control`` (list, one per draw),
        ``ppl_control_mean``, ``controls`` (the positions), ``n_weights``, ``n_blocks``,
        ``seq_len``.
    """
    if not isinstance(n_controls, int) or n_controls < 0:
        raise ValueError(f"n_controls must be a non-negative integer, got {n_controls!r}")
    check_model_tokens("tokens", tokens, model)
    sws = list(_positions(super_weights))
    if not sws:
        raise ValueError("super_weights must list at least one weight")
    ppl = lambda: perplexity(model, tokens, batch_size=batch_size, progress=progress)  # noqa: E731
    dense = ppl()
    with zeroed(model, sws):
        zero = ppl()
    controls, ppl_controls = [], []
    for k in range(n_controls):
        pos = control_positions(model, sws, seed=seed + k)
        with zeroed(model, pos):
            ppl_controls.append(ppl())
        controls.append(pos)
    return dict(
        ppl_dense=dense, ppl_zeroed=zero, ppl_control=ppl_controls,
        ppl_control_mean=float(np.mean(ppl_controls)) if ppl_controls else float("nan"),
        controls=controls, n_weights=len(sws), n_blocks=int(tokens.shape[0]),
        seq_len=int(tokens.shape[1]),
    )


def protect_scores(
    scores: Mapping[str, torch.Tensor], super_weights: Sequence
) -> dict[str, torch.Tensor]:
    """Copy of ``scores`` with the SW entries set to ``+inf`` (never pruned).

    SWs whose ``param`` is not in ``scores`` are ignored (that matrix is not pruned).

    Args:
        scores: ``{param name: score tensor shaped like the weight}``.
        super_weights: SW records or ``(param, row, col)`` tuples.
    """
    out = dict(scores)
    for param, row, col in _positions(super_weights):
        if param in out:
            if out[param] is scores[param]:
                out[param] = scores[param].clone()
            out[param][row, col] = float("inf")
    return out


def super_weight_status(
    super_weights: Sequence,
    *,
    masks: Mapping[str, torch.Tensor] | None = None,
    weights: Mapping[str, torch.Tensor] | nn.Module | None = None,
) -> list[dict[str, Any]]:
    """Whether each SW is kept by ``masks`` and how far its value moved.

    Args:
        super_weights: SW records (need ``value`` for the drift) or tuples.
        masks: ``{param: BoolTensor}`` (True = kept); a missing param counts as kept.
        weights: A model or ``{param: tensor}`` (e.g. a state dict) with current values.

    Returns:
        One dict per SW: ``param``, ``row``, ``col``, ``kept`` (bool), ``value``
        (current, NaN without ``weights``), ``rel_drift`` = ``|value - original| /
        |original|`` (NaN without ``weights`` or an original value).
    """
    out = []
    for item, (param, row, col) in zip(super_weights, _positions(super_weights)):
        kept = True
        if masks is not None and param in masks:
            kept = bool(masks[param][row, col])
        value = float("nan")
        if weights is not None:
            tensor = (weights.get_parameter(param) if isinstance(weights, nn.Module)
                      else weights[param])
            value = float(tensor.detach()[row, col])
        original = item.get("value") if isinstance(item, Mapping) else None
        drift = (abs(value - original) / abs(original)
                 if original not in (None, 0) and not np.isnan(value) else float("nan"))
        out.append(dict(param=param, row=row, col=col, kept=kept, value=value,
                        rel_drift=drift))
    return out


def track_super_weights(super_weights: Sequence, snapshots: Iterable[Mapping[str, Any]]):
    """Tidy table of SW fate over a sequence of masks and/or weights.

    Args:
        super_weights: SW records.
        snapshots: Mappings with optional ``masks``, ``weights`` (model or state dict)
            and any scalar labels (e.g. ``round``), one per time point.

    Returns:
        A pandas DataFrame, one row per (snapshot, SW): the labels, ``sw`` (index),
        and the fields of :func:`super_weight_status`.
    """
    import pandas as pd

    rows = []
    for snap in snapshots:
        labels = {k: v for k, v in snap.items() if k not in ("masks", "weights")}
        status = super_weight_status(super_weights, masks=snap.get("masks"),
                                     weights=snap.get("weights"))
        for i, s in enumerate(status):
            rows.append({**labels, "sw": i, **s})
    return pd.DataFrame(rows)
