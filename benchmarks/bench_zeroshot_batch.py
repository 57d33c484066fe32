"""Zero-shot time per example vs lm-eval ``batch_size`` (issue 19), side by side.

One process, one model (SmolLM2-135M by default), the same examples at every batch size:
the shipped ``wiki_lastword`` task (``evaluate_zeroshot``) and, with ``--standard DIR``,
the 7-task card (``evaluate_zeroshot_card``; e.g. the tiny schema files of the tests).
Batch size 1 is lm-eval's default when none is given (the "before"); the accuracies must
not depend on the batch size (checked and printed). Each setting is timed ``--repeats``
times, interleaved, and the median is kept.

Run: ``nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_zeroshot_batch.py``
"""

from __future__ import annotations

import argparse
import statistics

import torch

import workbench as wb
from workbench.core import zeroshot


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--limit", type=int, default=64)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--standard", default=None, help="folder of the 7 tasks' local files")
    a = p.parse_args()
    model, tok = wb.load_model(a.model, device="cpu")
    print(f"{a.model}, torch threads {torch.get_num_threads()}, lm-eval "
          f"{zeroshot.lm_eval_version()}")
    times: dict[int, list[float]] = {b: [] for b in a.batch_sizes}
    accs: dict[int, float] = {}
    n = 0
    for _ in range(a.repeats):
        for b in a.batch_sizes:
            r = zeroshot.evaluate_zeroshot(model, tok, "wiki_lastword", limit=a.limit,
                                           batch_size=b)
            times[b].append(r.seconds / r.n)
            accs[b], n = r.accuracy, r.n
    base = statistics.median(times[a.batch_sizes[0]])
    print(f"\nwiki_lastword, {n} examples (loglikelihood requests)")
    print("| batch_size | s / example (median) | speed-up vs first | acc |")
    print("|---|---|---|---|")
    for b in a.batch_sizes:
        t = statistics.median(times[b])
        print(f"| {b} | {t:.4f} | {base / t:.2f}x | {accs[b]:.4f} |")
    assert len(set(round(v, 6) for v in accs.values())) == 1, f"acc depends on batch: {accs}"
    if a.standard:
        print("\n7-task card on the files in", a.standard)
        print("| batch_size | s / example | speed-up | acc per task |")
        print("|---|---|---|---|")
        first = None
        for b in a.batch_sizes:
            rows = zeroshot.evaluate_zeroshot_card(model, tok, a.standard, batch_size=b)
            per = sum(r["seconds"] for r in rows) / sum(r["n"] for r in rows)
            first = first or per
            print(f"| {b} | {per:.4f} | {first / per:.2f}x | "
                  + ", ".join(f"{r['task']} {r['acc']:.2f}" for r in rows) + " |")


if __name__ == "__main__":
    main()
