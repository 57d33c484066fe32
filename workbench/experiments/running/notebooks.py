"""Run the py:percent notebooks under ``notebooks/`` through papermill.

Notebooks are kept in git as jupytext py:percent files (``notebooks/NAME.py``) so they
diff cleanly; JupyterLab opens them as notebooks through jupytext. For a batch run the
``.py`` file is converted to ``.ipynb`` in memory and executed by papermill with the
``workbench`` kernel that ``make`` registers inside ``.venv``.

What a notebook declares (its ``parameters`` cell, the ``# type:`` comments, the check of
given values) is the notebook contract, :mod:`workbench.experiments.design.notebook_contract`;
this module executes notebooks (papermill, the kernel over IPC sockets, the heartbeat
bars). The names of the files a run leaves beside the executed notebook come from
:mod:`workbench.experiments.running.runs`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Mapping

from workbench.core import heartbeat as hb
from workbench.core import io, paths
from workbench.experiments.design.notebook_contract import check_parameters, notebook_source
from workbench.experiments.running import runs


def load_notebook(name: str | os.PathLike):
    """Read a notebook (``.py`` percent or ``.ipynb``) as an ``nbformat`` node."""
    import jupytext

    return jupytext.read(notebook_source(name))


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
    (:func:`workbench.experiments.design.notebook_contract.check_parameters`; papermill
    itself only warns), before a kernel starts. The
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

    nb = load_notebook(name)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    src = runs.source_copy(output)
    beat_file = Path(heartbeat) if heartbeat is not None else runs.heartbeat_beside(output)
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
    return runs.read_json(path)


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
