"""Global thresholds: exact streaming vs the approximate methods, side by side.

Default (``--scores real``): the real scores of the default model (``smollm2-135m``, the
blocks' linear layers, 106M scores): Wanda scores ``|W_ij| ||X_j||`` from a few
calibration windows of the default corpus (Wanda's protocol,
:func:`workbench.core.data.calibration_windows`) and magnitudes ``|W|``. For each kind
and target sparsity (10 / 50 / 90 %) it times the global mask selection
(:func:`workbench.pruning.masks.select_masks` with ``scope="global"``) of every threshold
method and prints the achieved sparsity, the mask agreement with the exact masks
(fraction of entries with the same keep/prune decision), the time ratio to exact
(fastest of ``--repeats`` runs each) and the passes over the scores. The approximate
methods are timed as ``select_masks`` runs them (threshold, then ``score > value``) but
with ``on_miss="warn"``, so a method that misses its tolerance (``select_masks`` would
raise) still shows its numbers, marked ``MISS``.

``--scores synthetic``: the earlier Llama-2-7B-shaped |randn| scores (scaled down by
``--scale``; ``--scale 1 --device cuda`` is the real 6.5e9-score shape set), with concat +
kthvalue as a further reference and ``--huge`` for the > 2**31 path.

Timings are one process, side by side; never asserted. Run with ``nice -n 10`` and
``OMP_NUM_THREADS=1`` on a shared machine.
"""

from __future__ import annotations

import argparse

import torch

from _timing import timed
from workbench.pruning.masks import select_masks
from workbench.pruning.threshold import (
    THRESHOLD_ALGORITHMS,
    exact_kth,
    global_threshold,
    histogram_threshold,
    statistical_threshold,
)

SHAPES_7B = [(4096, 4096)] * 4 + [(11008, 4096)] * 2 + [(4096, 11008)]


# ----------------------------------------------------------------------------- real scores
def real_scores(model_name: str, windows: int, seq_len: int, batch_size: int):
    """``{"wanda": scores, "magnitude": scores}`` of the model's prunable linear layers."""
    from workbench.core.data import DEFAULT_CORPUS, calibration_windows, load_corpus
    from workbench.core.models import load_model
    from workbench.pruning.scores import importance

    model, tok = load_model(model_name)
    corpus = load_corpus(DEFAULT_CORPUS)
    cal = calibration_windows(tok, corpus.train, seq_len, windows, seed=0)
    print(f"model {model_name}, corpus {DEFAULT_CORPUS}: {windows} calibration windows x "
          f"{seq_len} tokens (seed 0)")
    out = {"wanda": importance(model, "wanda", tokens=cal, batch_size=batch_size),
           "magnitude": importance(model, "magnitude")}
    del model
    return out


def _describe(scores) -> str:
    allv = torch.cat([t.reshape(-1).float() for t in scores.values()])
    n = allv.numel()
    sample = allv[torch.randperm(n, generator=torch.Generator().manual_seed(0))[:1 << 22]]
    n_distinct = int(torch.unique(allv).numel())
    return (f"{len(scores)} tensors, {n:,} scores, min {float(allv.min()):.3g}, "
            f"median ~{float(sample.median()):.3g}, max {float(allv.max()):.3g}, "
            f"{n_distinct:,} distinct values")


def _approx_masks(scores, k, algorithm):
    """What ``select_masks(scope="global", threshold_algorithm=algorithm)`` does, with
    ``on_miss="warn"`` so that a miss still gives masks to compare: the threshold, then
    ``keep = score > value`` (+inf kept)."""
    th = global_threshold(scores, k, algorithm=algorithm, on_miss="warn")
    return {n: (t.float() > th.value) | torch.isposinf(t) for n, t in scores.items()}, th


def _best(fn, repeats: int):
    """``(result, seconds)``: the fastest of ``repeats`` runs (a shared machine's load only
    ever adds time)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        out, sec, _ = timed(fn, torch.device("cpu"))
        best = min(best, sec)
    return out, best


def bench_real(a) -> None:
    import warnings

    from workbench.pruning.threshold import ThresholdToleranceWarning

    warnings.simplefilter("ignore", ThresholdToleranceWarning)  # reported as MISS below
    all_scores = real_scores(a.model, a.windows, a.seq_len, a.batch_size)
    rows = []
    for kind, scores in all_scores.items():
        print(f"{kind}: {_describe(scores)}", flush=True)
        n = sum(t.numel() for t in scores.values())
        for s in a.sparsities:
            k = round(s * n)
            exact, t_exact = _best(lambda: select_masks(scores, s, scope="global"), a.repeats)
            for method in THRESHOLD_ALGORITHMS:
                if method == "exact":
                    masks, sec, passes, note = exact, t_exact, "-", ""
                else:
                    (masks, th), sec = _best(lambda: _approx_masks(scores, k, method),
                                             a.repeats)
                    passes = str(th.iterations)
                    note = "MISS (select_masks raises)" if abs(th.count_error) > \
                        th.tolerance * n else ""
                pruned = sum(int((~m).sum()) for m in masks.values())
                same = sum(int((m == exact[nm]).sum()) for nm, m in masks.items())
                rows.append((kind, s, method, pruned / n, same / n, sec, sec / t_exact,
                             passes, note))
                print(*rows[-1], flush=True)
                del masks
            del exact
    print(f"\n{'scores':10s} {'target':>6s} {'method':12s} {'achieved':>9s} "
          f"{'agree w/ exact':>15s} {'seconds':>8s} {'time / exact':>12s} {'passes':>6s}")
    for kind, s, method, ach, agree, sec, ratio, passes, note in rows:
        print(f"{kind:10s} {s:6.2f} {method:12s} {ach:9.5f} {agree:15.6%} {sec:8.2f} "
              f"{ratio:12.2f} {passes:>6s} {note}")


# ----------------------------------------------------------------------------- synthetic
def shapes(scale: int, blocks: int):
    return [(a // scale, b // scale) for a, b in SHAPES_7B] * blocks


def layer(i, shape, dtype, device):
    g = torch.Generator(device=device).manual_seed(i)
    # |w|-like scores with many exact ties in bf16
    return torch.randn(shape, generator=g, device=device).abs_().to(dtype)


def bench_synthetic(a) -> None:
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
        t, sec, peak = timed(lambda: fn(scores, k, on_miss="warn"), device)
        rows.append((name, sec, peak, abs(t.n_below - k)))
    print(f"{'method':40s} {'seconds':>9s} {'peak MiB':>9s} {'|achieved-target|':>18s}")
    for r in rows:
        print(f"{r[0]:40s} {r[1]:9.3f} {r[2]:9.1f} {r[3]:18,d}")
    base = rows[0][1]
    for r in rows[1:]:
        print(f"ratio {r[0]} / exact streaming: time {r[1] / base:.2f}x, "
              f"peak memory {r[2] / max(rows[0][2], 1e-9):.2f}x")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scores", choices=("real", "synthetic"), default="real")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--windows", type=int, default=8, help="calibration windows (real)")
    ap.add_argument("--seq-len", type=int, default=256, help="tokens per window (real)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.1, 0.5, 0.9])
    ap.add_argument("--repeats", type=int, default=3, help="timing: fastest of (real)")
    ap.add_argument("--scale", type=int, default=8)
    ap.add_argument("--blocks", type=int, default=32)
    ap.add_argument("--sparsity", type=float, default=0.5, help="synthetic only")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--huge", action="store_true", help="generated > 2**31 scores")
    a = ap.parse_args()
    if a.scores == "real":
        bench_real(a)
    else:
        bench_synthetic(a)


if __name__ == "__main__":
    main()
