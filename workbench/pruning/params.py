"""Which weights are prunable: linear layers (``nn.Linear`` and GPT-2 ``Conv1D``).

:func:`workbench.core.models.is_conv1d` is the one place that recognises GPT-2's
``Conv1D`` (weight stored ``[in, out]``); everything else asks it.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Collection, Iterable

from torch import nn

from workbench.core.models import is_conv1d, transformer_blocks


def is_linear_module(module: nn.Module) -> bool:
    """True for ``nn.Linear`` and GPT-2 ``Conv1D`` (the layers whose weights are pruned)."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def _matches(name: str, pattern: str) -> bool:
    if fnmatch.fnmatchcase(name, pattern):
        return True
    try:
        return re.search(pattern, name) is not None
    except re.error:
        return False


def _check_patterns(argument: str, patterns, names: Iterable[str]) -> list[str]:
    if isinstance(patterns, str):
        raise TypeError(f"{argument} must be a list of patterns, got the string {patterns!r} "
                        f"(write [{patterns!r}])")
    patterns = list(patterns)
    names = list(names)
    unmatched = [p for p in patterns if not any(_matches(n, p) for n in names)]
    if unmatched:
        shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        raise ValueError(f"{argument} pattern(s) {unmatched} match no prunable weight; "
                         f"names look like: {shown or '(none)'}")
    return patterns


def prunable_modules(
    model: nn.Module,
    include: Collection[str] | None = None,
    exclude: Collection[str] | None = None,
) -> dict[str, nn.Module]:
    """Modules whose ``weight`` is scored/pruned, keyed by the *parameter* name.

    Default: the linear layers (``nn.Linear`` and GPT-2 ``Conv1D``) inside the
    transformer blocks, so biases, norms, embeddings and the LM head are excluded.
    ``include`` (glob or regex patterns on parameter names such as
    ``"model.layers.0.mlp.*"``) replaces the default with every linear/Conv1D weight
    whose name matches; ``exclude`` then removes matches.

    Patterns that select nothing are an **error**, never a silent no-op: every
    ``include`` pattern must match a linear weight of the model, every ``exclude``
    pattern must match one of the weights selected so far, and the result must not be
    empty (a typo would otherwise prune nothing and report sparsity 0).

    Returns:
        ``{"<module name>.weight": module}`` in model order.

    Raises:
        ValueError: A pattern that matches nothing, or nothing left to prune.
        TypeError: A bare string instead of a list of patterns.
    """
    linear = {f"{n}.weight" if n else "weight": m for n, m in model.named_modules()
              if is_linear_module(m)}
    if include is None:
        try:
            block_ids = {id(m) for b in transformer_blocks(model) for m in b.modules()}
            out = {n: m for n, m in linear.items() if id(m) in block_ids}
        except ValueError:
            out = linear  # not a transformer: every linear layer
    else:
        patterns = _check_patterns("include", include, linear)
        out = {n: m for n, m in linear.items() if any(_matches(n, p) for p in patterns)}
    if exclude:
        patterns = _check_patterns("exclude", exclude, out)
        out = {n: m for n, m in out.items() if not any(_matches(n, p) for p in patterns)}
    if not out:
        raise ValueError(f"no prunable weights selected (include={include!r}, "
                         f"exclude={exclude!r}); the model has {len(linear)} linear layers")
    return out


def prunable_parameters(model: nn.Module, include=None, exclude=None) -> dict[str, nn.Parameter]:
    """``{name: weight parameter}`` for :func:`prunable_modules`."""
    return {n: m.weight for n, m in prunable_modules(model, include, exclude).items()}


def transposed_names(model: nn.Module) -> set[str]:
    """Names of weight parameters stored ``[in, out]`` (GPT-2 ``Conv1D``)."""
    return {f"{n}.weight" for n, m in model.named_modules() if is_conv1d(m)}
