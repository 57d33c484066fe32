"""One rank of the DDP training tests (tests/lottery/test_distributed.py), started by
``elastic_launch`` (torchrun's API) with gloo on CPU: ``python ddp_worker.py OUT B``.

Trains tiny-llama with masks for a few steps at per-rank batch ``B`` and, after every
optimizer step, checks on this rank that the pruned weights are exactly zero and, across
ranks (``all_gather``), that every rank holds bit-identical weights (hence identical
masks). Also checks :func:`workbench.lottery.distributed.broadcast_masks` and that the
ranks of a window sampler draw different windows. Rank 0 saves everything to ``OUT``.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

#: Shared by the test (one process) and the ranks.
TRAIN = dict(steps=4, grad_accum=2, lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95),
             max_grad_norm=1.0, seed=5, progress=False)


def tiny_inputs():
    """``(model, blocks, masks)``: tiny-llama (seed 0), 24 random blocks of 16 tokens,
    random keep-masks of density 0.5 on the projections (seed 0)."""
    from workbench.core.models import load_model

    model, _ = load_model("tiny-llama", device="cpu", seed=0)
    blocks = torch.randint(0, 256, (24, 16), generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(p.shape, generator=gen) < 0.5
             for n, p in model.named_parameters() if n.endswith("proj.weight")}
    return model, blocks, masks


class TinySampler:
    """A window sampler (the shards' interface): random windows of one token stream,
    with replacement; remembers what it drew."""

    def __init__(self, stream: torch.Tensor, seq_len: int):
        self.stream, self.seq_len, self.n_tokens = stream, seq_len, int(stream.numel())
        self.drawn: list[torch.Tensor] = []

    def sample(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        starts = torch.randint(0, self.n_tokens - self.seq_len + 1, (batch_size,),
                               generator=generator)
        out = torch.stack([self.stream[s:s + self.seq_len] for s in starts.tolist()])
        self.drawn.append(out)
        return out


def main(out: str, batch: int) -> None:
    from workbench.lottery import distributed
    from workbench.lottery.train import train_masked

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model, blocks, masks = tiny_inputs()
    named = dict(model.named_parameters())
    checks = []

    def check(step: int) -> None:
        zero = all(bool((named[n].detach()[~m] == 0).all()) for n, m in masks.items())
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        every = [torch.empty_like(flat) for _ in range(world)]
        dist.all_gather(every, flat)
        checks.append(dict(rank=rank, step=step, pruned_zero=zero,
                           same_weights=all(torch.equal(e, every[0]) for e in every)))

    result = train_masked(model, blocks, batch_size=batch, masks=masks, callback=check,
                          **TRAIN)
    # broadcast_masks: rank-dependent masks in, rank 0's out on every rank
    gen = torch.Generator().manual_seed(100 + rank)
    mine = {n: torch.rand(m.shape, generator=gen) < 0.5 for n, m in list(masks.items())[:2]}
    got = distributed.broadcast_masks(mine)
    flat = torch.cat([m.reshape(-1).to(torch.uint8) for m in got.values()])
    every = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(every, flat)
    # window sampler: each rank its own windows
    stream = torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(7))
    sampler = TinySampler(stream, 16)
    model2, _, _ = tiny_inputs()
    train_masked(model2, sampler, steps=2, batch_size=2, progress=False, seed=11)
    windows = torch.cat(sampler.drawn)
    all_windows = [torch.empty_like(windows) for _ in range(world)]
    dist.all_gather(all_windows, windows)
    gathered = [None] * world
    dist.all_gather_object(gathered, checks)
    if rank == 0:
        torch.save(dict(losses=result.losses, tokens=result.tokens,
                        tokens_per_step=result.tokens_per_step, world_size=result.world_size,
                        state={k: v.detach().clone() for k, v in model.state_dict().items()},
                        checks=[c for cs in gathered for c in cs],
                        broadcast_rank0=mine, broadcast_all=[e.clone() for e in every],
                        windows=[w.clone() for w in all_windows]), out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
