"""Diagonal empirical Fisher: workbench vs a per-example loop vs BackPACK, and LM tokens/s.

Part 1 (MLP, ``nn.Linear``/``nn.ReLU``, where BackPACK applies): the diagonal of the
empirical Fisher of the mean loss, ``(1/N) sum_n (grad l_n)^2``, computed by

* ``workbench``: :func:`workbench.curvature.diagonal_fisher` (hooks for ``nn.Linear``),
* ``loop``: one forward/backward pass per example (plain PyTorch),
* ``backpack-sgs``: BackPACK's ``SumGradSquared`` (loss with ``reduction="sum"``, / N),
* ``backpack-bg``: BackPACK's ``BatchGrad`` (per-sample gradients, squared and summed),

all in one process, best of ``--repeats``; the values are checked to agree (allclose) and
the time ratios printed. Part 2: tokens/s of the empirical and true diagonal Fisher
(``granularity="sequence"`` and ``"token"``, hook path for every parameter) on the default
language model (``--lm``; ``--lm none`` skips it), next to a plain forward + backward pass
of the mean token loss over the same chunks (time ratio printed; goal <= ~2x);
``--with-vmap`` adds the ``torch.func.vmap`` path for comparison.

Default sizes are scaled down for a CPU (a few seconds); ``--device cuda --d-in 784
--hidden 1024 --batch 512`` is GPU scale. Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn

from _timing import plain_forward_backward
from workbench.curvature import diagonal_fisher


def mlp(d_in: int, hidden: int, d_out: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                         nn.ReLU(), nn.Linear(hidden, d_out))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_of(fn, repeats: int, device):
    best, out = float("inf"), None
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        out = fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return out, best


def ours(model, X, y):
    d = diagonal_fisher(model, [(X, y)], chunk_size=None)
    return [d[n] for n, _ in model.named_parameters()]


def loop(model, X, y):
    params = list(model.parameters())
    acc = [torch.zeros_like(p) for p in params]
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    for i in range(X.shape[0]):
        gs = torch.autograd.grad(loss_fn(model(X[i:i + 1]), y[i:i + 1]), params)
        for a, g in zip(acc, gs):
            a += g.pow(2)
    return [a / X.shape[0] for a in acc]


def backpack_fn(kind):
    from backpack import backpack, extend
    from backpack.extensions import BatchGrad, SumGradSquared

    def run(model, X, y):
        m = extend(model)
        loss_fn = extend(nn.CrossEntropyLoss(reduction="sum"))
        ext = SumGradSquared() if kind == "sgs" else BatchGrad()
        m.zero_grad()
        with backpack(ext):
            loss_fn(m(X), y).backward()
        N = X.shape[0]
        if kind == "sgs":
            return [p.sum_grad_squared / N for p in m.parameters()]
        return [p.grad_batch.pow(2).sum(0) / N for p in m.parameters()]

    return run


def bench_mlp(args, device):
    model = mlp(args.d_in, args.hidden, 10, args.seed).to(device)
    g = torch.Generator().manual_seed(args.seed)
    X = torch.randn(args.batch, args.d_in, generator=g).to(device)
    y = torch.randint(0, 10, (args.batch,), generator=g).to(device)
    methods = {"workbench": ours, "loop": loop, "backpack-sgs": backpack_fn("sgs"),
               "backpack-bg": backpack_fn("bg")}
    res = {}
    for name, fn in methods.items():
        # BackPACK's extend() modifies the module: every method gets its own copy
        res[name] = best_of(lambda: fn(copy.deepcopy(model), X, y), args.repeats, device)
    ref = res["loop"][0]
    D = sum(p.numel() for p in model.parameters())
    print(f"\nMLP {args.d_in}-{args.hidden}-{args.hidden}-10 (D = {D:,}), batch {args.batch}, "
          f"{device}, best of {args.repeats}")
    print(f"{'method':<14}{'seconds':>10}{'examples/s':>13}{'x loop':>9}{'x backpack':>12}"
          f"{'max rel diff':>14}{'allclose':>10}")
    t_bp = res["backpack-sgs"][1]
    for name, (vals, sec) in res.items():
        diff = max(float((v - r).abs().max() / r.abs().max()) for v, r in zip(vals, ref))
        close = all(torch.allclose(v, r, rtol=1e-4, atol=1e-7 * float(r.abs().max()))
                    for v, r in zip(vals, ref))
        print(f"{name:<14}{sec:>10.4f}{args.batch / sec:>13,.0f}{res['loop'][1] / sec:>9.1f}"
              f"{t_bp / sec:>12.2f}{diff:>14.1e}{str(close):>10}")
    print(f"ratios: workbench is {res['loop'][1] / res['workbench'][1]:.1f}x the per-example "
          f"loop and {t_bp / res['workbench'][1]:.2f}x BackPACK SumGradSquared "
          f"(>1 = faster)")
    return res


def bench_lm(args, device):
    import workbench as wb

    model, tok = wb.load_model(args.lm, device=str(device))
    corpus = wb.load_corpus(args.corpus, seed=args.seed)
    blocks = wb.token_blocks(tok, corpus.split("validation"), args.seq_len,
                             n_blocks=args.n_blocks, seed=args.seed).to(device)
    n_tok = blocks.numel()
    cs = args.chunk_size
    print(f"\n{args.lm} on {device}: {args.n_blocks} blocks x {args.seq_len} tokens, "
          f"chunk_size {cs}, all {sum(p.numel() for p in model.parameters()):,} "
          f"parameters, {torch.get_num_threads()} threads, best of {args.lm_repeats}")
    runs = {"forward+backward": lambda: plain_forward_backward(model, blocks, cs)}
    for ft in ("empirical", "true"):
        for gran in ("sequence", "token"):
            runs[f"{ft}/{gran}"] = (lambda ft=ft, gran=gran: diagonal_fisher(
                model, [blocks], fisher_type=ft, granularity=gran, chunk_size=cs))
    if args.with_vmap:  # the pre-hook path for all parameters (slow)
        runs["empirical/vmap"] = lambda: diagonal_fisher(model, [blocks], backend="vmap",
                                                         chunk_size=cs)
    res = {name: best_of(fn, args.lm_repeats, device) for name, fn in runs.items()}
    base = res["forward+backward"][1]
    print(f"{'type/granularity':<20}{'seconds':>10}{'tokens/s':>10}{'x fwd+bwd time':>16}")
    for name, (_, sec) in res.items():
        print(f"{name:<20}{sec:>10.2f}{n_tok / sec:>10.1f}{sec / base:>16.2f}")
    e_seq, e_tok = res["empirical/sequence"][0], res["empirical/token"][0]
    ratio = torch.stack([e_tok[n].sum() / e_seq[n].sum() for n in e_seq])
    print(f"token / sequence granularity (empirical), per-parameter trace ratio: median "
          f"{float(ratio.median()):.3f}, range [{float(ratio.min()):.3f}, "
          f"{float(ratio.max()):.3f}]")
    if args.with_vmap:
        v = res["empirical/vmap"][0]
        diff = max(float((v[n] - e_seq[n]).abs().max() / v[n].abs().max()) for n in v)
        print(f"hooks vs vmap (empirical/sequence): max rel diff {diff:.1e}")
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--d-in", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--lm", default="smollm2-135m", help="model spec, or 'none'")
    ap.add_argument("--corpus", default="wiki-excerpt")
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--n-blocks", type=int, default=2)
    ap.add_argument("--chunk-size", type=int, default=2)
    ap.add_argument("--lm-repeats", type=int, default=2)
    ap.add_argument("--with-vmap", action="store_true",
                    help="also time backend='vmap' on the LM (slow on CPU)")
    ap.add_argument("--skip-mlp", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if not args.skip_mlp:
        bench_mlp(args, device)
    if args.lm != "none":
        bench_lm(args, device)


if __name__ == "__main__":
    main()
