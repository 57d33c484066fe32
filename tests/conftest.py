"""Shared fixtures: tiny seeded models and a small byte-level corpus."""

import pytest
import torch

from workbench.core.models import load_model


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
