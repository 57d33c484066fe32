"""K-FAC collection and group-Fisher memory on a language model, side by side.

Part 1: time of K-FAC factor collection (:class:`workbench.curvature.KFAC`, every block
linear layer, Fisher type and flavour as given) next to a plain forward + backward pass
of the mean token loss on the same tokens and chunks (time ratio printed).
Part 2: peak extra memory and the size of the result of the group Fisher collected
directly (:func:`workbench.curvature.collect_group_fisher`) vs the full diagonal Fisher
of the same linear weights (:func:`workbench.curvature.diagonal_fisher`), printed as
ratios. Each of the two runs in a fresh process (``multiprocessing`` spawn) that loads
the model and the tokens, then measures the peak RSS (``ru_maxrss`` / VmHWM) above its
RSS just before the call (CUDA: ``max_memory_allocated`` above the allocation), so
neither run reuses memory freed by the other. Timings are printed, never asserted.

    .venv/bin/python benchmarks/bench_kfac.py --lm smollm2-135m --seq-len 64 --n-blocks 4
"""

from __future__ import annotations

import argparse

import torch

from _timing import plain_forward_backward, timed
from workbench.curvature import KFAC, collect_group_fisher, diagonal_fisher
from workbench.curvature.kfac import default_modules


def _setup(args):
    import workbench as wb

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, tok = wb.load_model(args.lm, device=str(device))
    corpus = wb.load_corpus(args.corpus, seed=0)
    blocks = wb.token_blocks(tok, corpus.split("validation"), args.seq_len,
                             n_blocks=args.n_blocks, seed=0).to(device)
    return model, blocks, device


def _fisher_in_child(args, which):
    """Run one Fisher collection in this (fresh) process; return (seconds, peak MiB,
    result MiB)."""
    model, blocks, device = _setup(args)
    batches = list(blocks.split(args.chunk_size))
    names = [f"{m}.weight" for m in default_modules(model)]
    kw = dict(n_samples=1, granularity=args.granularity, chunk_size=args.chunk_size)
    if which == "full":
        fn = lambda: diagonal_fisher(model, batches, fisher_type=args.fisher_type, params=names,
                                     **kw)
    else:
        fn = lambda: collect_group_fisher(model, batches, fisher_type=args.fisher_type, **kw)
    res, sec, peak = timed(fn, device)
    return sec, peak, mib(res)


def mib(d):
    return sum(t.numel() * t.element_size() for t in d.values()) / 2**20


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lm", default="smollm2-135m")
    ap.add_argument("--corpus", default="wiki-excerpt")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--n-blocks", type=int, default=4)
    ap.add_argument("--chunk-size", type=int, default=2)
    ap.add_argument("--fisher-type", default="empirical", choices=("empirical", "true"))
    ap.add_argument("--granularity", default="sequence", choices=("sequence", "token"))
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--skip-kfac", action="store_true")
    ap.add_argument("--skip-groups", action="store_true")
    args = ap.parse_args(argv)
    model, blocks, device = _setup(args)
    n_tok = blocks.numel()
    mods = default_modules(model)
    batches = list(blocks.split(args.chunk_size))
    print(f"{args.lm} on {device}: {args.n_blocks} blocks x {args.seq_len} tokens, chunk "
          f"{args.chunk_size}, {len(mods)} linear layers, {torch.get_num_threads()} threads")
    if not args.skip_kfac:
        _, t_ref, _ = timed(lambda: plain_forward_backward(model, blocks, args.chunk_size),
                            device)
        n_s = 1 if args.fisher_type == "true" else None
        print(f"{'what':<34}{'seconds':>9}{'tokens/s':>10}{'x fwd+bwd':>11}")
        print(f"{'forward+backward':<34}{t_ref:>9.2f}{n_tok / t_ref:>10.1f}{1.0:>11.2f}")
        for flavour in ("expand", "reduce"):
            _, t, _ = timed(lambda: KFAC(model, batches, fisher_type=args.fisher_type,
                                         n_samples=n_s, flavour=flavour), device)
            label = f"K-FAC {args.fisher_type}/{flavour}"
            print(f"{label:<34}{t:>9.2f}{n_tok / t:>10.1f}{t / t_ref:>11.2f}")
    if not args.skip_groups:
        import multiprocessing as mp

        del model
        ctx = mp.get_context("spawn")
        res = {}
        for which in ("full", "group"):
            with ctx.Pool(1) as pool:
                res[which] = pool.apply(_fisher_in_child, (args, which))
        (t_full, m_full, r_full), (t_grp, m_grp, r_grp) = res["full"], res["group"]
        print(f"\n{args.fisher_type} Fisher, granularity {args.granularity} (fresh process "
              "each):")
        print(f"{'what':<26}{'seconds':>9}{'peak extra MiB':>16}{'result MiB':>12}")
        print(f"{'full diagonal':<26}{t_full:>9.2f}{m_full:>16.1f}{r_full:>12.2f}")
        print(f"{'group (collected)':<26}{t_grp:>9.2f}{m_grp:>16.1f}{r_grp:>12.3f}")
        print(f"ratios full / group: peak memory {m_full / max(m_grp, 1e-9):.1f}x, result "
              f"{r_full / r_grp:.0f}x, time {t_full / t_grp:.2f}x")


if __name__ == "__main__":
    main()
