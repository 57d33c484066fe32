"""IMP checkpoint size on SmolLM2-135M: the old pickled payload vs the new format.

Old (until the checkpoint rewrite): ``torch.save({state: state_dict copies (a tied head
copied twice), masks: bool masks, tables})`` per round. New
(:mod:`workbench.lottery.checkpoint`): a rewinding round stores the round's and the next
round's masks bit-packed; a continuation round (one-shot after its prune) adds the full
float32 state with tied tensors once. Both are written for real to a temporary folder
and measured with ``stat``; the masks are a 20% global-magnitude selection. No timing
assertions; prints sizes and ratios.

    python benchmarks/bench_checkpoint.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from workbench.core.models import load_model
from workbench.lottery import checkpoint as ckpt
from workbench.lottery.rounds import ranked_parameters
from workbench.pruning.masks import select_masks

MB = 1e6


def main() -> None:
    model, _ = load_model("smollm2-135m", device="cpu")
    names = ranked_parameters(model, "block_linear")
    scores = {n: p.detach().abs() for n, p in names.items()}
    masks = select_masks(scores, 0.2, scope="global")
    next_masks = select_masks(scores, 0.36, scope="global")
    print(f"ranked weights: {sum(p.numel() for p in names.values()) / 1e6:.1f} M of "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        old = dict(version=1, state={k: v.detach().to("cpu", copy=True)
                                     for k, v in model.state_dict().items()},
                   masks={n: m.cpu() for n, m in masks.items()}, records=[], losses=[])
        torch.save(old, tmp / "round_001.pt")
        old_s = time.perf_counter() - t
        old_mb = (tmp / "round_001.pt").stat().st_size / MB
        del old
        payload = dict(config={}, labels={}, round=1, complete=False, records=[], losses=[],
                       layer_sparsity=[], emergent=[],
                       shapes={n: list(m.shape) for n, m in masks.items()})
        rows = []
        for label, tensors in (
            ("new, rewinding round (masks + next masks)",
             {**ckpt.pack_masks(masks, "mask"), **ckpt.pack_masks(next_masks, "next_mask")}),
            ("new, continuation round (masks + fp32 state)",
             {**ckpt.pack_masks(masks, "mask"), **ckpt.state_tensors(model)}),
        ):
            d = tmp / label.split(",")[1].strip().split()[0]
            t = time.perf_counter()
            path = ckpt.write_checkpoint(d, "round_001", payload, tensors)
            seconds = time.perf_counter() - t
            size = sum(p.stat().st_size for p in d.iterdir()) / MB
            t = time.perf_counter()
            ckpt.read_checkpoint(path)
            rows.append((label, size, seconds, time.perf_counter() - t))
    print(f"{'old pickled round checkpoint':48s} {old_mb:8.1f} MB  write {old_s:5.2f} s")
    for label, size, w, r in rows:
        print(f"{label:48s} {size:8.1f} MB  write {w:5.2f} s  read+verify {r:5.2f} s  "
              f"= {size / old_mb:6.1%} of old")


if __name__ == "__main__":
    main()
