"""Run layout: the name of every file of a run and of a grid, and the completion rule.

A **grid** folder (``data/runs/<spec hash>/``) holds::

    spec.json                    resolved spec the grid ran (SPEC_COPY)
    _submitit/                   submitit job folders (SUBMITIT_DIR)
    <experiment>/seed<k>/        one run per (experiment, seed)
    .*.tmp                       leftovers of a killed atomic write (ATOMIC_TEMPORARY)

A **run** folder (a grid's *cell*) holds::

    params.json                  parameters the grid injected (PARAMS)
    status.json                  running / done / failed / interrupted (STATUS)
    notebook.ipynb               the executed notebook (NOTEBOOK)
    .notebook.src.ipynb          papermill's converted source while it runs (source_copy)
    heartbeat.json               the kernel's last beat, kept after the end (HEARTBEAT)
    .jupyter-runtime/            the kernel's connection files while it runs
                                 (KERNEL_RUNTIME_DIR)
    lease.json                   the SLURM job holding the cell (LEASE)
    .lease.lock                  flock of every lease update, never removed (LOCK)
    checkpoints/                 per-round checkpoints written while it runs (CHECKPOINTS)
    losses.parquet               training loss per step          (TABLES["losses"])
    layer_sparsity.parquet       sparsity per tensor and round   (TABLES["layer_sparsity"])
    super_weights.parquet        detected super weights          (TABLES["super_weights"])
    summary.json                 robustness summary (SUMMARY)
    manifest.json                environment, seed, parameters, table row counts (MANIFEST)
    records.parquet              one row per pruning round, written LAST (TABLES["records"])

**Completion rule** (:func:`is_complete`): a run is finished if and only if its records
file exists, parses, is non-empty and has the number of rows its manifest declares
(``manifest["tables"]["records"]["rows"]``). :func:`write_run` is the only writer that
produces that state: every file is written atomically (temporary file + rename), the
records file last, after any previous records file was removed. A run killed while
writing is therefore never mistaken for a finished one, and an empty or truncated records
file is "not done". Reading runs needs only this module: nothing here imports or parses
notebooks.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from workbench.core import io

if TYPE_CHECKING:  # pandas is imported on use: the names here load nothing heavy
    import pandas as pd

# ----------------------------------------------------------------------------- names
#: Per-run tables: name -> file.
TABLES: dict[str, str] = {
    "records": "records.parquet",
    "losses": "losses.parquet",
    "layer_sparsity": "layer_sparsity.parquet",
    "super_weights": "super_weights.parquet",
}
RECORDS = TABLES["records"]
SUMMARY = "summary.json"
MANIFEST = "manifest.json"
STATUS = "status.json"
PARAMS = "params.json"
NOTEBOOK = "notebook.ipynb"
CHECKPOINTS = "checkpoints"
#: The cell's heartbeat file, rewritten by the kernel while it works
#: (:mod:`workbench.core.heartbeat`); kept after the cell ends (its last state).
HEARTBEAT = "heartbeat.json"
#: Folder (inside a cell) holding the Jupyter connection files of the cell's kernel.
KERNEL_RUNTIME_DIR = ".jupyter-runtime"
#: Lease file of a cell handed to SLURM (:mod:`workbench.experiments.running.slurm`).
LEASE = "lease.json"
#: Lock file of the lease (``flock``; never removed while cells may run).
LOCK = ".lease.lock"
#: Grid-level files.
SPEC_COPY = "spec.json"
SUBMITIT_DIR = "_submitit"
#: Prefix of a run folder's seed part (``seed0``).
SEED_PREFIX = "seed"
#: Glob pattern of the temporary folders of atomic writes (:func:`workbench.core.io.atomic_path`).
ATOMIC_TEMPORARY = ".*.tmp"
#: Suffix of papermill's converted source notebook (:func:`source_copy`).
SOURCE_COPY_SUFFIX = ".src.ipynb"
#: Glob patterns of temporary files a killed run can leave in its folder (atomic writes,
#: papermill's converted source notebook).
TEMPORARY_PATTERNS = (ATOMIC_TEMPORARY, f".*{SOURCE_COPY_SUFFIX}")


def run_dir(grid_dir: str | os.PathLike, experiment: str, seed: int) -> Path:
    """``<grid_dir>/<experiment>/seed<seed>``."""
    return Path(grid_dir) / str(experiment) / f"{SEED_PREFIX}{int(seed)}"


def parse_run_dir(path: str | os.PathLike) -> tuple[str, int]:
    """``(experiment, seed)`` of a run folder ``.../<experiment>/seed<k>``.

    Raises:
        ValueError: If the folder name is not ``seed<integer>``.
    """
    p = Path(path)
    if not p.name.startswith(SEED_PREFIX) or not p.name[len(SEED_PREFIX):].isdigit():
        raise ValueError(f"run folder {str(p)!r} is not named <experiment>/seed<k>")
    return p.parent.name, int(p.name[len(SEED_PREFIX):])


def source_copy(notebook: str | os.PathLike) -> Path:
    """Where the converted source of an executed notebook lives while papermill runs it:
    ``.<stem>.src.ipynb`` beside it (a run's ``.notebook.src.ipynb``)."""
    p = Path(notebook)
    return p.with_name(f".{p.stem}{SOURCE_COPY_SUFFIX}")


def heartbeat_beside(notebook: str | os.PathLike) -> Path:
    """The default heartbeat file of a notebook run outside a grid cell:
    ``.<stem>.heartbeat.json`` beside the executed notebook."""
    p = Path(notebook)
    return p.with_name(f".{p.stem}.heartbeat.json")


def table_path(directory: str | os.PathLike, table: str) -> Path:
    """Path of one table of a run; ``ValueError`` listing :data:`TABLES` when unknown."""
    if table not in TABLES:
        raise ValueError(f"table={table!r} is not allowed; allowed: {list(TABLES)}")
    return Path(directory) / TABLES[table]


# ----------------------------------------------------------------------------- writing
def write_run(run_dir: str | os.PathLike, tables: Mapping[str, pd.DataFrame],
              summary: Mapping[str, Any], manifest: Mapping[str, Any]) -> Path:
    """Write a finished run atomically; the records file last (the completion mark).

    Args:
        run_dir: The run folder (created if missing).
        tables: ``{name: DataFrame}`` with names from :data:`TABLES`; ``"records"`` is
            required and must have at least one row.
        summary: JSON-able summary (e.g. :func:`workbench.lottery.imp.robustness_summary`).
        manifest: JSON-able manifest (seed, parameters, timings, ...). The row count and
            columns of every table are added under ``"tables"`` (the completion rule
            compares the records file against it); an ``"environment"`` record
            (:func:`workbench.core.repro.environment_record`) is added when missing.

    Returns:
        The path of the records file.

    Raises:
        ValueError: On an unknown table name, a missing or empty ``records`` table, or a
            table that is not a DataFrame.
    """
    import pandas as pd

    unknown = sorted(set(tables) - set(TABLES))
    if unknown:
        raise ValueError(f"unknown table(s) {unknown}; allowed: {list(TABLES)}")
    for name, frame in tables.items():
        if not isinstance(frame, pd.DataFrame):
            raise ValueError(f"tables[{name!r}] must be a pandas DataFrame, "
                             f"got {type(frame).__name__}")
    records = tables.get("records")
    if records is None or len(records) == 0:
        raise ValueError("tables['records'] must be a non-empty DataFrame (one row per round)")
    d = Path(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / RECORDS).unlink(missing_ok=True)  # the run is unfinished until the end
    described = {name: {"file": TABLES[name], "rows": int(len(frame)),
                        "columns": [str(c) for c in frame.columns]}
                 for name, frame in tables.items()}
    full = dict(manifest)
    if "environment" not in full:
        from workbench.core.repro import environment_record  # on use: it loads torch

        full["environment"] = environment_record()
    full["tables"] = described
    for name, frame in tables.items():
        if name != "records":
            io.write_parquet(d / TABLES[name], frame)
    io.write_json(d / SUMMARY, dict(summary))
    io.write_json(d / MANIFEST, full)
    return io.write_parquet(d / RECORDS, records)


# ----------------------------------------------------------------------------- reading
def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON object file of a run as a dict (empty when missing, unreadable or not an
    object, e.g. while it is being replaced)."""
    try:
        out = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return out if isinstance(out, dict) else {}


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """The run's manifest (empty dict when missing or unreadable)."""
    return read_json(Path(directory) / MANIFEST)


def read_summary(directory: str | os.PathLike) -> dict[str, Any]:
    """The run's summary (empty dict when missing or unreadable)."""
    return read_json(Path(directory) / SUMMARY)


def read_params(directory: str | os.PathLike) -> dict[str, Any]:
    """The parameters the grid injected (empty dict when missing or unreadable)."""
    return read_json(Path(directory) / PARAMS)


def read_status(directory: str | os.PathLike) -> dict[str, Any]:
    """The run's ``status.json`` (empty dict when missing or unreadable)."""
    return read_json(Path(directory) / STATUS)


def read_spec_copy(folder: str | os.PathLike) -> dict[str, Any]:
    """The spec record a grid leaves in its runs folder (:data:`SPEC_COPY`; empty dict
    when missing or unreadable)."""
    return read_json(Path(folder) / SPEC_COPY)


def completion_problem(directory: str | os.PathLike) -> str | None:
    """Why the run is not finished (``None`` when it is); see the completion rule.

    Only parquet metadata is read (no table is loaded).
    """
    import pyarrow.parquet as pq

    d = Path(directory)
    rec = d / RECORDS
    if not rec.is_file():
        return f"no {RECORDS}"
    try:
        rows = pq.read_metadata(rec).num_rows
    except Exception as exc:  # noqa: BLE001 - any parse failure means "not finished"
        return f"{RECORDS} does not parse ({type(exc).__name__})"
    if rows == 0:
        return f"{RECORDS} is empty"
    declared = read_manifest(d).get("tables", {}).get("records", {}).get("rows")
    if declared is None:
        return f"{MANIFEST} is missing or declares no records rows"
    if int(declared) != rows:
        return f"{RECORDS} has {rows} rows but {MANIFEST} declares {declared}"
    return None


def is_complete(directory: str | os.PathLike) -> bool:
    """True iff the run folder holds a finished run (see the module docstring)."""
    return completion_problem(directory) is None


def finished_runs(grid_dir: str | os.PathLike) -> Iterator[Path]:
    """Finished run folders ``<grid_dir>/<experiment>/seed<k>`` in sorted order."""
    for rec in sorted(Path(grid_dir).glob(f"*/{SEED_PREFIX}*/{RECORDS}")):
        if is_complete(rec.parent):
            yield rec.parent


def read_table(directory: str | os.PathLike, table: str = "records") -> pd.DataFrame | None:
    """One table of a run (``None`` when that file is absent)."""
    import pandas as pd

    path = table_path(directory, table)
    return pd.read_parquet(path) if path.is_file() else None


def temporary_files(directory: str | os.PathLike) -> list[Path]:
    """Leftovers of interrupted atomic writes and notebook runs inside a run folder."""
    d = Path(directory)
    out: list[Path] = []
    for pattern in TEMPORARY_PATTERNS:
        out.extend(d.glob(pattern))
        out.extend(d.glob(f"{CHECKPOINTS}/{pattern}"))
    return sorted(set(out))
