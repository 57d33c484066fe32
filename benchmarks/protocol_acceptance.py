"""Issue 19 acceptance: SmolLM2-135M under the ``wikitext2`` and ``wiki-excerpt`` cards.

No hub is reachable here, so the ``wikitext2`` / ``c4`` cards read **stand-in files in
the hub's exact format built from the embedded corpus** (:func:`write_standins`): they
are NOT WikiText-2 or C4, and their numbers are not comparable with any paper; they
exercise the cards' exact loading path (parquet ``text`` rows joined with ``"\\n\\n"``,
C4 JSON lines drawn with Python's ``random``).

* ``--standins DIR``: writes ``DIR/wikitext-2-raw-v1/test-00000-of-00001.parquet`` (the
  embedded corpus' **test** split, one row per paragraph, an empty row between
  documents, as WikiText's rows are lines), ``DIR/en/c4-train.00000-of-01024.json.gz``
  (its **train** split, one document per line with ``text``, ``timestamp``, ``url``) and
  ``DIR/en/c4-validation.00000-of-00008.json.gz`` (its validation split).
* default: dense and Wanda 50 % over 3 calibration seeds with (a) eval card ``wikitext2``
  + calibration card ``c4`` on the stand-ins and (b) eval card ``wiki-excerpt`` +
  calibration card ``wiki-excerpt``; prints both tables with their protocol columns.

Run (a loaded 2-core CPU: small sizes)::

    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/protocol_acceptance.py \\
        --standins data/runs/standins
    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/protocol_acceptance.py \\
        --data data/runs/standins
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import workbench as wb
from workbench.core import io, paths
from workbench.pruning import oneshot


def write_standins(folder: str | Path) -> Path:
    """Hub-format stand-in files from the embedded corpus (NOT WikiText-2 / C4)."""
    folder = paths.resolve(folder)
    corpus = wb.load_corpus("wiki-excerpt")
    rows = []
    for doc in corpus.test:
        rows += doc.split("\n") + [""]
    wt = folder / "wikitext-2-raw-v1" / "test-00000-of-00001.parquet"
    wt.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": rows}), wt)
    for split, name in (("train", "c4-train.00000-of-01024.json.gz"),
                        ("validation", "c4-validation.00000-of-00008.json.gz")):
        path = folder / "en" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            for i, doc in enumerate(corpus.split(split)):
                fh.write(json.dumps({"text": doc, "timestamp": "2019-01-01T00:00:00Z",
                                     "url": f"wiki-excerpt:{split}:{i}"}) + "\n")
    (folder / "README.txt").write_text(
        "Stand-in files in the hub's format built from the workbench's embedded Wikipedia "
        "excerpt (benchmarks/protocol_acceptance.py). They are NOT WikiText-2 or C4.\n",
        encoding="utf-8")
    return folder


def table(df) -> str:
    """Mean ± sd over seeds of the perplexity, with the protocol columns."""
    r = df.iloc[0]
    lines = [f"eval card {r['eval_card']} ({r['eval_source']}), seq_len "
             f"{r['eval_context_length']}, {r['eval_n_blocks']}/{r['eval_n_available']} "
             f"windows, {r['eval_n_tokens']} predicted tokens, {r['eval_ppl_level']}-level, "
             f"fingerprint {r['eval_fingerprint']}; calibration card {r['calibration_card']} "
             f"({r['calibration_n']} x {r['calibration_seq_len']}); lm-eval "
             f"{r['lm_eval_version']}",
             "| method | perplexity mean ± sd | per seed |", "|---|---|---|"]
    for method, part in df.groupby("method", sort=False):
        ppl = part.sort_values("seed")["val_ppl"]
        lines.append(f"| {method} | {ppl.mean():.3f} ± {ppl.std(ddof=1):.3f} | "
                     + ", ".join(f"{p:.3f}" for p in ppl) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--standins", help="write the stand-in files to this folder and stop")
    p.add_argument("--data", default="data/runs/standins")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--n-calibration", type=int, default=16)
    p.add_argument("--n-eval", type=int, default=16)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default="data/runs/protocol_acceptance")
    a = p.parse_args()
    if a.standins:
        print("wrote", write_standins(a.standins))
        return
    model, tok = wb.load_model(a.model, device="cpu")
    out = paths.resolve(a.out)
    for name, cards in (("wikitext2-standin", dict(eval_card="wikitext2", calibration_card="c4",
                                                   data=paths.resolve(a.data))),
                        ("wiki-excerpt", dict(eval_card="wiki-excerpt",
                                              calibration_card="wiki-excerpt"))):
        t0 = time.perf_counter()
        df = oneshot.oneshot_sweep(
            model, tok, None, methods=["wanda"], sparsities=[0.5], seeds=a.seeds,
            n_calibration=a.n_calibration, calibration_seq_len=a.seq_len, n_eval=a.n_eval,
            eval_seq_len=a.seq_len, model_name=a.model, progress=False, **cards)
        io.write_parquet(out / f"{name}.parquet", df)
        print(f"\n## {name} ({time.perf_counter() - t0:.0f} s)"
              + (" — stand-in files built from the embedded corpus, NOT WikiText-2/C4"
                 if name.endswith("standin") else ""))
        print(table(df), flush=True)


if __name__ == "__main__":
    main()
