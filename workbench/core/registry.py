"""Name -> entry registries: each variant of a concept is declared exactly once.

A :class:`Registry` maps a public name (``"wanda"``, ``"taylor"``, ``"ggn"``, ...) to
one :class:`Entry`: the function that implements the variant plus its properties as
data (needs calibration data, default scope, reusable across a sweep, display label and
colour, ...). Looking up an unknown name raises a ``ValueError`` that names the
argument and lists every registered name; there is no fall-through branch anywhere.

Modeled on open_lth's ``pruning/registry.py`` (one name -> one strategy). Registries
that are filled by modules of a higher layer name those modules in ``providers``; they
are imported on the first lookup, so registration order never matters to a caller.

Example:
    >>> REG = Registry("score kind", argument="score_kind")
    >>> @REG.register("magnitude", label="|w|", needs_calibration=False)
    ... def magnitude(model, **_): ...
    >>> REG.get("magnitude").props["label"]
    '|w|'
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence


@dataclass(frozen=True)
class Entry:
    """One registered variant.

    Attributes:
        name: Public name (what users type).
        fn: The implementation.
        props: Declared properties (plain data: bools, strings, numbers).
    """

    name: str
    fn: Callable[..., Any]
    props: dict = field(default_factory=dict)

    def __getattr__(self, key: str) -> Any:
        props = object.__getattribute__(self, "props")
        if key in props:
            return props[key]
        raise AttributeError(f"{self.name!r} has no property {key!r}")


class Registry:
    """An ordered name -> :class:`Entry` map with clear errors.

    Args:
        what: What the names are, for messages (e.g. ``"pruning method"``).
        argument: The argument name users pass the name in (for messages).
        providers: Modules (dotted paths) whose import registers entries; imported on
            first lookup.
        defaults: Property defaults every entry gets unless it overrides them.
    """

    def __init__(self, what: str, *, argument: str, providers: Sequence[str] = (),
                 defaults: dict | None = None):
        self.what = what
        self.argument = argument
        self._providers = tuple(providers)
        self._loaded = not self._providers
        self._defaults = dict(defaults or {})
        self._entries: dict[str, Entry] = {}

    # ------------------------------------------------------------------ registering
    def register(self, name: str, fn: Callable | None = None, **props):
        """Register ``fn`` under ``name`` (usable as a decorator).

        Raises:
            ValueError: ``name`` is already registered, or a property is not declared in
                ``defaults`` (a typo in a property name would otherwise be silent).
        """
        if fn is None:
            return lambda f: self.register(name, f, **props)
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} is registered twice")
        unknown = sorted(set(props) - set(self._defaults)) if self._defaults else []
        if unknown:
            raise ValueError(f"{self.what} {name!r}: unknown properties {unknown}; "
                             f"declared: {sorted(self._defaults)}")
        self._entries[name] = Entry(name, fn, {**self._defaults, **props})
        return fn

    # ------------------------------------------------------------------ lookup
    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in self._providers:
                importlib.import_module(module)

    def get(self, name: Any) -> Entry:
        """The entry for ``name``.

        Raises:
            ValueError: Unknown name; the message names the argument and lists the
                registered names.
        """
        self._load()
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ValueError(f"{self.argument} must be one of {self.names()} "
                             f"(registered {self.what}s), got {name!r}") from None

    def check(self, name: Any) -> str:
        """Return ``name`` if registered, else raise like :meth:`get`."""
        return self.get(name).name

    def names(self, **where) -> tuple[str, ...]:
        """Registered names in registration order, optionally filtered by properties
        (``names(needs_calibration=True)``)."""
        self._load()
        return tuple(n for n, e in self._entries.items()
                     if all(e.props.get(k) == v for k, v in where.items()))

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        self._load()
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        self._load()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}, {list(self._entries)})"
