"""Global threshold on Llama-2-7B-shaped scores: exact streaming vs concat + kthvalue vs
the seed's statistical bisection (and the histogram approximation).

Default: a scaled-down shape set (every dimension / --scale) so it runs on a CPU in
seconds; ``--scale 1 --device cuda`` is the real 7B shape set (6.5e9 scores). ``--huge``
demonstrates the > 2**31 path with a generator that makes each layer's scores on the fly
(never all held in memory; concat + kthvalue is skipped there).
Prints time, peak extra memory (CUDA allocator, or peak RSS on Linux CPU) and |achieved - target| count, and the ratios.
"""

from __future__ import annotations

import argparse

import torch

from _timing import timed
from workbench.pruning.threshold import exact_kth, histogram_threshold, statistical_threshold

SHAPES_7B = [(4096, 4096)] * 4 + [(11008, 4096)] * 2 + [(4096, 11008)]


def shapes(scale: int, blocks: int):
    return [(a // scale, b // scale) for a, b in SHAPES_7B] * blocks


def layer(i, shape, dtype, device):
    g = torch.Generator(device=device).manual_seed(i)
    # |w|-like scores with many exact ties in bf16
    return torch.randn(shape, generator=g, device=device).abs_().to(dtype)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=int, default=8)
    ap.add_argument("--blocks", type=int, default=32)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--huge", action="store_true", help="generated > 2**31 scores")
    a = ap.parse_args()
    device, dtype = torch.device(a.device), getattr(torch, a.dtype)
    shp = shapes(a.scale, a.blocks)
    n = sum(x * y for x, y in shp)
    k = round(a.sparsity * n)
    print(f"{len(shp)} tensors, {n:,} scores ({n / 2**31:.2f} x 2^31), {a.dtype}, {device}")
    if a.huge:
        source = lambda: (layer(i, s, dtype, device) for i, s in enumerate(shp))  # noqa: E731
        (th, sec, peak) = timed(lambda: exact_kth(source, k, n_total=n), device)
        print(f"exact streaming (generated layers): {sec:.1f} s, value {th.value:.6g}, "
              f"n_below {th.n_below:,} <= k={k:,}, passes {th.iterations}")
        return
    scores = {f"l{i}": layer(i, s, dtype, device) for i, s in enumerate(shp)}
    rows = []
    th, sec, peak = timed(lambda: exact_kth(scores, k, n_total=n), device)
    exact_val = th.value
    rows.append(("exact streaming", sec, peak, 0))
    try:
        def concat():
            allv = torch.cat([t.reshape(-1) for t in scores.values()])
            return torch.kthvalue(allv.float() if allv.dtype != torch.float32 else allv, k).values
        v, sec, peak = timed(concat, device)
        assert float(v) == exact_val, (float(v), exact_val)
        rows.append(("concat + kthvalue", sec, peak, 0))
    except (RuntimeError, MemoryError) as err:
        rows.append((f"concat + kthvalue FAILED ({type(err).__name__})", float("nan"),
                     float("nan"), -1))
    for name, fn in (("statistical bisection", statistical_threshold),
                     ("histogram", histogram_threshold)):
        t, sec, peak = timed(lambda: fn(scores, k), device)
        rows.append((name, sec, peak, abs(t.n_below - k)))
    print(f"{'method':40s} {'seconds':>9s} {'peak MiB':>9s} {'|achieved-target|':>18s}")
    for r in rows:
        print(f"{r[0]:40s} {r[1]:9.3f} {r[2]:9.1f} {r[3]:18,d}")
    base = rows[0][1]
    for r in rows[1:]:
        print(f"ratio {r[0]} / exact streaming: time {r[1] / base:.2f}x, "
              f"peak memory {r[2] / max(rows[0][2], 1e-9):.2f}x")


if __name__ == "__main__":
    main()
