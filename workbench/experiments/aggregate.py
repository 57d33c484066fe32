"""Collect the runs of a grid into one tidy DataFrame and summarise it.

:func:`load_runs` reads ``records.parquet`` (one row per pruning round) of every finished
cell of a spec and adds the design parameters of the cell (``prune_pct``, ``n_rounds``,
... from ``params.json``) that the notebook did not write itself, so a frame row says
everything about how it was produced. :func:`summarize` gives mean, standard deviation
(ddof=1) and n over seeds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from workbench.experiments.grid import PARAMS_FILE, RECORDS_FILE, SPEC_FILE
from workbench.experiments.specs import DESIGN_KEYS, Spec, load_spec

#: Columns added from ``params.json`` when the records lack them.
PARAM_COLUMNS = DESIGN_KEYS + ("steps_per_round", "warmup_steps", "batch_size", "seq_len",
                               "model", "corpus")
TABLES = ("records", "losses", "layer_sparsity", "super_weights")


def runs_folder(source: str | os.PathLike | Spec, profile: str | None = "cpu",
                runs_dir: str | os.PathLike | None = None) -> Path:
    """The runs folder of ``source``: an existing folder as is, else the spec's folder."""
    if not isinstance(source, Spec) and Path(source).is_dir():
        return Path(source)
    return load_spec(source).runs_dir(profile, runs_dir)


def load_runs(source: str | os.PathLike | Spec, profile: str | None = "cpu", *,
              runs_dir: str | os.PathLike | None = None, table: str = "records",
              experiments: Sequence[str] | None = None) -> pd.DataFrame:
    """One tidy DataFrame over all finished cells of a spec.

    Args:
        source: Spec name/path/:class:`~workbench.experiments.specs.Spec`, or a runs folder holding
            ``<experiment>/seed<k>/``.
        profile: Profile the spec ran with (ignored for a folder).
        runs_dir: Root of the runs folders (default ``data/runs``).
        table: Which per-cell parquet to read: one of :data:`TABLES`.
        experiments: Keep only these experiments.

    Returns:
        The rows of every finished cell, with ``experiment`` and ``seed`` columns, the
        cell's design parameters and, for records, ``val_nll = log(val_ppl)``; empty (no columns) when nothing has finished. The
        folder is in ``df.attrs["runs_dir"]``.

    Raises:
        ValueError: If ``table`` is unknown.
    """
    if table not in TABLES:
        raise ValueError(f"table={table!r} is not allowed; allowed: {list(TABLES)}")
    folder = runs_folder(source, profile, runs_dir)
    frames = []
    for rec in sorted(folder.glob(f"*/seed*/{RECORDS_FILE}")):  # finished cells only
        cell = rec.parent
        f = cell / f"{table}.parquet"
        if not f.is_file():
            continue
        df = pd.read_parquet(f)
        exp, seed = cell.parent.name, int(cell.name.removeprefix("seed"))
        if experiments is not None and exp not in experiments:
            continue
        if "experiment" not in df:
            df.insert(0, "experiment", exp)
        if "seed" not in df:
            df.insert(1, "seed", seed)
        params = _read_json(cell / PARAMS_FILE)
        for key in PARAM_COLUMNS:
            if key in params and key not in df:
                value = params[key]
                df[key] = str(value) if isinstance(value, (list, dict)) else value
        frames.append(df)
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if "val_ppl" in out and "val_nll" not in out:
        # log-perplexity = mean NLL per token (nats): perplexities of a collapsing model
        # span orders of magnitude across seeds, so tests are run on their logarithm
        out["val_nll"] = np.log(out["val_ppl"].astype(float))
    if len(out) and {"experiment", "seed"} <= set(out):
        keys = [k for k in ("experiment", "seed", "round", "step") if k in out]
        out = out.sort_values(keys, kind="stable").reset_index(drop=True)
    out.attrs["runs_dir"] = str(folder)
    return out


def run_info(source: str | os.PathLike | Spec, profile: str | None = "cpu",
             runs_dir: str | os.PathLike | None = None) -> dict:
    """The ``spec.json`` the grid wrote into the runs folder (empty if missing)."""
    return _read_json(runs_folder(source, profile, runs_dir) / SPEC_FILE)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def summarize(df: pd.DataFrame, metrics: Sequence[str] = ("val_ppl", "sw_survival"),
              by: Sequence[str] = ("experiment", "round")) -> pd.DataFrame:
    """Mean, standard deviation (ddof=1) and n over seeds, in long (tidy) form.

    Args:
        df: Output of :func:`load_runs`.
        metrics: Numeric columns to summarise.
        by: Grouping columns; ``sparsity``'s mean is added when present.

    Returns:
        Columns ``*by, [sparsity], metric, mean, std, n`` (std is NaN for n = 1).

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
    return pd.concat(rows, ignore_index=True)


def summary_table(df: pd.DataFrame, metrics: Sequence[str] = ("val_ppl", "sw_survival"),
                  by: Sequence[str] = ("experiment", "round"), digits: int = 3) -> pd.DataFrame:
    """Wide, readable summary: one ``mean ± std`` column per metric, plus sparsity and n."""
    s = summarize(df, metrics, by)
    out = None
    for metric, part in s.groupby("metric", sort=False):
        col = part.set_index(list(by))
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
