"""Collect the runs of a grid into one tidy DataFrame and summarise it.

:func:`load_runs` reads one table (default: the records, one row per pruning round) of
every *finished* run of a spec (the completion rule of :mod:`workbench.experiments.running.runs`)
and adds the run's parameters that the table lacks (from its manifest, else from
``params.json``), so a frame row says everything about how it was produced. Reading runs
never imports or parses a notebook: an old run is read as it was written.
:func:`load_summaries` gives one row per run with its robustness summary (winning-ticket
score, optimal and critical sparsity). :func:`summarize` gives mean, standard deviation
(ddof=1) and n over seeds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from workbench.experiments.running import runs
from workbench.experiments.design.procedures import schema_fields
from workbench.experiments.design.specs import Spec, load_spec

#: Per-run tables :func:`load_runs` can read.
TABLES = tuple(runs.TABLES)
#: Numeric record columns that place a row (not metrics to plot).
STRUCTURE_COLUMNS = ("seed", "round", "target_sparsity", "sparsity", "density", "n_kept",
                     "n_prunable", "rewound", "step")
#: Scalars of a run's summary kept by :func:`load_summaries`.
SUMMARY_SCALARS = ("winning_ticket_score", "is_winning_ticket", "optimal_sparsity",
                   "critical_sparsity", "dense_val_ppl")


def runs_folder(source: str | os.PathLike | Spec, profile: str | None = "cpu",
                runs_dir: str | os.PathLike | None = None) -> Path:
    """The runs folder of ``source``: an existing folder as is, else the spec's folder."""
    if not isinstance(source, Spec) and Path(source).is_dir():
        return Path(source)
    return load_spec(source).runs_dir(profile, runs_dir)


def run_parameters(directory: str | os.PathLike) -> dict[str, Any]:
    """Parameters of a run: the manifest's ``parameters`` over ``params.json``.

    A nested ``config`` mapping (notebooks that take one config dict) is flattened into
    the top level.
    """
    out: dict[str, Any] = {}
    for source in (runs.read_params(directory), runs.read_manifest(directory).get("parameters")):
        if isinstance(source, dict):
            config = source.get("config")
            out.update({k: v for k, v in source.items() if k != "config"})
            if isinstance(config, dict):
                out.update(config)
    return out


def _cell_frame(cell: Path, df: pd.DataFrame) -> pd.DataFrame:
    exp, seed = runs.parse_run_dir(cell)
    if "experiment" not in df:
        df.insert(0, "experiment", exp)
    if "seed" not in df:
        df.insert(1, "seed", seed)
    for key, value in run_parameters(cell).items():
        if key not in df and key not in ("output_dir", "run_dir"):
            df[key] = str(value) if isinstance(value, (list, dict, tuple)) else value
    return df


def load_runs(source: str | os.PathLike | Spec, profile: str | None = "cpu", *,
              runs_dir: str | os.PathLike | None = None, table: str = "records",
              experiments: Sequence[str] | None = None) -> pd.DataFrame:
    """One tidy DataFrame over all finished runs of a spec.

    Args:
        source: Spec name/path/:class:`~workbench.experiments.design.specs.Spec`, or a runs
            folder holding ``<experiment>/seed<k>/``.
        profile: Profile the spec ran with (ignored for a folder).
        runs_dir: Root of the runs folders (default ``data/runs``).
        table: Which per-run table to read: one of :data:`TABLES`.
        experiments: Keep only these experiments.

    Returns:
        The rows of every finished run, with ``experiment`` and ``seed`` columns, the
        run's parameters and, for records, ``val_nll = log(val_ppl)``; empty (no
        columns) when nothing has finished. The folder is in ``df.attrs["runs_dir"]``.

    Raises:
        ValueError: If ``table`` is unknown.
    """
    if table not in TABLES:
        raise ValueError(f"table={table!r} is not allowed; allowed: {list(TABLES)}")
    folder = runs_folder(source, profile, runs_dir)
    _check_experiments(experiments, source, folder)
    frames = []
    parameters: set[str] = set()
    for cell in runs.finished_runs(folder):
        if experiments is not None and cell.parent.name not in experiments:
            continue
        df = runs.read_table(cell, table)
        if df is not None:
            parameters |= set(run_parameters(cell))
            frames.append(_cell_frame(cell, df))
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if "val_ppl" in out and "val_nll" not in out:
        # log-perplexity = mean NLL per token (nats): perplexities of a collapsing model
        # span orders of magnitude across seeds, so tests are run on their logarithm
        out["val_nll"] = np.log(out["val_ppl"].astype(float))
    if len(out) and {"experiment", "seed"} <= set(out):
        keys = [k for k in ("experiment", "seed", "round", "step") if k in out]
        out = out.sort_values(keys, kind="stable").reset_index(drop=True)
    out.attrs["runs_dir"] = str(folder)
    out.attrs["parameter_columns"] = sorted(parameters | _config_fields())
    return out


