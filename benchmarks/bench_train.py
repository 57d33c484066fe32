"""Retraining throughput: workbench's masked loop vs a plain eager transformers loop.

Both loops train the default model's architecture (SmolLM2-135M, random init so no
download is needed) with AdamW on the same random token blocks, side by side in one
process, and report tokens/s and their ratio. The workbench loop also enforces a 50%
global-magnitude mask after every step (the plain loop has no mask). Timings never
assert anything.

CPU default (a few minutes on 2 cores): batch 2 x 64 tokens, 3 timed steps.
GPU scale (the issue's setting, bf16 autocast + torch.compile)::

    python benchmarks/bench_train.py --batch 16 --seq 512 --steps 30 --warmup 5 --compile

Reference (H100, plain transformers, from the issue): eager 63k tok/s at 16 x 512.

DDP (``--ddp``): the masked loop on 2 ranks (torch.distributed, DDP; gloo on CPU, NCCL on
CUDA; started with torchrun's ``elastic_launch``) vs 1 process, same per-rank batch, so
2 ranks train twice the tokens per step; printed as tokens/s (all ranks) and the ratio.
On CPU the 1-process row uses all cores and each rank half of them::

    python benchmarks/bench_train.py --ddp                  # CPU, gloo
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from workbench.pruning.scores import importance
from workbench.pruning.masks import select_masks
from workbench.core.models import load_model
from workbench.lottery.train import train_masked


def plain_loop(model, blocks, *, steps: int, batch_size: int, lr: float, seed: int,
               forward=None) -> float:
    """A textbook eager loop (default AdamW, HF loss); returns tokens/s."""
    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    forward = forward or model
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        ids = blocks[torch.randint(0, blocks.shape[0], (batch_size,), generator=gen)].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = forward(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # the usual per-step logging sync
    if cuda:
        torch.cuda.synchronize()
    return steps * batch_size * blocks.shape[1] / (time.perf_counter() - t0)


def _ddp_worker(out: str, model_name: str, batch: int, seq: int, steps: int,
                warmup: int, sparsity: float) -> None:
    """One rank of the ``--ddp`` row (rank 0 writes its tokens/s to ``out``)."""
    import torch.distributed as dist

    from workbench.lottery import distributed

    distributed.init_from_env("auto")
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
        else torch.device("cpu")
    res = _masked(model_name, device, batch, seq, steps, warmup, sparsity)
    if dist.get_rank() == 0:
        with open(out, "w") as fh:
            json.dump(dict(tokens_per_s=res.tokens_per_s, world_size=res.world_size), fh)
    distributed.shutdown()


def _masked(model_name, device, batch, seq, steps, warmup, sparsity):
    blocks = torch.randint(0, 49152 if "smollm2" in model_name else 256, (64, seq),
                           generator=torch.Generator().manual_seed(0))
    model, _ = load_model(model_name, device=device, seed=0)
    masks = select_masks(importance(model, "magnitude"), sparsity)
    kw = dict(batch_size=batch, lr=1e-5, masks=masks, progress=False)
    train_masked(model, blocks, steps=max(1, warmup), seed=1, **kw)
    return train_masked(model, blocks, steps=steps, seed=2, **kw)


def ddp_main(args) -> dict:
    """The ``--ddp`` rows: 1 process vs 2 ranks of the masked loop."""
    import os
    import sys
    import tempfile

    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    cores = os.cpu_count() or 1
    threads = torch.get_num_threads()
    torch.set_num_threads(cores)
    one = _masked(args.model, device, args.batch, args.seq, args.steps, args.warmup,
                  args.sparsity).tokens_per_s
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rank0.json")
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // 2)))
        lc = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=2, run_id="bench",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0)
        elastic_launch(lc, entrypoint=sys.executable)(
            __file__, "--ddp-worker", out, "--model", args.model, "--batch", str(args.batch),
            "--seq", str(args.seq), "--steps", str(args.steps), "--warmup", str(args.warmup),
            "--sparsity", str(args.sparsity))
        two = json.load(open(out))["tokens_per_s"]
    print(f"DDP ({'nccl' if cuda else 'gloo'}), model {args.model}, per-rank batch "
          f"{args.batch} x {args.seq} tokens, {args.steps} timed steps, {cores} cores")
    print(f"{'loop':<36}{'tokens/s':>12}{'ratio':>8}")
    print(f"{'train_masked, 1 process':<36}{one:>12.0f}{1.0:>8.2f}")
    print(f"{'train_masked, DDP 2 ranks':<36}{two:>12.0f}{two / one:>8.2f}")
    res = dict(device=str(device), model=args.model, batch=args.batch, seq=args.seq,
               steps=args.steps, ddp_tokens_per_s={"1": one, "2": two}, ddp_ratio=two / one)
    print(json.dumps(res))
    return res


def main(argv=None) -> dict:
    """Run both loops and print a small table; returns the numbers."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="random-smollm2-135m")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile both loops (adds a plain + compile row)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--ddp", action="store_true",
                    help="only the DDP rows: masked loop on 2 ranks vs 1 process")
    ap.add_argument("--ddp-worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.ddp_worker:
        _ddp_worker(args.ddp_worker, args.model, args.batch, args.seq, args.steps,
                    args.warmup, args.sparsity)
        return {}
    if args.ddp:
        return ddp_main(args)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    blocks = torch.randint(0, 49152 if "smollm2" in args.model else 256,
                           (64, args.seq), generator=torch.Generator().manual_seed(0))
    rows = {}

    model, _ = load_model(args.model, device=device, seed=0)
    plain_loop(model, blocks, steps=args.warmup, batch_size=args.batch, lr=1e-5, seed=1)
    rows["plain eager transformers"] = plain_loop(model, blocks, steps=args.steps,
                                                  batch_size=args.batch, lr=1e-5, seed=2)
    if args.compile:
        compiled = torch.compile(model)
        plain_loop(model, blocks, steps=max(1, args.warmup), batch_size=args.batch, lr=1e-5,
                   seed=1, forward=compiled)
        rows["plain transformers + compile"] = plain_loop(
            model, blocks, steps=args.steps, batch_size=args.batch, lr=1e-5, seed=2,
            forward=compiled)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()

    model, _ = load_model(args.model, device=device, seed=0)
    masks = select_masks(importance(model, "magnitude"), args.sparsity)
    kw = dict(batch_size=args.batch, lr=1e-5, masks=masks, compile=args.compile, progress=False)
    train_masked(model, blocks, steps=max(1, args.warmup), seed=1, **kw)
    res = train_masked(model, blocks, steps=args.steps, seed=2, **kw)
    name = "workbench train_masked" + (" + compile" if args.compile else "")
    rows[name] = res.tokens_per_s
    pruned_nonzero = sum(int((model.get_parameter(n).detach()[~m] != 0).sum())
                         for n, m in masks.items())

    base = rows["plain eager transformers"]
    print(f"device {device}, model {args.model}, batch {args.batch} x {args.seq} tokens, "
          f"{args.steps} timed steps after {args.warmup} warmup, mask sparsity "
          f"{args.sparsity} (pruned weights nonzero after training: {pruned_nonzero})")
    print(f"{'loop':<36}{'tokens/s':>12}{'ratio':>8}")
    for k, v in rows.items():
        print(f"{k:<36}{v:>12.0f}{v / base:>8.2f}")
    out = dict(device=str(device), model=args.model, batch=args.batch, seq=args.seq,
               steps=args.steps, compile=args.compile, tokens_per_s=rows,
               ratio=rows[name] / base, pruned_nonzero=pruned_nonzero)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
