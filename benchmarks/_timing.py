"""Time and peak extra memory of one call, and the reference forward + backward; shared by
the benchmarks (run as scripts, so this folder is on ``sys.path``)."""

from __future__ import annotations

import gc
import time
from typing import Any, Callable

import torch
from torch import nn


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def _reset_cpu_peak() -> bool:
    """Reset the kernel's peak-RSS counter (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float, float]:
    """Run ``fn``; return ``(result, seconds, peak extra MiB)``.

    Peak extra memory: CUDA: ``max_memory_allocated`` above the starting allocation;
    CPU (Linux): peak RSS (VmHWM, reset first) above the starting RSS, NaN elsewhere.
    """
    gc.collect()
    cpu_ok = False
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        cpu_ok = _reset_cpu_peak()
        base = _rss_kib("VmRSS:")
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    sec = time.perf_counter() - t0
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = (_rss_kib("VmHWM:") - base) / 1024 if cpu_ok else float("nan")
    return out, sec, peak


def plain_forward_backward(model, blocks, chunk_size):
    """Reference cost: mean token loss forward + backward (parameter gradients), per chunk."""
    for ids in blocks.split(chunk_size):
        logits = model(ids, use_cache=False).logits[:, :-1]
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                           ids[:, 1:].reshape(-1))
        model.zero_grad(set_to_none=True)
        loss.backward()
    model.zero_grad(set_to_none=True)