def _check_experiments(experiments: Any, source: Any, folder: Path) -> None:
    """``experiments`` names experiments of the spec (or folders of the runs folder).

    Raises:
        TypeError: A single string or a non-sequence (``experiments="A"`` would match
            letters).
        ValueError: A name that is not an experiment (the allowed ones listed).
    """
    if experiments is None:
        return
    if isinstance(experiments, str) or not isinstance(experiments, (list, tuple, set)):
        raise TypeError(f"experiments must be a list of experiment names, got "
                        f"{type(experiments).__name__} {experiments!r}")
    if isinstance(source, Spec) or not Path(str(source)).is_dir():
        known = sorted(load_spec(source, check_notebook=False).experiments)
    else:
        known = sorted(p.name for p in Path(folder).iterdir() if p.is_dir()
                       and not p.name.startswith("."))
    unknown = [e for e in experiments if e not in known]
    if unknown:
        raise ValueError(f"experiments: {unknown} are not experiments of {source!s}; "
                         f"allowed: {known}")


def _config_fields() -> set[str]:
    """Names of the lottery configuration's fields (records carry them as columns)."""
    return set(schema_fields())


def metric_columns(df: pd.DataFrame) -> list[str]:
    """The numeric columns of a runs frame that are metrics, sorted: parameters of the
    runs (``df.attrs["parameter_columns"]``, set by :func:`load_runs`, and the lottery
    configuration's fields) and the columns that place a row
    (:data:`STRUCTURE_COLUMNS`) are left out."""
    skip = set(df.attrs.get("parameter_columns") or _config_fields()) | set(STRUCTURE_COLUMNS)
    return sorted(c for c in df.select_dtypes("number").columns if c not in skip)


def keep_choice(options: Sequence[str], *preferred: str | None) -> str | None:
    """The first of ``preferred`` still among ``options``, else the first option, else
    ``None`` (a selection that survives a change of the offered options)."""
    options = list(options)
    for choice in preferred:
        if choice is not None and choice in options:
            return choice
    return options[0] if options else None


def load_summaries(source: str | os.PathLike | Spec, profile: str | None = "cpu", *,
                   runs_dir: str | os.PathLike | None = None,
                   experiments: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per finished run: ``experiment, seed``, the scalars of its summary
    (:data:`SUMMARY_SCALARS`; ``critical_sparsity`` NaN when never reached) and its
    parameters. Empty when nothing has finished."""
    folder = runs_folder(source, profile, runs_dir)
    rows = []
    for cell in runs.finished_runs(folder):
        if experiments is not None and cell.parent.name not in experiments:
            continue
        summary = runs.read_summary(cell)
        row = {k: summary.get(k) for k in SUMMARY_SCALARS if k in summary}
        rows.append(_cell_frame(cell, pd.DataFrame([row])))
    out = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    for key in SUMMARY_SCALARS:
        if key in out and key != "is_winning_ticket":
            out[key] = pd.to_numeric(out[key], errors="coerce")
    out.attrs["runs_dir"] = str(folder)
    return out


def run_info(source: str | os.PathLike | Spec, profile: str | None = "cpu",
             runs_dir: str | os.PathLike | None = None) -> dict:
    """The ``spec.json`` the grid wrote into the runs folder (empty if missing)."""
    return runs.read_spec_copy(runs_folder(source, profile, runs_dir))


def summarize(df: pd.DataFrame, metrics: Sequence[str] = ("val_ppl", "sw_survival"),
              by: Sequence[str] = ("experiment", "round"), *, wide: bool = False,
              digits: int = 3) -> pd.DataFrame:
    """Mean, standard deviation (ddof=1) and n over seeds.

    Args:
        df: Output of :func:`load_runs` (or :func:`load_summaries` with
            ``by=("experiment",)``).
        metrics: Numeric columns to summarise.
        by: Grouping columns; ``sparsity``'s mean is added when present.
        wide: Return the readable wide form: one ``"mean ± sd"`` text column per metric,
            plus ``sparsity`` and ``n``.
        digits: Significant digits of the means in the wide form.

    Returns:
        Long form: columns ``*by, [sparsity], metric, mean, std, n`` (std is NaN for
        n = 1; n counts non-missing values). Wide form: see ``wide``.

    Raises:
        ValueError: Naming a missing column and the available ones.
    """
    missing = [c for c in (*by, *metrics) if c not in df]
    if missing:
        raise ValueError(f"columns {missing} are not in the runs; available: {list(df)}")
    by = list(by)
    g = df.groupby(by, sort=True)
    rows = []
    for metric in metrics:
        s = g[metric].agg(["mean", "std", "count"]).rename(columns={"count": "n"})
        s.insert(0, "metric", metric)
        if "sparsity" in df and "sparsity" not in by:
            s.insert(0, "sparsity", g["sparsity"].mean())
        rows.append(s.reset_index())
    long = pd.concat(rows, ignore_index=True)
    return _wide(long, by, digits) if wide else long


def _wide(s: pd.DataFrame, by: list[str], digits: int) -> pd.DataFrame:
    out = None
    for metric, part in s.groupby("metric", sort=False):
        col = part.set_index(by)
        text = [f"{m:.{digits}g} ± {sd:.2g}" if pd.notna(sd) else f"{m:.{digits}g}"
                for m, sd in zip(col["mean"], col["std"])]
        frame = pd.DataFrame({metric: text}, index=col.index)
        if out is None:
            out = frame
            if "sparsity" in col:
                out.insert(0, "sparsity", col["sparsity"].round(3))
            out["n"] = col["n"].astype(int)
        else:
            out[metric] = frame[metric]
    if out is None:
        return pd.DataFrame()
    n = out.pop("n")
    out["n"] = n
    return out.reset_index()
