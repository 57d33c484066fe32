"""fp16 / bf16 storage of the diagonal-Fisher EMA vs a float32 reference on a real LM.

Per window ``t`` (``--windows`` blocks of ``--batch`` x ``--seq-len`` tokens of the
corpus's train split) the float32 diagonal empirical Fisher ``x_t`` of the block linear
weights (:func:`workbench.curvature.kfac.modules_of_type`, all but the LM head) is
computed once and folded into several :class:`~workbench.curvature.FisherAccumulator`
EMAs at ``--decay``: float32 (the reference), and ``--dtype`` storage with this
workbench's accumulator ("new") and, with ``--old FILE``, with another version of
``accumulator.py`` (e.g. ``git show main:workbench/curvature/accumulator.py > old.py``;
before the split, ``diagonal.py``).

Printed per accumulator, on the bias-corrected EMA after the last window: share of
entries that are exactly zero, share that are non-zero in the reference but zero in
storage (underflow), and the agreement of 50 % OBD masks (score ``0.5 * F * w^2``, the
top half kept per tensor by ``torch.topk``) with the float32 reference's masks.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/bench_fisher_storage.py \\
        --old /tmp/fisher_old_diagonal.py
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import warnings

import torch

import workbench as wb
from workbench.curvature import FisherAccumulator, diagonal_fisher
from workbench.curvature.kfac import modules_of_type


def load_old(path: str):
    spec = importlib.util.spec_from_file_location("old_diagonal", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.FisherAccumulator


def obd_masks(fisher, params, sparsity=0.5):
    out = {}
    for n, f in fisher.items():
        score = (0.5 * f.float() * params[n].detach().float() ** 2).flatten()
        k = int(round(score.numel() * (1 - sparsity)))
        keep = torch.zeros(score.numel(), dtype=torch.bool)
        keep[torch.topk(score, k).indices] = True
        out[n] = keep
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--corpus", default="wiki-excerpt")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--decay", type=float, default=0.99)
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    ap.add_argument("--old", default=None, help="path of another diagonal.py to compare")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    dtype = getattr(torch, a.dtype)
    lm, tok = wb.load_model(a.model)
    text = wb.load_corpus(a.corpus, seed=a.seed)
    blocks = wb.token_blocks(tok, text.split("train"), a.seq_len,
                             n_blocks=a.windows * a.batch, seed=a.seed)
    weights = [f"{n}.weight" for n in modules_of_type(lm, None)]
    params = dict(lm.named_parameters())
    accs = {"float32 (reference)": FisherAccumulator(a.decay),
            f"{a.dtype} new": FisherAccumulator(a.decay, storage_dtype=dtype)}
    if a.old:
        accs[f"{a.dtype} old ({a.old})"] = load_old(a.old)(a.decay, storage_dtype=dtype)
    t0 = time.time()
    for t, window in enumerate(blocks.split(a.batch)):
        x = diagonal_fisher(lm, [window], params=weights, chunk_size=a.batch)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for acc in accs.values():
                acc.update_from(x)
        print(f"window {t + 1}/{a.windows}: {time.time() - t0:.0f} s; warnings: "
              f"{sorted({str(w.message)[:90] for w in caught})}", flush=True)
        del x
    n = sum(params[w].numel() for w in weights)
    print(f"\n{a.model}, corpus {a.corpus} (train split), {a.windows} windows of "
          f"{a.batch} x {a.seq_len} tokens, empirical diagonal Fisher of {len(weights)} block "
          f"linear weights ({n / 1e6:.1f}M entries), EMA decay {a.decay}, torch "
          f"{torch.__version__}")
    ref = accs["float32 (reference)"].get()
    ref_masks = obd_masks(ref, params)
    ref_zero = sum(int((v == 0).sum()) for v in ref.values()) / n
    print(f"{'storage':<40} {'zeros':>8} {'underflow':>10} {'OBD50 agree':>12}")
    for name, acc in accs.items():
        got = acc.get()
        got = {k: v.float() for k, v in got.items()}
        zeros = sum(int((v == 0).sum()) for v in got.values()) / n
        under = sum(int(((ref[k] != 0) & (got[k] == 0)).sum()) for k in ref) / n
        masks = obd_masks(got, params)
        agree = sum(int((masks[k] == ref_masks[k]).sum()) for k in ref) / n
        print(f"{name:<40} {zeros:>8.2%} {under:>10.2%} {agree:>12.2%}", flush=True)
        del got, masks
    print(f"(reference zeros {ref_zero:.2%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
