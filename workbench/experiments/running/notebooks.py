"""Run the py:percent notebooks under ``notebooks/`` through papermill.

Notebooks are kept in git as jupytext py:percent files (``notebooks/NAME.py``) so they
diff cleanly; JupyterLab opens them as notebooks through jupytext. For a batch run the
``.py`` file is converted to ``.ipynb`` in memory and executed by papermill with the
``workbench`` kernel that ``make`` registers inside ``.venv``.
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
import shutil
import tempfile
import threading
import time
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from workbench.core import io

from workbench.core import paths


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


def load_notebook(name: str | os.PathLike):
    """Read a notebook (``.py`` percent or ``.ipynb``) as an ``nbformat`` node."""
    import jupytext

    return jupytext.read(notebook_source(name))


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
        kind = m["type"] if m else None
        if kind is None and isinstance(node, ast.AnnAssign):
            kind = ast.unparse(node.annotation).strip("'\"")
        help_text = m["help"] if m else comment.lstrip("# ")
        for t in targets:
            if isinstance(t, ast.Name):
                out[t.id] = Declared(t.id, default, kind, help_text.strip())
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
    "kind": ("workbench.pruning.registry", "SCORE_KINDS", None),
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


def value_problem(kind: str, value: Any) -> str | None:
    """Why ``value`` is not of the declared type ``kind``, or ``None`` when it is.

    The types a ``# type:`` comment declares (one token, no spaces; papermill's syntax):

    * ``int``, ``float`` (an int is a float), ``str``, ``bool``, ``dict``, ``list``, ``any``;
    * bounds, inclusive, either side optional: ``int[1:]`` (>= 1), ``float[0:1]``
      (papermill allows no second ``=`` on the line, hence no ``>=``);
    * ``frac``: a float in [0, 1]; ``sparsity``: a float in [0, 1) or an ``"N:M"``
      pattern with N < M;
    * ``list[T]``: a list whose items are ``T``; ``T|U``: either (``int|None``);
      ``None``: only None;
    * ``{a,b,c}``: one of these strings; ``@name``: one of the names of a registry
      (:data:`CHOICES`: ``@method``, ``@kind``, ``@allocation``).
    """
    kind = kind.strip()
    alternatives = _split_top(kind, "|")
    if len(alternatives) > 1:
        problems = [value_problem(a, value) for a in alternatives]
        if any(p is None for p in problems):
            return None
        return f"must be {' or '.join(_describe(a) for a in alternatives)}"
    if kind in ("None", "NoneType"):
        return None if value is None else "must be None"
    if kind == "any":
        return None
    if kind.startswith("list[") and kind.endswith("]"):
        if not isinstance(value, (list, tuple)):
            return f"must be a list of {_describe(kind[5:-1])}"
        for i, item in enumerate(value):
            p = value_problem(kind[5:-1], item)
            if p is not None:
                return f"item {i} ({item!r}) {p}"
        return None
    if kind.startswith("{") and kind.endswith("}"):
        allowed = [c.strip() for c in kind[1:-1].split(",")]
        return None if value in allowed else f"must be one of {allowed}"
    if kind.startswith("@"):
        allowed = choice_names(kind[1:])
        return None if value in allowed else (
            f"must be one of {list(allowed)} (registered: {CHOICES[kind[1:]][1]})")
    m = _BOUND.match(kind)
    if m:
        if not _is_number(value, m["base"] == "int"):
            return f"must be {_describe(kind)}"
        ok = ((not m["lo"] or value >= float(m["lo"]))
              and (not m["hi"] or value <= float(m["hi"])))
        return None if ok else f"must be {_describe(kind)}"
    if kind in ("int", "float"):
        return None if _is_number(value, kind == "int") else f"must be {_describe(kind)}"
    if kind == "frac":
        return None if _is_number(value, False) and 0 <= value <= 1 else (
            f"must be {_describe(kind)}")
    if kind == "sparsity":
        if _is_number(value, False) and 0 <= value < 1:
            return None
        nm = _NM.match(value) if isinstance(value, str) else None
        if nm and 0 < int(nm[1]) < int(nm[2]):
            return None
        return f"must be {_describe(kind)}"
    types = {"str": str, "bool": bool, "dict": dict, "list": (list, tuple)}
    if kind in types:
        return None if isinstance(value, types[kind]) else f"must be {_describe(kind)}"
    raise ValueError(f"unknown type {kind!r} in a notebook's '# type:' comment; see "
                     "workbench.experiments.running.notebooks.value_problem")


def _describe(kind: str) -> str:
    m = _BOUND.match(kind)
    if m:
        what = "an integer" if m["base"] == "int" else "a number"
        if m["lo"] and m["hi"]:
            return f"{what} in [{m['lo']}, {m['hi']}]"
        return f"{what} >= {m['lo']}" if m["lo"] else f"{what} <= {m['hi']}"
    return {"int": "an integer", "float": "a number", "str": "a string", "bool":
            "true or false", "dict": "a mapping", "list": "a list", "None": "None",
            "frac": "a number in [0, 1]",
            "sparsity": "a fraction in [0, 1) or an 'N:M' pattern such as '2:4'"}.get(
        kind, kind)


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
        kind = declared[key].type
        if kind is None:
            continue
        problem = value_problem(kind, value)
        if problem is not None:
            raise ValueError(f"notebook {Path(str(name)).stem} parameter {key}={value!r} "
                             f"{problem} (declared '# type: {kind}' in its parameters cell)")


# ----------------------------------------------------------------------------- kernel
def _ipc_manager(folder: Path, env: Mapping[str, str]):
    """A kernel manager class whose kernels talk over Unix sockets (ZeroMQ IPC) in
    ``folder`` instead of localhost TCP, with ``env`` added to the kernel's environment.

    IPC sockets are files only this user can reach, so ipykernel does not warn "Kernel
    is running over TCP without encryption" (its warning is for plaintext TCP only).
    """
    from jupyter_client.manager import AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.transport = "ipc"
            self.ip = str(folder / "k")

        async def _async_pre_start_kernel(self, **kw):
            kw["env"] = {**(kw.get("env") or os.environ), **env}
            return await super()._async_pre_start_kernel(**kw)

    return IPCKernelManager


def _socket_folder() -> Path:
    """A short private folder for the kernel's sockets (a Unix socket path has at most
    107 bytes, so not inside a deep run folder)."""
    base = "/tmp" if os.access("/tmp", os.W_OK) else tempfile.gettempdir()
    return Path(tempfile.mkdtemp(prefix="wb-kernel-", dir=base))


#: Environment of the kernel run by :func:`run_notebook`: tqdm bars that the code does not
#: switch on explicitly (lm-eval's "Building contexts" ...) are off; progress comes
#: through the heartbeat file instead, and the rest is merged by ``coalesce_streams``.
KERNEL_ENV = {"TQDM_DISABLE": "1", "TQDM_MININTERVAL": "30"}


def run_notebook(
    name: str | os.PathLike,
    output: str | os.PathLike,
    parameters: Mapping[str, Any] | None = None,
    *,
    kernel_name: str = paths.KERNEL_NAME,
    cwd: str | os.PathLike | None = None,
    progress: bool = False,
    timeout: int | None = None,
    heartbeat: str | os.PathLike | None = None,
) -> Path:
    """Execute a notebook with papermill and write the executed ``.ipynb`` to ``output``.

    Parameter names and declared types are checked against the ``parameters`` cell first
    (:func:`check_parameters`; papermill itself only warns), before a kernel starts. The
    kernel runs over IPC sockets (:func:`_ipc_manager`) with :data:`KERNEL_ENV`, and its
    stream outputs are merged (a tqdm bar's redraws become its last line). The executed
    notebook is written even when a cell fails; papermill's ``PapermillExecutionError``
    is then re-raised.

    Args:
        name: Notebook name under ``notebooks/`` or a path.
        output: Path of the executed notebook.
        parameters: Values injected after the ``parameters`` cell.
        kernel_name: Jupyter kernel (default ``workbench``, registered by ``make``).
        cwd: Working directory of the kernel (default: the repository root).
        progress: Show papermill's cell bar and, below it, the work inside the running
            cell read from the heartbeat file (:class:`HeartbeatBars`).
        timeout: Per-cell timeout in seconds.
        heartbeat: The heartbeat file the kernel writes (:mod:`workbench.core.heartbeat`;
            default ``.<output stem>.heartbeat.json`` next to ``output``, removed at the
            end; a given path is kept, e.g. a grid cell's for ``grid status``).

    Returns:
        The output path.
    """
    parameters = dict(parameters or {})
    check_parameters(name, parameters)  # before the slow imports and the kernel

    import nbformat
    import papermill as pm

    from workbench.core import heartbeat as hb

    nb = load_notebook(name)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    src = output.with_name(f".{output.stem}.src.ipynb")
    beat_file = Path(heartbeat) if heartbeat is not None else output.with_name(
        f".{output.stem}.heartbeat.json")
    beat_file.unlink(missing_ok=True)
    io.write_text(src, nbformat.writes(nb))
    sockets = _socket_folder()
    env = {**KERNEL_ENV, hb.ENV: str(beat_file.resolve())}
    bars = HeartbeatBars(lambda: {"": beat_file}, position=1) if progress else None
    try:
        if bars is not None:
            bars.start()
        pm.execute_notebook(
            str(src),
            str(output),
            parameters=parameters,
            kernel_name=kernel_name,
            cwd=str(cwd or paths.ROOT),
            progress_bar=progress,
            execution_timeout=timeout,
            kernel_manager_class=_ipc_manager(sockets, env),
            coalesce_streams=True,
        )
    finally:
        if bars is not None:
            bars.stop()
        src.unlink(missing_ok=True)
        shutil.rmtree(sockets, ignore_errors=True)
        if heartbeat is None:
            beat_file.unlink(missing_ok=True)
    return output


# ----------------------------------------------------------------------------- live progress
def describe_beat(record: Mapping[str, Any], now: float | None = None) -> str:
    """One line of a heartbeat record: item, round and step, tokens/s, elapsed, ETA and
    the age of the beat (``"IMP round 2/5 step 40/100 · 1,250 tok/s · elapsed 3:20 ·
    ETA 1:10 · beat 2 s ago"``)."""
    from workbench.core import heartbeat as hb

    now = time.time() if now is None else now
    parts = [str(record.get("task") or "")]
    if record.get("item"):
        parts[0] += f": {record['item']}"
    if record.get("step") is not None and record.get("steps"):
        parts.append(f"step {record['step']}/{record['steps']}")
    if record.get("done") is not None and record.get("total"):
        parts.append(f"{record['done']}/{record['total']} {record.get('unit') or ''}".strip())
    if record.get("tokens_per_s"):
        parts.append(f"{record['tokens_per_s']:,.0f} tok/s")
    if record.get("task_started"):
        finished = record.get("total") and (record.get("done") or 0) >= record["total"]
        end = float(record.get("time") or now) if finished else now  # frozen when done
        parts.append(f"elapsed {_clock(end - float(record['task_started']))}")
    eta = hb.eta_seconds(dict(record), now)
    if eta is not None:
        parts.append(f"ETA {_clock(eta)}")
    if record.get("time"):
        parts.append(f"beat {now - float(record['time']):.0f} s ago")
    return " · ".join(p for p in parts if p)


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def read_beat(path: str | os.PathLike) -> dict[str, Any]:
    """A heartbeat file as a dict (empty when missing or being replaced)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


class HeartbeatBars:
    """Draw heartbeat files as tqdm bars on the terminal, from a background thread.

    ``files()`` returns ``{label: path}`` of the files to show now (e.g. the running
    cells of a grid); each gets a bar (``done/total`` of its task, with the task's real
    elapsed time and the ETA at the rate since the task started) whose text is
    :func:`describe_beat`. Bars of files that disappear from ``files()`` are closed.

    Args:
        files: Callable giving ``{label: path}``.
        position: tqdm position of the first bar (papermill's cell bar is 0).
        interval: Seconds between polls.
    """

    def __init__(self, files, *, position: int = 1, interval: float = 0.5):
        self.files, self.position, self.interval = files, position, interval
        self._bars: dict[str, Any] = {}
        self._tasks: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "HeartbeatBars":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - the display must never stop the run
                pass

    def poll(self) -> None:
        """Read every file once and redraw its bar."""
        from tqdm.auto import tqdm

        files = dict(self.files())
        for label in [k for k in self._bars if k not in files]:
            self._bars.pop(label).close()
        for i, (label, path) in enumerate(files.items()):
            rec = read_beat(path)
            if not rec:
                continue
            task = (rec.get("task"), rec.get("task_started"))
            bar = self._bars.get(label)
            if bar is None or self._tasks.get(label) != task:
                if bar is not None:
                    bar.close()
                bar = tqdm(total=rec.get("total") or None, initial=rec.get("done0") or 0,
                           unit=rec.get("unit") or "it", position=self.position + i,
                           leave=False, dynamic_ncols=True, smoothing=0,
                           bar_format="{percentage:3.0f}%|{bar:16}| {desc}")
                if rec.get("task_started"):
                    bar.start_t = float(rec["task_started"])
                self._bars[label], self._tasks[label] = bar, task
            if isinstance(rec.get("done"), (int, float)):
                bar.n = rec["done"]
            text = describe_beat(rec)
            bar.set_description_str(f"{label}: {text}" if label else text, refresh=True)
