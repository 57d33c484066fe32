"""Token shards: preparing them vs plain batched tokenization, and the window sampler vs
drawing from an in-memory tensor. Side by side in one process, printed as ratios.

1. Preparing: :func:`workbench.core.shards.prepare_shards` on a list of documents (the
   embedded corpus, ``--copies`` times) vs the plain batched call ``tokenizer(batch)``
   on the same batches of ``--batch-documents`` documents (what a user would write;
   nothing stored). tokens/s counts the documents' tokens (not the EOS separators).
   ``prepare`` includes everything it does: counting pass, split assignment, the
   tokenizer's hash, writing the files and their SHA-256, the manifest.
2. Sampling: :meth:`WindowSampler.sample` (a fresh ``np.memmap`` per batch, nanoGPT's
   ``get_batch``) vs the same random windows from the whole split held as one
   ``LongTensor`` in memory, and vs today's ``train_masked`` draw (random rows of
   ``LongTensor[n, seq_len]`` blocks). This is the sampler side alone: it says nothing
   of the training step, which it only feeds. For scale, the time of one forward +
   backward of tiny-llama (2 blocks, hidden 64, the smallest model here) on the same batch
   is printed with the sampler's share of it; a real model's step is far longer.

Run: ``OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/bench_prepare.py``
(``--tokenizer tiny-llama`` for the byte tokenizer; the page cache is warm for both
paths: the shard file was just written).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from workbench.core import data, shards


def bench_prepare(tokenizer_spec: str, copies: int, batch_documents: int, repeats: int):
    tok = shards.load_tokenizer(tokenizer_spec)
    docs = [d for d in data.wiki_documents() if d.strip()] * copies
    batches = [docs[i : i + batch_documents] for i in range(0, len(docs), batch_documents)]
    n_chars = sum(map(len, docs))
    plain_s, prep_s, n_text = [], [], None
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            t0 = time.perf_counter()
            n = 0
            for batch in batches:
                n += sum(len(ids) for ids in tok(batch)["input_ids"])
            plain_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            sh = shards.prepare_shards(docs, tok, Path(tmp) / f"s{r}", progress=False,
                                       batch_documents=batch_documents)
            prep_s.append(time.perf_counter() - t0)
            total = sum(sh.n_tokens(s) for s in sh.splits)
            n_text = total - len(docs)
            assert n_text == n, (n_text, n)  # same tokens both ways
    plain, prep = statistics.median(plain_s), statistics.median(prep_s)
    print(f"[prepare] tokenizer {tokenizer_spec!r}: wiki-excerpt x{copies} = {len(docs)} docs, "
          f"{n_chars / 1e6:.1f} M chars, {n_text:,} tokens, batches of {batch_documents}, "
          f"median of {repeats}")
    print(f"  plain tokenizer(batch):  {plain:6.2f} s  {n_text / plain:12,.0f} tokens/s")
    print(f"  prepare_shards:          {prep:6.2f} s  {n_text / prep:12,.0f} tokens/s")
    print(f"  ratio prepare / plain tokens/s: {plain / prep:.2f}x")


def bench_sampler(n_tokens: int, shapes, iters: int):
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rng.integers(0, 49152, n_tokens).astype(np.uint16).tofile(folder / "train.bin")
        rng.integers(0, 49152, 10_000).astype(np.uint16).tofile(folder / "val.bin")
        sh = shards.open_shards(folder, tokenizer_name="tiny-gpt2")
        flat = torch.from_numpy(np.fromfile(folder / "train.bin", dtype=np.uint16)
                                .astype(np.int64))
        print(f"[sampler] split of {n_tokens:,} uint16 tokens ({n_tokens * 2 / 1e6:.0f} MB "
              f"file; in memory as int64: {flat.numel() * 8 / 1e6:.0f} MB), {iters} draws per "
              f"path, sampler side alone")
        for batch, seq_len in shapes:
            sampler = sh.sampler("train", seq_len)
            blocks = flat[: (n_tokens // seq_len) * seq_len].view(-1, seq_len)
            ar = torch.arange(seq_len)

            def memory(g):
                s = torch.randint(0, n_tokens - seq_len + 1, (batch,), generator=g)
                return flat[s[:, None] + ar]

            def today(g):
                return blocks[torch.randint(0, blocks.shape[0], (batch,), generator=g)]

            paths = {"shard sampler": lambda g: sampler.sample(batch, g),
                     "in-memory windows": memory, "in-memory blocks (today)": today}
            g0, g1 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
            assert torch.equal(sampler.sample(batch, g0), memory(g1))  # same windows
            secs = {k: [] for k in paths}
            for _ in range(3):  # interleaved rounds, best of each
                for name, fn in paths.items():
                    g = torch.Generator().manual_seed(1)
                    t0 = time.perf_counter()
                    for _ in range(iters):
                        fn(g)
                    secs[name].append(time.perf_counter() - t0)
            best = {k: min(v) for k, v in secs.items()}
            tps = {k: batch * seq_len * iters / v for k, v in best.items()}
            print(f"  batch {batch} x seq_len {seq_len}:")
            for name in paths:
                print(f"    {name:<26} {best[name] / iters * 1e6:8.1f} us/batch "
                      f"{tps[name]:14,.0f} tokens/s")
            print(f"    ratio sampler / in-memory windows tokens/s: "
                  f"{tps['shard sampler'] / tps['in-memory windows']:.2f}x; "
                  f"/ in-memory blocks: {tps['shard sampler'] / tps['in-memory blocks (today)']:.2f}x")
            if seq_len <= 256:
                _step_context(sampler, batch, best["shard sampler"] / iters,
                              best["in-memory windows"] / iters)


def _step_context(sampler, batch, t_sampler, t_memory):
    from workbench.core.models import load_model

    model, _ = load_model("tiny-llama", device="cpu", seed=0)
    x = sampler.sample(batch, torch.Generator().manual_seed(0)) % 260
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        out = model(x, labels=x)
        out.loss.backward()
        times.append(time.perf_counter() - t0)
    t_step = min(times[1:])
    print(f"    context: one tiny-llama forward+backward on this batch {t_step * 1e3:.1f} ms; "
          f"training tokens/s with the sampler / with in-memory windows = "
          f"{(t_step + t_memory) / (t_step + t_sampler):.3f}x (sampler share "
          f"{t_sampler / (t_step + t_sampler):.2%} of the step)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", default="smollm2-135m")
    ap.add_argument("--copies", type=int, default=2, help="copies of the embedded corpus")
    ap.add_argument("--batch-documents", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sampler-tokens", type=int, default=50_000_000)
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--skip-prepare", action="store_true")
    a = ap.parse_args()
    if not a.skip_prepare:
        bench_prepare(a.tokenizer, a.copies, a.batch_documents, a.repeats)
    bench_sampler(a.sampler_tokens, [(8, 256), (8, 512), (12, 1024)], a.iters)


if __name__ == "__main__":
    main()
