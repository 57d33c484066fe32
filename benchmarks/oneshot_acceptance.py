"""Issue 11 acceptance table: one-shot methods x allocations at 50 % and 2:4 on SmolLM2.

Magnitude, Wanda, Wanda + OBS update and SparseGPT (whichever are registered), each
with the uniform and the OWL allocation (unstructured only: N:M fixes every layer's
sparsity), over calibration seeds; validation perplexity and the shipped offline
zero-shot task (``wiki_lastword``), prune time per method. Sizes are cut for a shared
2-core CPU (defaults below; see ``--help``). Rows are saved after every method to
``data/runs/oneshot_acceptance/results.parquet`` and the markdown table is printed.

Run: ``.venv/bin/python benchmarks/oneshot_acceptance.py``
"""

from __future__ import annotations

import argparse
import time

import pandas as pd

import workbench as wb
from workbench.core import io, paths
from workbench.pruning import oneshot
from workbench.experiments.analysis import factors, oneshot_analysis
from workbench.pruning.registry import METHODS


def markdown(df: pd.DataFrame) -> str:
    """Perplexity mean ± sd, accuracy mean ± sd (%), prune seconds per row of the table."""
    g = df.groupby(["pattern", "method", "allocation"], sort=False)
    lines = ["| pattern | method | allocation | perplexity (mean ± sd) | zero-shot acc % "
             "(mean ± sd) | prune s (mean) | seeds |", "|---|---|---|---|---|---|---|"]
    for (pattern, method, allocation), part in g:
        label = part["method_label"].iloc[0]
        sd = part["val_ppl"].std(ddof=1)
        asd = part["zeroshot_acc"].std(ddof=1)
        lines.append(
            f"| {pattern} | {label} | {allocation} | {part['val_ppl'].mean():.2f} ± "
            f"{0 if pd.isna(sd) else sd:.2f} | {100 * part['zeroshot_acc'].mean():.1f} ± "
            f"{0 if pd.isna(asd) else 100 * asd:.1f} | {part['prune_seconds'].mean():.1f} | "
            f"{part['seed'].nunique()} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--methods", nargs="+",
                   default=["sparsegpt", "wanda", "wanda_obs", "magnitude"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--n-calibration", type=int, default=16)
    p.add_argument("--calibration-seq-len", type=int, default=128)
    p.add_argument("--n-eval", type=int, default=8)
    p.add_argument("--eval-seq-len", type=int, default=256)
    p.add_argument("--zeroshot-limit", type=int, default=64)
    p.add_argument("--out", default="data/runs/oneshot_acceptance")
    p.add_argument("--no-dense", dest="dense", action="store_false",
                   help="do not evaluate the dense model (another process does)")
    p.add_argument("--report", nargs="+", metavar="DIR",
                   help="only print the table of finished runs (results.parquet in each "
                        "DIR, e.g. of runs split over processes)")
    a = p.parse_args()
    if a.report:
        report(pd.concat([pd.read_parquet(paths.resolve(d) / "results.parquet")
                          for d in a.report], ignore_index=True))
        return
    methods = [m for m in a.methods if m in METHODS]
    print("methods:", methods, "(not registered:", [m for m in a.methods if m not in METHODS],
          ")", flush=True)
    model, tok = wb.load_model(a.model, device="cpu")
    corpus = wb.load_corpus("wiki-excerpt")
    out = paths.resolve(a.out)
    frames = []
    t0 = time.perf_counter()
    # one chunk = one (method, pattern, allocation) over all seeds, saved when done; the
    # chunks run in order of importance (uniform 50 %, then 2:4, then OWL 50 %)
    chunks = [(0.5, "uniform"), ("2:4", "uniform"), (0.5, "owl")]
    first = a.dense
    for method in methods:
        for pattern, allocation in chunks:
            if allocation not in METHODS.get(method).props["allocations"]:
                continue
            df = oneshot.oneshot_sweep(
                model, tok, corpus, methods=[method], sparsities=[pattern],
                allocations=[allocation], seeds=a.seeds, n_calibration=a.n_calibration,
                calibration_seq_len=a.calibration_seq_len, n_eval=a.n_eval,
                eval_seq_len=a.eval_seq_len, zeroshot_task="wiki_lastword",
                zeroshot_limit=a.zeroshot_limit, model_name=a.model, dense=first,
                progress=True)
            first = False
            frames.append(df)
            io.write_parquet(out / "results.parquet", pd.concat(frames, ignore_index=True))
            print(f"{method} {pattern} {allocation}: done after "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
    df = pd.concat(frames, ignore_index=True)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    io.write_parquet(out / "significance.parquet", report(df))


def report(df: pd.DataFrame) -> pd.DataFrame:
    """Print the settings, the markdown table and the findings; return the tests."""
    df = df[~df.duplicated(["method", "allocation", "pattern", "sparsity", "seed"])]
    r = df.iloc[0]
    print(f"{r['model']}, calibration {r['calibration_n']}x{r['calibration_seq_len']} "
          f"({r['calibration_split']}), validation {r['eval_n_blocks']}x"
          f"{r['eval_context_length']} ({r['eval_n_tokens']} predicted tokens), zero-shot "
          f"{r['zeroshot_task']} ({r['zeroshot_n']} examples); torch {r['torch_version']}, "
          f"transformers {r['transformers_version']}, lm-eval {r['lm_eval_version']}")
    if "eval_card" in df:  # rows written before issue 19 have no protocol columns
        print(f"protocol: eval card {r['eval_card']} ({r['eval_ppl_level']}-level perplexity, "
              f"fingerprint {r['eval_fingerprint']}), calibration card "
              f"{r['calibration_card']}, zero-shot metric {r['zeroshot_metric']}")
    print()
    print(markdown(df))
    table = factors.oneshot_significance(df)
    print("\n" + oneshot_analysis.findings(table))
    return table


if __name__ == "__main__":
    main()
