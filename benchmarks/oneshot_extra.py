"""Issue 11 measurements beyond the acceptance table: OWL at 60/70 % and the exact-target
gradient probe at 50 %, on SmolLM2, over calibration seeds.

* ``--part owl``: magnitude, Wanda and SparseGPT, uniform vs OWL allocation, at 60 % and
  70 % unstructured (the 50 % column is in ``oneshot_acceptance.py``); validation
  perplexity only.
* ``--part gradprobe``: the gradient probe pruning *exactly* the target
  (``exact_sparsity=True``) against its base method at the same sparsity and scope
  (50 %): base magnitude (global scope) and base Wanda (row scope).

Rows go to ``data/runs/oneshot_extra/<part>.parquet``; a table of mean ± sd over seeds is
printed. Sizes as in the acceptance script (16 x 128 calibration, 8 x 256 validation).

Run: ``.venv/bin/python benchmarks/oneshot_extra.py --part owl``
"""

from __future__ import annotations

import argparse
import time

import pandas as pd

import workbench as wb
from workbench.core import io, paths
from workbench.pruning import oneshot


def table(df: pd.DataFrame, by: list[str]) -> str:
    """Markdown: perplexity mean ± sd over seeds and prune seconds per group of ``by``."""
    lines = ["| " + " | ".join(by) + " | perplexity (mean ± sd) | prune s | seeds |",
             "|" + "---|" * (len(by) + 3)]
    for key, part in df.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        sd = part["val_ppl"].std(ddof=1)
        lines.append("| " + " | ".join(str(k) for k in key) +
                     f" | {part['val_ppl'].mean():.2f} ± {0 if pd.isna(sd) else sd:.2f} | "
                     f"{part['prune_seconds'].mean():.1f} | {part['seed'].nunique()} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["owl", "gradprobe"], required=True)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--n-calibration", type=int, default=16)
    p.add_argument("--n-eval", type=int, default=8)
    p.add_argument("--methods", nargs="+", default=["magnitude", "wanda", "sparsegpt"],
                   help="methods of --part owl")
    a = p.parse_args()
    model, tok = wb.load_model(a.model, device="cpu")
    corpus = wb.load_corpus("wiki-excerpt")
    common = dict(seeds=a.seeds, n_calibration=a.n_calibration, calibration_seq_len=128,
                  n_eval=a.n_eval, eval_seq_len=256, model_name=a.model, progress=True)
    t0 = time.perf_counter()
    if a.part == "owl":
        df = oneshot.oneshot_sweep(model, tok, corpus, methods=a.methods,
                                   sparsities=[0.6, 0.7], allocations=["uniform", "owl"],
                                   dense=False, **common)
        by = ["sparsity", "method", "allocation"]
    else:
        runs = [
            ("magnitude (global)", "magnitude", {"magnitude": {"scope": "global"}}),
            ("gradprobe exact, base magnitude (global)", "gradprobe",
             {"gradprobe": {"base": "magnitude", "exact_sparsity": True}}),
            ("Wanda (row)", "wanda", None),
            ("gradprobe exact, base Wanda (row)", "gradprobe",
             {"gradprobe": {"base": "wanda", "scope": "row", "exact_sparsity": True}}),
        ]
        frames = []
        for i, (label, method, options) in enumerate(runs):
            part = oneshot.oneshot_sweep(model, tok, corpus, methods=[method],
                                         sparsities=[0.5], method_options=options,
                                         dense=i == 0, **common)
            frames.append(part.assign(variant=part["method"].where(
                part["method"] == "dense", label)))
        df = pd.concat(frames, ignore_index=True)
        by = ["variant"]
    io.write_parquet(paths.resolve("data/runs/oneshot_extra") / f"{a.part}.parquet", df)
    print(f"\n{a.model}, calibration {a.n_calibration}x128, validation {a.n_eval}x256, "
          f"seeds {a.seeds}; total {time.perf_counter() - t0:.0f} s\n")
    print(table(df, by))


if __name__ == "__main__":
    main()
