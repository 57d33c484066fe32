"""Argument checks for the public boundary: one message style everywhere.

Every message names the argument, shows the value it got and says what is allowed,
e.g. ``scope must be one of ('global', 'layer', 'row'), got 'rwo'``. Functions raise
``ValueError`` for a bad value and ``TypeError`` for a bad type.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Mapping

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


def renamed_note(names: Iterable[str], renamed: Mapping[str, str] | None) -> str:
    """`` ('kind' is now 'fisher_type')`` for the names of ``names`` found in ``renamed``."""
    hits = [f"{name!r} is now {renamed[name]!r}" for name in names if renamed and name in renamed]
    return f" ({'; '.join(hits)})" if hits else ""


def check_kwargs(function: str, given: Mapping[str, Any], allowed: Iterable[str], *,
                 renamed: Mapping[str, str] | None = None) -> None:
    """Reject keyword arguments a function does not take (no silent ``**options``).

    Args:
        renamed: Old name -> new name of keywords that were renamed; an old one is refused
            like any unknown keyword, and the message names its new name.

    Raises:
        TypeError: Names the function, the unknown keywords and the accepted ones.
    """
    allowed = sorted(set(allowed))
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        call = function if function.endswith(")") else f"{function}()"
        raise TypeError(f"{call} got unknown keyword argument(s) {unknown}"
                        f"{renamed_note(unknown, renamed)}; accepted: {allowed}")


def renamed_keywords(**old_to_new: str) -> Callable[[Callable], Callable]:
    """Decorate a function whose keyword arguments were renamed (``kind="fisher_type"``).

    The function's signature has the new names only. A call with an old name raises the
    ``TypeError`` Python raises for an unknown keyword, with the new name added to the
    message, e.g. ``diagonal_fisher() got an unexpected keyword argument 'kind' ('kind' is
    now 'fisher_type')``. There is no silent alias: old code fails loudly at the call.
    The mapping is kept on the wrapper as ``__renamed_keywords__`` (tests read it).
    """
    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            old = sorted(set(kwargs) & set(old_to_new))
            if old:
                raise TypeError(f"{fn.__qualname__}() got an unexpected keyword argument "
                                f"{old[0]!r}{renamed_note(old, old_to_new)}")
            return fn(*args, **kwargs)

        inner.__renamed_keywords__ = dict(old_to_new)
        return inner

    return wrap


def check_keys(mapping: Any, allowed: Iterable[str], where: str, *,
               renamed: Mapping[str, str] | None = None) -> None:
    """Refuse a non-mapping ``mapping`` or keys outside ``allowed`` (config files, specs).

    Args:
        renamed: Old key -> new key of renamed keys; an old one is refused like any
            unknown key, and the message names its new name.

    Raises:
        ValueError: Names ``where``, the unknown keys and the allowed ones.
    """
    if not isinstance(mapping, Mapping):
        raise ValueError(f"{where} must be a mapping, got {type(mapping).__name__}")
    unknown = sorted(set(map(str, mapping)) - set(allowed))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where}"
                         f"{renamed_note(unknown, renamed)}; allowed: {sorted(allowed)}")


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


def check_option_types(function: str, options: Mapping[str, Any], *fns: Any) -> None:
    """Check keyword options against the defaults and annotations of ``fns``.

    An option whose parameter defaults to a bool (or is annotated ``bool``) must be a
    bool (``sequential="no"`` is refused, not truthy); one annotated ``int`` must be an
    integer (``n_samples=2.7`` is refused, not truncated); one annotated ``float`` must be
    a finite real number (``damping=inf`` and NaN are refused). ``None`` passes where the
    annotation allows it. Options none of ``fns`` declares are left to
    :func:`check_kwargs`.

    Raises:
        TypeError: Wrong type (names ``function``, the option and the allowed type).
        ValueError: A non-finite float.
    """
    import inspect
    import math

    declared: dict[str, inspect.Parameter] = {}
    for fn in reversed(fns):
        if fn is None:
            continue
        for p in inspect.signature(fn).parameters.values():
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
                declared[p.name] = p
    for name, value in options.items():
        p = declared.get(name)
        if p is None:
            continue
        ann = p.annotation if isinstance(p.annotation, str) else getattr(
            p.annotation, "__name__", str(p.annotation))
        parts = {a.strip() for a in str(ann).replace("Optional[", "").rstrip("]").split("|")}
        default = p.default
        if value is None and ("None" in parts or default is None):
            continue
        if parts & {"bool"} or isinstance(default, bool):
            if not isinstance(value, bool):
                raise TypeError(f"{function}: {name} must be True or False, got "
                                f"{type(value).__name__} {value!r}")
        elif "int" in parts and "float" not in parts or (
                type(default) is int and "float" not in parts):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{function}: {name} must be an integer, got "
                                f"{type(value).__name__} {value!r}")
        elif "float" in parts or isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{function}: {name} must be a finite number, got "
                                f"{type(value).__name__} {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{function}: {name} must be a finite number, got {value!r}")
