"""Shared fixtures: tiny seeded models and a small byte-level corpus."""

import pytest
import torch

import workbench as wb
from workbench.core.models import load_model
from workbench.pruning.oneshot import oneshot_sweep as _oneshot_sweep


@pytest.fixture(scope="session")
def tiny_llama():
    """A seeded random tiny Llama (2 blocks, hidden 64) and its byte tokenizer."""
    return load_model("tiny-llama", device="cpu", seed=0)


@pytest.fixture(scope="session")
def smollm2():
    """The real pretrained default model (SmolLM2-135M) in float32 on CPU."""
    torch.manual_seed(0)
    return load_model("smollm2-135m", device="cpu")


@pytest.fixture
def one_thread():
    """Run a test on one intra-op thread (tiny problems on a shared 2-core machine only
    lose to thread contention); the previous setting is restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# One small multi-seed one-shot sweep, shared by the sweep tests (tests/pruning) and the
# analysis tests (tests/experiments/analysis).
SIZES = dict(n_calibration=2, calibration_seq_len=16, n_eval=2, eval_seq_len=32, batch_size=2)


@pytest.fixture(scope="module")
def sweep():
    """``(model, tokenizer, corpus, dense weights, rows)``: tiny-llama swept over magnitude
    and Wanda at 50 % and 2:4 with seeds 0 and 1 (run once per test module, on one thread).
    """
    model, tok = wb.load_model("tiny-llama", device="cpu", seed=0)
    dense = {n: p.detach().clone() for n, p in model.named_parameters()}
    corpus = wb.load_corpus("lee")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        df = _oneshot_sweep(model, tok, corpus, methods=["magnitude", "wanda"],
                           sparsities=[0.5, "2:4"], seeds=[0, 1], progress=False, **SIZES)
        yield model, tok, corpus, dense, df
    finally:
        torch.set_num_threads(threads)
