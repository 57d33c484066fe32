"""The notebook contract: what a notebook declares in its ``parameters`` cell.

A notebook under ``notebooks/`` (a jupytext py:percent ``.py`` or an ``.ipynb``) takes its
inputs from one cell tagged ``parameters`` (papermill's convention). Each assignment there
is a parameter: its name, its default value and, in a trailing ``# type: T  help``
comment, its declared type (:func:`value_problem` lists the types) and help text::

    n_blocks = 16  # type: int[1:]  blocks per split
    methods = ["magnitude", "wanda"]  # type: list[@method]

This module reads that cell from the file's text (no jupytext, no papermill, no kernel:
:func:`declared_parameters`, :func:`notebook_parameters`) and checks given values against
it (:func:`check_parameters`). It is part of the design layer: a spec
(:mod:`workbench.experiments.design.specs`) is validated against its notebook's
parameters when it is loaded; executing notebooks is
:mod:`workbench.experiments.running.notebooks`, which imports this module.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import importlib
import importlib.util
import json
import os
import re
import tempfile
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from workbench.core import io, paths


def notebook_source(name: str | os.PathLike) -> Path:
    """Resolve ``name`` (``"00_quickstart"``, a ``.py`` or ``.ipynb`` path) to a file.

    Raises:
        FileNotFoundError: Listing the available notebooks.
    """
    p = Path(name)
    candidates = [p, paths.NOTEBOOKS_DIR / p, paths.NOTEBOOKS_DIR / f"{p}.py"]
    for c in candidates:
        if c.is_file() and c.suffix in (".py", ".ipynb"):
            return c
    known = sorted(x.stem for x in paths.NOTEBOOKS_DIR.glob("*.py"))
    raise FileNotFoundError(f"notebook {str(name)!r} not found; available: {', '.join(known)}")


def notebook_parameters(name: str | os.PathLike) -> dict[str, Any]:
    """The names and default values assigned in the notebook's ``parameters`` cell.

    Read from the file's text (no jupytext, no papermill: fast enough for a check
    before anything starts).

    Raises:
        ValueError: If the notebook has no cell tagged ``parameters``.
    """
    return {k: d.default for k, d in declared_parameters(name).items()}


# ----------------------------------------------------------------------------- declared types
@dataclass(frozen=True)
class Declared:
    """One parameter of a notebook's ``parameters`` cell.

    Attributes:
        name: Variable name.
        default: Its default value (``ast.literal_eval``; the source text when it is not
            a literal).
        type: The declared type (``# type: T`` comment, see :func:`check_value`) or
            ``None`` when undeclared (the value is then not checked).
        help: The rest of the comment.
    """

    name: str
    default: Any
    type: str | None
    help: str


#: ``name = value  # type: T  help`` (papermill's convention: ``inspect_notebook`` and
#: ``papermill --help-notebook`` report the same type and help).
_TYPE_COMMENT = re.compile(r"^#\s*type:\s*(?P<type>\S+)\s*(?P<help>.*)$")


def _parameters_source(path: Path) -> str | None:
    """Source of the cell tagged ``parameters`` (py:percent or ``.ipynb``), else None."""
    if path.suffix == ".ipynb":
        for cell in json.loads(path.read_text()).get("cells", []):
            if "parameters" in cell.get("metadata", {}).get("tags", []):
                src = cell.get("source", "")
                return "".join(src) if isinstance(src, list) else src
        return None
    lines, inside, out = path.read_text().splitlines(), False, []
    for line in lines:
        if line.startswith("# %%"):
            if inside:
                break
            inside = bool(re.search(r"""tags\s*=\s*\[[^\]]*["']parameters["']""", line))
            continue
        if inside:
            out.append(line)
    return "\n".join(out) if inside or out else None


@functools.lru_cache(maxsize=64)
def _declared(path: str, mtime_ns: int) -> dict[str, Declared]:
    source = _parameters_source(Path(path))
    if source is None:
        raise ValueError(f"notebook {path} has no cell tagged 'parameters'")
    comments = {tok.start[0]: tok.string for tok in
                tokenize.generate_tokens(iter(source.splitlines(True)).__next__)
                if tok.type == tokenize.COMMENT}
    out: dict[str, Declared] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, (ast.Assign, ast.AnnAssign)) or node.value is None:
            continue
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        try:
            default = ast.literal_eval(node.value)
        except ValueError:
            default = ast.unparse(node.value)
        comment = comments.get(node.end_lineno, "")
        m = _TYPE_COMMENT.match(comment)
        declared_type = m["type"] if m else None
        if declared_type is None and isinstance(node, ast.AnnAssign):
            declared_type = ast.unparse(node.annotation).strip("'\"")
        help_text = m["help"] if m else comment.lstrip("# ")
        for t in targets:
            if isinstance(t, ast.Name):
                out[t.id] = Declared(t.id, default, declared_type, help_text.strip())
    return out


def declared_parameters(name: str | os.PathLike) -> dict[str, Declared]:
    """The parameters cell as ``{name: Declared}`` (defaults, declared types, help).

    Raises:
        FileNotFoundError: Unknown notebook (listing the available ones).
        ValueError: If the notebook has no cell tagged ``parameters``.
    """
    path = notebook_source(name)
    return dict(_declared(str(path.resolve()), path.stat().st_mtime_ns))


#: Named choice sets a ``# type:`` comment may use, ``@name``: ``(module, registry,
#: property)``; property ``None``: the registry's names, else the union of that property.
CHOICES: dict[str, tuple[str, str, str | None]] = {
    "method": ("workbench.pruning.registry", "METHODS", None),
    "score_kind": ("workbench.pruning.registry", "SCORE_KINDS", None),
    "allocation": ("workbench.pruning.registry", "METHODS", "allocations"),
}


def choice_names(ref: str) -> tuple[str, ...]:
    """The allowed values of ``@ref`` (:data:`CHOICES`), from the registry.

    The registries load their providers (torch) on first lookup, which takes seconds; the
    names are cached in the temporary folder under a key of the providers' file sizes and
    times, so a check after the first does not import torch.

    Raises:
        ValueError: For a name not in :data:`CHOICES`.
    """
    if ref not in CHOICES:
        raise ValueError(f"unknown choice set @{ref} in a notebook's '# type:' comment; "
                         f"allowed: {['@' + k for k in CHOICES]}")
    module, attr, prop = CHOICES[ref]
    registry = getattr(importlib.import_module(module), attr)
    stamp = []
    for provider in (module, *getattr(registry, "_providers", ())):
        spec = importlib.util.find_spec(provider)
        origin = Path(spec.origin) if spec and spec.origin else None
        st = origin.stat() if origin and origin.exists() else None
        stamp.append(f"{provider}:{st.st_size}:{st.st_mtime_ns}" if st else provider)
    key = hashlib.sha1("|".join([ref, *stamp]).encode()).hexdigest()[:16]
    cache = Path(tempfile.gettempdir()) / f"workbench-choices-{os.getuid()}-{key}.json"
    try:
        return tuple(json.loads(cache.read_text()))
    except (OSError, ValueError):
        pass
    if prop is None:
        names = tuple(registry.names())
    else:
        names = tuple(dict.fromkeys(v for e in registry for v in e.props[prop]))
    with contextlib.suppress(OSError):
        io.write_text(cache, json.dumps(list(names)))
    return names


def _split_top(text: str, sep: str) -> list[str]:
    """Split at ``sep`` outside brackets."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[{(" and 1 or 0
        depth -= ch in "]})" and 1 or 0
        if ch == sep and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return parts + [cur]


_BOUND = re.compile(r"^(?P<base>int|float)\[(?P<lo>-?[\d.]*):(?P<hi>-?[\d.]*)\]$")
_NM = re.compile(r"^(\d+):(\d+)$")


def _is_number(value: Any, integer: bool) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) if integer else isinstance(value, (int, float))


def value_problem(declared: str, value: Any) -> str | None:
    """Why ``value`` is not of the declared type ``declared``, or ``None`` when it is.

    The types a ``# type:`` comment declares (one token, no spaces; papermill's syntax):

    * ``int``, ``float`` (an int is a float), ``str``, ``bool``, ``dict``, ``list``, ``any``;
    * bounds, inclusive, either side optional: ``int[1:]`` (>= 1), ``float[0:1]``
      (papermill allows no second ``=`` on the line, hence no ``>=``);
    * ``frac``: a float in [0, 1]; ``sparsity``: a float in [0, 1) or an ``"N:M"``
      pattern with N < M;
    * ``list[T]``: a list whose items are ``T``; ``T|U``: either (``int|None``);
      ``None``: only None;
    * ``{a,b,c}``: one of these strings; ``@name``: one of the names of a registry
      (:data:`CHOICES`: ``@method``, ``@score_kind``, ``@allocation``).
    """
    declared = declared.strip()
    alternatives = _split_top(declared, "|")
    if len(alternatives) > 1:
        problems = [value_problem(a, value) for a in alternatives]
        if any(p is None for p in problems):
            return None
        return f"must be {' or '.join(_describe(a) for a in alternatives)}"
    if declared in ("None", "NoneType"):
        return None if value is None else "must be None"
    if declared == "any":
        return None
    if declared.startswith("list[") and declared.endswith("]"):
        if not isinstance(value, (list, tuple)):
            return f"must be a list of {_describe(declared[5:-1])}"
        for i, item in enumerate(value):
            p = value_problem(declared[5:-1], item)
            if p is not None:
                return f"item {i} ({item!r}) {p}"
        return None
    if declared.startswith("{") and declared.endswith("}"):
        allowed = [c.strip() for c in declared[1:-1].split(",")]
        return None if value in allowed else f"must be one of {allowed}"
    if declared.startswith("@"):
        allowed = choice_names(declared[1:])
        return None if value in allowed else (
            f"must be one of {list(allowed)} (registered: {CHOICES[declared[1:]][1]})")
    m = _BOUND.match(declared)
    if m:
        if not _is_number(value, m["base"] == "int"):
            return f"must be {_describe(declared)}"
        ok = ((not m["lo"] or value >= float(m["lo"]))
              and (not m["hi"] or value <= float(m["hi"])))
        return None if ok else f"must be {_describe(declared)}"
    if declared in ("int", "float"):
        return None if _is_number(value, declared == "int") else f"must be {_describe(declared)}"
    if declared == "frac":
        return None if _is_number(value, False) and 0 <= value <= 1 else (
            f"must be {_describe(declared)}")
    if declared == "sparsity":
        if _is_number(value, False) and 0 <= value < 1:
            return None
        nm = _NM.match(value) if isinstance(value, str) else None
        if nm and 0 < int(nm[1]) < int(nm[2]):
            return None
        return f"must be {_describe(declared)}"
    types = {"str": str, "bool": bool, "dict": dict, "list": (list, tuple)}
    if declared in types:
        return None if isinstance(value, types[declared]) else f"must be {_describe(declared)}"
    raise ValueError(f"unknown type {declared!r} in a notebook's '# type:' comment; see "
                     "workbench.experiments.design.notebook_contract.value_problem")


def _describe(declared: str) -> str:
    m = _BOUND.match(declared)
    if m:
        what = "an integer" if m["base"] == "int" else "a number"
        if m["lo"] and m["hi"]:
            return f"{what} in [{m['lo']}, {m['hi']}]"
        return f"{what} >= {m['lo']}" if m["lo"] else f"{what} <= {m['hi']}"
    return {"int": "an integer", "float": "a number", "str": "a string", "bool":
            "true or false", "dict": "a mapping", "list": "a list", "None": "None",
            "frac": "a number in [0, 1]",
            "sparsity": "a fraction in [0, 1) or an 'N:M' pattern such as '2:4'"}.get(
        declared, declared)


def check_parameters(name: str | os.PathLike, parameters: Mapping[str, Any], *,
                     values: bool = True) -> None:
    """Check parameters against the notebook's ``parameters`` cell, before any kernel.

    Names must be declared in the cell; with ``values``, each value must match the
    parameter's declared type (its ``# type: T`` comment, see :func:`value_problem`;
    parameters without one are not checked). Parameter cells declare types like::

        n_blocks = 16  # type: int[1:]  blocks per split
        methods = ["magnitude", "wanda"]  # type: list[@method]

    Raises:
        ValueError: Naming the unknown parameters (and the declared ones), or the
            parameter whose value does not fit (the value, and what is allowed).
    """
    declared = declared_parameters(name)
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        raise ValueError(
            f"parameters {unknown} are not in the parameters cell of {name}; "
            f"allowed: {sorted(declared)}"
        )
    if not values:
        return
    for key, value in parameters.items():
        declared_type = declared[key].type
        if declared_type is None:
            continue
        problem = value_problem(declared_type, value)
        if problem is not None:
            raise ValueError(f"notebook {Path(str(name)).stem} parameter {key}={value!r} "
                             f"{problem} (declared '# type: {declared_type}' in its "
                             f"parameters cell)")
