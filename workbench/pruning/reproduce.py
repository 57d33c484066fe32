"""Published one-shot pruning tables as data, and their reproduction on a local model.

The tables live in ``data/tables/<paper>.yaml`` (one file per paper: the paper, the
table, the source each number was copied from, the protocol cards and sizes it used,
one entry per model). A table *name* is ``<paper id>-<model key>``, e.g.
``wanda-llama2-7b`` (:func:`table_names`).

:func:`reproduce` runs the table's methods at the table's patterns with the table's
protocol cards (evaluation ``wikitext2``, calibration ``c4``; files from ``data``) on a
local model through :func:`workbench.pruning.oneshot.oneshot_sweep`, over calibration
seeds, and returns ours next to theirs: the mean over seeds, the difference ours - theirs,
and our seed spread (sd, min, max). Choices, stated:

* the published numbers are one run at calibration seed 0 (the authors' ``--seed 0``);
  ours is the arithmetic mean of the perplexities over ``seeds`` (seed 0 included by
  default) and ``ours_seed0`` is listed as well;
* a model that is not the table's is allowed and labelled (``model_matches=False`` and a
  line in the header); any departure from the table's protocol (a shorter ``seq_len``,
  fewer evaluation windows, fewer calibration windows) is listed in
  ``Reproduction.deviations`` and printed.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd

from workbench.core import paths, protocols
from workbench.core.checks import check_range
from workbench.core.models import load_model
from workbench.core.protocols import check_same_protocol
from workbench.pruning.oneshot import oneshot_sweep
from workbench.pruning.registry import METHODS

#: Folder of the published tables.
TABLES_DIR = paths.ROOT / "data" / "tables"


@dataclass(frozen=True)
class PublishedTable:
    """One paper's numbers for one model.

    Attributes:
        name: ``<paper id>-<model key>``.
        paper, table, source: Citation, which table, where the numbers were copied from.
        model_key, model_id: The model's key in the file and its hub id.
        metric: ``"perplexity"``.
        eval_card, calibration_card: Protocol cards
            (:mod:`workbench.core.protocols`).
        seq_len, n_calibration, calibration_seed: The paper's sizes.
        rows: ``[{"method", "pattern", "allocation", "value"}, ...]``; ``pattern`` is
            ``"dense"``, a sparsity (unstructured) or ``"N:M"``.
        not_included: What was left out (not verified).
    """

    name: str
    paper: str
    table: str
    source: str
    model_key: str
    model_id: str
    metric: str
    eval_card: str
    calibration_card: str
    seq_len: int
    n_calibration: int
    calibration_seed: int
    rows: list[dict] = field(default_factory=list)
    not_included: str = ""


def _table_files(folder: Path | None = None) -> list[Path]:
    return sorted((folder or TABLES_DIR).glob("*.yaml"))


def _read(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8"))


def table_names(folder: str | os.PathLike | None = None) -> list[str]:
    """Every table name (``<paper id>-<model key>``) in ``data/tables``."""
    names = []
    for f in _table_files(Path(folder) if folder else None):
        spec = _read(f)
        names += [f"{spec['id']}-{key}" for key in spec["models"]]
    return names


def load_table(name: str, folder: str | os.PathLike | None = None) -> PublishedTable:
    """The published table ``name``.

    Raises:
        ValueError: Unknown name (lists the known ones).
    """
    if not isinstance(name, str):
        raise TypeError(f"table must be a table name, got {type(name).__name__}")
    for f in _table_files(Path(folder) if folder else None):
        spec = _read(f)
        for key, model_id in spec["models"].items():
            if f"{spec['id']}-{key}" != name:
                continue
            rows = [dict(method=r["method"], pattern=r["pattern"],
                         allocation=r.get("allocation", "uniform"), value=float(r[key]))
                    for r in spec["rows"] if r.get(key) is not None]
            return PublishedTable(
                name=name, paper=" ".join(spec["paper"].split()),
                table=" ".join(spec["table"].split()), source=" ".join(spec["source"].split()),
                model_key=key, model_id=model_id, metric=spec["metric"],
                eval_card=spec["eval_card"], calibration_card=spec["calibration_card"],
                seq_len=int(spec["seq_len"]), n_calibration=int(spec["n_calibration"]),
                calibration_seed=int(spec["calibration_seed"]), rows=rows,
                not_included=" ".join(str(spec.get("not_included", "")).split()))
    raise ValueError(f"table: unknown published table {name!r}; known tables: "
                     f"{', '.join(table_names(folder))}")


@dataclass
class Reproduction:
    """Ours next to theirs.

    Attributes:
        table: The :class:`PublishedTable`.
        comparison: One row per published row: ``method, pattern, allocation, theirs,
            ours_mean, diff, ours_sd, ours_min, ours_max, ours_seed0, n_seeds``.
        rows: Every sweep row (with the protocol columns).
        model: The local model's name or path.
        model_matches: Whether it is the table's model.
        deviations: Departures from the table's protocol, one sentence each.
    """

    table: PublishedTable
    comparison: pd.DataFrame
    rows: pd.DataFrame
    model: str
    model_matches: bool
    deviations: list[str]

    def header(self) -> str:
        """Where the numbers come from and how ours were made."""
        t, r = self.table, self.rows.iloc[0]
        who = ("the table's model" if self.model_matches else
               f"NOT the table's model ({t.model_id}): the numbers are not expected to match")
        lines = [f"{t.name}: {t.paper}",
                 f"  table: {t.table}", f"  source: {t.source}",
                 f"  ours: {self.model} — {who}",
                 f"  protocol: eval card {r['eval_card']} ({r['eval_source']}, seq_len "
                 f"{r['eval_context_length']}, {r['eval_n_blocks']} of {r['eval_n_available']} "
                 f"windows, {r['eval_ppl_level']}-level perplexity, fingerprint "
                 f"{r['eval_fingerprint'][:23]}...), calibration card {r['calibration_card']} "
                 f"({r['calibration_n']} x {r['calibration_seq_len']}), seeds "
                 f"{sorted(self.rows['seed'].unique().tolist())}; torch {r['torch_version']}, "
                 f"transformers {r['transformers_version']}"]
        lines += [f"  deviation: {d}" for d in self.deviations]
        return "\n".join(lines)

    def text(self) -> str:
        """The header and the comparison as a markdown table."""
        out = [self.header(), "",
               "| method | pattern | allocation | theirs | ours (mean over seeds) | ours - "
               "theirs | seed sd | seed min–max | ours seed 0 |",
               "|---|---|---|---|---|---|---|---|---|"]
        for _, c in self.comparison.iterrows():
            out.append(f"| {c['method']} | {c['pattern']} | {c['allocation']} | "
                       f"{c['theirs']:.2f} | {c['ours_mean']:.2f} | {c['diff']:+.2f} | "
                       f"{c['ours_sd']:.2f} | {c['ours_min']:.2f}–{c['ours_max']:.2f} | "
                       f"{c['ours_seed0']:.2f} |")
        return "\n".join(out)

    __str__ = text


def _pattern_key(p) -> str:
    return "dense" if p == "dense" else (p if isinstance(p, str) else f"{float(p):g}")


def check_reproduce_arguments(table, *, data=None, seq_len=None, n_eval=None,
                              n_calibration=None, seeds=(0, 1, 2), batch_size=8) -> dict:
    """Check everything :func:`reproduce` needs before a model is loaded.

    Returns:
        The resolved settings (table, seq_len, n_calibration, seeds, ...).

    Raises:
        ValueError: Unknown table, bad sizes or seeds, a method that is not registered.
        FileNotFoundError: A card's data file is missing (named).
    """
    t = table if isinstance(table, PublishedTable) else load_table(table)
    seq_len = t.seq_len if seq_len is None else seq_len
    check_range("seq_len", seq_len, 2, integer=True)
    n_calibration = t.n_calibration if n_calibration is None else n_calibration
    check_range("n_calibration", n_calibration, 1, integer=True)
    if n_eval is not None:
        check_range("n_eval", n_eval, 1, integer=True)
    check_range("batch_size", batch_size, 1, integer=True)
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(f"seeds must be distinct non-negative integers, got {seeds}")
    for r in t.rows:
        if r["method"] != "dense":
            METHODS.check(r["method"])
    for card in (protocols.perplexity_card(t.eval_card),
                 protocols.calibration_card(t.calibration_card)):
        if card.source is not None and data is not None:  # None: the datasets cache,
            protocols.locate(card.name, card.source, data)  # tried when it is read
    return dict(table=t, seq_len=seq_len, n_calibration=n_calibration, n_eval=n_eval,
                seeds=seeds, batch_size=batch_size, data=data)


def reproduce(
    table: str | PublishedTable,
    model,
    tokenizer=None,
    *,
    data: str | os.PathLike | None = None,
    seq_len: int | None = None,
    n_eval: int | None = None,
    n_calibration: int | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    batch_size: int = 8,
    model_name: str | None = None,
    progress: bool = True,
) -> Reproduction:
    """Run a published table's methods with its protocol cards on a local model.

    Args:
        table: Table name (:func:`table_names`) or table.
        model: A local model path or name for :func:`workbench.core.models.load_model`, or
            a loaded model (then ``tokenizer`` is required).
        tokenizer: Its tokenizer when ``model`` is a module.
        data: Folder (or file) holding the cards' files (``wikitext-2-raw-v1/test-00000-
            of-00001.parquet``, ``en/c4-train.00000-of-01024.json.gz``).
        seq_len: Evaluation and calibration window length (default the table's, e.g.
            4096; a shorter one is a listed deviation).
        n_eval: Evaluate only this many windows (default all the card defines).
        n_calibration: Calibration windows per seed (default the table's, 128).
        seeds: Calibration seeds.
        batch_size: Sequences per forward.
        model_name: Name shown for ours (default the path / ``_name_or_path``).
        progress: Progress bars.

    Returns:
        A :class:`Reproduction` (print it for the table).

    Raises:
        ValueError, FileNotFoundError: From :func:`check_reproduce_arguments`, before the
            model loads.
    """
    a = check_reproduce_arguments(table, data=data, seq_len=seq_len, n_eval=n_eval,
                                  n_calibration=n_calibration, seeds=seeds,
                                  batch_size=batch_size)
    t = a["table"]
    if isinstance(model, (str, os.PathLike)):
        name = model_name or os.fspath(model)
        model, tokenizer = load_model(model)
    else:
        if tokenizer is None:
            raise TypeError("tokenizer is required when model is a loaded module")
        name = model_name or str(getattr(getattr(model, "config", None), "_name_or_path",
                                         type(model).__name__))
    config_id = str(getattr(getattr(model, "config", None), "_name_or_path", ""))
    matches = t.model_id in (name, config_id) or Path(name).name == t.model_id.split("/")[-1]
    frames, first = [], True
    by_allocation: dict[str, list[dict]] = {}
    for r in t.rows:
        if r["method"] != "dense":
            by_allocation.setdefault(r["allocation"], []).append(r)
    for allocation, rows in by_allocation.items():
        methods = list(dict.fromkeys(r["method"] for r in rows))
        patterns = list(dict.fromkeys(r["pattern"] for r in rows))
        frames.append(oneshot_sweep(
            model, tokenizer, None, methods=methods, sparsities=patterns,
            allocations=[allocation], seeds=a["seeds"], n_calibration=a["n_calibration"],
            calibration_seq_len=a["seq_len"], n_eval=a["n_eval"], eval_seq_len=a["seq_len"],
            batch_size=a["batch_size"], model_name=name, dense=first, progress=progress,
            eval_card=t.eval_card, calibration_card=t.calibration_card, data=a["data"]))
        first = False
    if first:  # a table of the dense model only
        frames.append(oneshot_sweep(
            model, tokenizer, None, methods=[], sparsities=[], seeds=a["seeds"],
            n_calibration=a["n_calibration"], calibration_seq_len=a["seq_len"],
            n_eval=a["n_eval"], eval_seq_len=a["seq_len"], batch_size=a["batch_size"],
            model_name=name, progress=progress, eval_card=t.eval_card,
            calibration_card=t.calibration_card, data=a["data"]))
    rows = pd.concat(frames, ignore_index=True)
    return Reproduction(table=t, comparison=compare(t, rows), rows=rows, model=name,
                        model_matches=matches, deviations=_deviations(t, rows, a))


def compare(table: PublishedTable, rows: pd.DataFrame) -> pd.DataFrame:
    """Ours (over seeds) next to theirs for every published row.

    Raises:
        ValueError: The rows mix protocols (different evaluation fingerprints).
    """
    check_same_protocol(rows)
    out = []
    for r in table.rows:
        if r["method"] == "dense":
            part = rows[rows["method"] == "dense"]
        else:
            part = rows[(rows["method"] == r["method"]) & (rows["allocation"] == r["allocation"])
                        & (rows["pattern"].astype(str) == ("unstructured" if not isinstance(
                            r["pattern"], str) else r["pattern"]))]
            if not isinstance(r["pattern"], str):
                part = part[(part["sparsity"] - float(r["pattern"])).abs() < 1e-9]
        ppl = part["val_ppl"].astype(float)
        seed0 = part.loc[part["seed"] == part["seed"].min(), "val_ppl"]
        mean = float(ppl.mean()) if len(ppl) else math.nan
        out.append(dict(method=r["method"], pattern=_pattern_key(r["pattern"]),
                        allocation=r["allocation"], theirs=r["value"], ours_mean=mean,
                        diff=mean - r["value"],
                        ours_sd=float(ppl.std(ddof=1)) if len(ppl) > 1 else 0.0,
                        ours_min=float(ppl.min()) if len(ppl) else math.nan,
                        ours_max=float(ppl.max()) if len(ppl) else math.nan,
                        ours_seed0=float(seed0.iloc[0]) if len(seed0) else math.nan,
                        n_seeds=int(part["seed"].nunique())))
    return pd.DataFrame(out)


def _deviations(t: PublishedTable, rows: pd.DataFrame, a: dict) -> list[str]:
    r = rows.iloc[0]
    out = []
    if a["seq_len"] != t.seq_len:
        out.append(f"seq_len {a['seq_len']} instead of the table's {t.seq_len}")
    if int(r["eval_n_blocks"]) != int(r["eval_n_available"]):
        out.append(f"{r['eval_n_blocks']} of the card's {r['eval_n_available']} evaluation "
                   "windows")
    if a["n_calibration"] != t.n_calibration:
        out.append(f"{a['n_calibration']} calibration windows per seed instead of "
                   f"{t.n_calibration}")
    if t.calibration_seed not in a["seeds"]:
        out.append(f"the table's calibration seed {t.calibration_seed} is not among ours")
    return out


__all__ = ["PublishedTable", "Reproduction", "load_table", "table_names", "reproduce",
           "compare", "check_reproduce_arguments", "TABLES_DIR"]
