"""SparseGPT vs Wanda vs Wanda + OBS update, side by side in one process.

All three prune the same dense model (weights restored between runs) with the same
calibration windows, sequentially (block by block), and are evaluated on the same
validation blocks. Prints, per method: pruning time, peak extra memory (CUDA allocator,
or peak RSS on Linux CPU), achieved sparsity, the spread of per-row sparsity, validation
perplexity, and the time / memory ratios to Wanda + OBS; then the fraction of mask
entries on which SparseGPT and Wanda (+ OBS: the same mask) differ. Timings are never
asserted.

Example (CPU, small calibration)::

    .venv/bin/python benchmarks/bench_sparsegpt.py --windows 8 --seq-len 128 --eval 4
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch

import workbench as wb
from _timing import timed
from workbench.core.data import calibration_windows, load_corpus, token_blocks
from workbench.pruning.masks import mask_overlap, prunable_modules, restore

METHODS = ("wanda", "wanda_obs", "sparsegpt")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--eval", type=int, default=4, help="validation blocks of --seq-len")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--scope", default=None, help="e.g. 2:4 (default: each method's own)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--include", nargs="*", default=None,
                    help=r"prune only these weights, e.g. 'model\.layers\.[0-5]\..*proj'")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, tok = wb.load_model(args.model, device=device, seed=0)
    corpus = load_corpus()
    cal = calibration_windows(tok, corpus.train, args.seq_len, args.windows, seed=0)
    val = token_blocks(tok, corpus.validation, args.seq_len, n_blocks=args.eval, seed=0)
    dense = {n: m.weight.detach().clone()
             for n, m in prunable_modules(model, args.include).items()}
    rows, masks = [], {}
    for method in METHODS:
        restore(model, dense)
        scope = args.scope
        res, sec, peak = timed(lambda: wb.prune(model, method, args.sparsity, scope=scope,
                                                calibration_tokens=cal, include=args.include),
                               device)
        masks[method] = res.masks
        row_sp = torch.cat([(~mk).float().mean(1) for mk in res.masks.values()])
        rows.append(dict(method=method, scope=res.info["scope"], seconds=sec,
                         peak_mib=peak, achieved=res.info["achieved_sparsity"],
                         row_sparsity_sd=float(row_sp.std()),
                         perplexity=wb.perplexity(model, val, progress=False)))
    restore(model, dense)
    frame = pd.DataFrame(rows).set_index("method")
    base = frame.loc["wanda_obs"]
    frame["time_vs_wanda_obs"] = frame["seconds"] / base["seconds"]
    frame["mem_vs_wanda_obs"] = frame["peak_mib"] / base["peak_mib"]
    print(f"{args.model}: {args.windows}x{args.seq_len} calibration, {args.eval}x"
          f"{args.seq_len} evaluation, sparsity {args.sparsity}, device {device}, "
          f"{torch.get_num_threads()} threads, {len(dense)} weight matrices pruned")
    with pd.option_context("display.width", 200, "display.max_columns", None,
                           "display.precision", 4):
        print(frame)
    diff = mask_overlap(masks["sparsegpt"], masks["wanda"])["hamming_fraction"]
    print(f"mask entries where SparseGPT and Wanda differ: {diff:.1%}")


if __name__ == "__main__":
    main()
