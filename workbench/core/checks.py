"""Argument checks for the public boundary: one message style everywhere.

Every message names the argument, shows the value it got and says what is allowed,
e.g. ``scope must be one of ('global', 'layer', 'row'), got 'rwo'``. Functions raise
``ValueError`` for a bad value and ``TypeError`` for a bad type.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch


def check_choice(argument: str, value: Any, allowed: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``allowed``.

    Raises:
        ValueError: ``value`` not allowed (message lists the choices).
    """
    allowed = tuple(allowed)
    try:
        ok = value in allowed
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"{argument} must be one of {allowed}, got {value!r}")
    return value


def check_range(argument: str, value: Any, lo: float | None = None, hi: float | None = None,
                *, lo_open: bool = False, hi_open: bool = False, integer: bool = False) -> Any:
    """Return ``value`` if it is a number in the interval ``[lo, hi]`` (ends as given).

    Raises:
        TypeError: Not a real number (or not an integer when ``integer``; bools refused).
        ValueError: Outside the interval.
    """
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        want = "an integer" if integer else "a number"
        raise TypeError(f"{argument} must be {want}, got {type(value).__name__} {value!r}")
    if value != value:  # NaN
        raise ValueError(f"{argument} must be a number, got NaN")
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    interval = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
    bad = (lo is not None and (value <= lo if lo_open else value < lo)) or (
        hi is not None and (value >= hi if hi_open else value > hi))
    if bad:
        raise ValueError(f"{argument} must be in {interval}, got {value!r}")
    return value


def check_kwargs(function: str, given: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """Reject keyword arguments a function does not take (no silent ``**options``).

    Raises:
        TypeError: Names the function, the unknown keywords and the accepted ones.
    """
    allowed = sorted(set(allowed))
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        call = function if function.endswith(")") else f"{function}()"
        raise TypeError(f"{call} got unknown keyword argument(s) {unknown}; "
                        f"accepted: {allowed}")


def check_keys(mapping: Any, allowed: Iterable[str], where: str) -> None:
    """Refuse a non-mapping ``mapping`` or keys outside ``allowed`` (config files, specs).

    Raises:
        ValueError: Names ``where``, the unknown keys and the allowed ones.
    """
    if not isinstance(mapping, Mapping):
        raise ValueError(f"{where} must be a mapping, got {type(mapping).__name__}")
    unknown = sorted(set(map(str, mapping)) - set(allowed))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where}; allowed: {sorted(allowed)}")


def check_token_ids(argument: str, ids: Any, *, vocab_size: int | None = None,
                    max_length: int | None = None, ndim: int | None = 2) -> torch.Tensor:
    """Validate a tensor of token ids (``LongTensor[n, seq]`` by default).

    Args:
        argument: Argument name for messages.
        ids: The value to check.
        vocab_size: Ids must be ``< vocab_size`` when given.
        max_length: Sequence length (last dim) must be ``<= max_length`` when given.
        ndim: Required number of dimensions (``None``: any >= 1).

    Returns:
        ``ids`` unchanged.

    Raises:
        TypeError: Not a tensor, or not an integer dtype.
        ValueError: Wrong shape, empty, negative ids, ids >= vocab_size, too long.
    """
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{argument} must be a torch.LongTensor of token ids, "
                        f"got {type(ids).__name__}")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(f"{argument} must hold integer token ids, got dtype {ids.dtype}")
    if ndim is not None and ids.ndim != ndim:
        raise ValueError(f"{argument} must have {ndim} dimensions, got shape "
                         f"{tuple(ids.shape)}")
    if ids.numel() == 0:
        raise ValueError(f"{argument} is empty (shape {tuple(ids.shape)})")
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0:
        raise ValueError(f"{argument} holds negative token id {lo}")
    if vocab_size is not None and hi >= vocab_size:
        raise ValueError(f"{argument} holds token id {hi}, but the vocabulary has "
                         f"{vocab_size} ids (0..{vocab_size - 1})")
    if max_length is not None and ids.shape[-1] > max_length:
        raise ValueError(f"{argument} has sequence length {ids.shape[-1]}, longer than the "
                         f"model's {max_length} positions")
    return ids
