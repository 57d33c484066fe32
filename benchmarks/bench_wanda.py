"""Wanda on the default model: workbench vs a straightforward reference, side by side.

workbench (``workbench.prune(model, "wanda", ...)``) streams float32 squared input sums
(no stored activations) and, sequentially, runs one block at a time on the captured
block inputs. The reference is what one writes first: forward hooks on every linear
layer that **store** all inputs, a full-model forward, ``||X_j||`` from the stored rows,
``torch.sort`` per output row. Two pairings, each pair giving the same masks up to
float-rounding ties:

* ``all-at-once``: workbench ``sequential=False`` vs one full forward of the dense model;
* ``sequential`` (Wanda's protocol): workbench's default vs, for every block, a full
  forward of the partly pruned model storing that block's inputs.

Prints time, peak extra memory (CUDA allocator, or peak RSS on Linux CPU), the number of
mask entries that differ, and the ratios. Timings are never asserted.

CPU default: 8 calibration windows of 128 tokens; on a GPU use ``--windows 128``.
"""

from __future__ import annotations

import argparse

import torch

import workbench as wb
from _timing import timed
from workbench.pruning.masks import prunable_modules
from workbench.core.devices import model_device
from workbench.core.models import forward_logits, transformer_blocks


@torch.no_grad()
def _stored_inputs(model, modules, data, batch_size):
    store = {n: [] for n in modules}
    hooks = [m.register_forward_pre_hook(lambda _m, a, n=n: store[n].append(a[0].detach()))
             for n, m in modules.items()]
    try:
        for b in data.split(batch_size):
            forward_logits(model, b.to(model_device(model)))
    finally:
        for h in hooks:
            h.remove()
    return store


@torch.no_grad()
def _sort_prune(modules, store, sparsity):
    masks = {}
    for n, m in modules.items():
        X = torch.cat([x.reshape(-1, x.shape[-1]) for x in store[n]]).float()
        score = m.weight.float().abs() * X.norm(dim=0)[None, :]
        k = int(score.shape[1] * sparsity)
        idx = torch.sort(score, dim=1, stable=True).indices[:, :k]
        keep = torch.ones_like(score, dtype=torch.bool).scatter_(1, idx, False)
        m.weight.mul_(keep.to(m.weight.dtype))
        masks[n] = keep
    return masks


def reference_all_at_once(model, data, sparsity, batch_size):
    modules = prunable_modules(model)
    return _sort_prune(modules, _stored_inputs(model, modules, data, batch_size), sparsity)


def reference_sequential(model, data, sparsity, batch_size):
    modules = prunable_modules(model)
    masks = {}
    for block in transformer_blocks(model):
        ids = {id(x) for x in block.modules()}
        mine = {n: m for n, m in modules.items() if id(m) in ids}
        masks.update(_sort_prune(mine, _stored_inputs(model, mine, data, batch_size), sparsity))
    return masks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--corpus", default="wiki-excerpt")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--modes", default="all-at-once,sequential")
    a = ap.parse_args()
    device = torch.device(a.device)
    _, tok = wb.load_model(a.model, device="cpu")
    corpus = wb.load_corpus(a.corpus, seed=0)
    cal = wb.calibration_windows(tok, corpus.train, a.seq_len, a.windows, seed=0).to(device)
    print(f"{a.model}, {a.windows} x {a.seq_len} calibration tokens, {a.dtype}, {device}")

    def fresh():
        return wb.load_model(a.model, dtype=getattr(torch, a.dtype), device=str(device))[0]

    warm = fresh()  # warm-up: first-call costs (kernels, allocator) outside the timings
    wb.prune(warm, "wanda", a.sparsity, calibration_tokens=cal[:1], batch_size=1)
    del warm
    rows = []
    for mode in a.modes.split(","):
        seq = mode == "sequential"
        model = fresh()
        res, sec_w, peak_w = timed(lambda: wb.prune(
            model, "wanda", a.sparsity, calibration_tokens=cal, sequential=seq,
            batch_size=a.batch_size), device)
        del model
        model = fresh()
        ref_fn = reference_sequential if seq else reference_all_at_once
        ref, sec_r, peak_r = timed(lambda: ref_fn(model, cal, a.sparsity, a.batch_size), device)
        del model
        diff = sum(int((res.masks[n].cpu() != ref[n].cpu()).sum()) for n in ref)
        total = sum(m.numel() for m in ref.values())
        rows.append((mode, sec_w, peak_w, sec_r, peak_r, diff, total))
    print(f"{'mode':12s} {'wb s':>8s} {'wb MiB':>8s} {'ref s':>8s} {'ref MiB':>8s} "
          f"{'masks differ':>14s}")
    for mode, sw, pw, sr, pr, diff, total in rows:
        print(f"{mode:12s} {sw:8.2f} {pw:8.1f} {sr:8.2f} {pr:8.1f} {diff:8d}/{total}")
    for mode, sw, pw, sr, pr, _, _ in rows:
        print(f"ratio reference / workbench ({mode}): time {sr / sw:.2f}x, "
              f"peak memory {pr / max(pw, 1e-9):.2f}x")


if __name__ == "__main__":
    main()
