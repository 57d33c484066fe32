"""Sequential calibration: block-by-block offload placement (checked on CPU)."""

import pytest
import torch

from workbench.core.models import load_model, transformer_blocks
from workbench.pruning import sequential
from workbench.pruning.methods import prune


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_one_block_at_a_time_on_the_device(monkeypatch, method):
    """The model 'lives' on an offload device (simulated: blocks report home 'meta');
    with device='cpu' each block must be moved to the device before its passes and back
    after, one at a time, the captured inputs stay on the device, and the masks equal a
    run without offload."""
    data = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(0))
    ref_model, _ = load_model("tiny-llama", device="cpu")
    ref = prune(ref_model, method, 0.5, calibration_tokens=data)

    model, _ = load_model("tiny-llama", device="cpu")
    blocks = list(transformer_blocks(model))
    index = {id(b): i for i, b in enumerate(blocks)}
    on_device: set[int] = set()
    log: list[tuple] = []
    offload = torch.device("meta")

    def fake_place(block, device):
        i = index[id(block)]
        log.append((i, device.type))
        (on_device.add if device.type == "cpu" else on_device.discard)(i)
        assert len(on_device) <= 1, f"blocks {on_device} on the device at once"

    seen = []
    real_forward = sequential._block_forward

    def spy_forward(block, item, device):
        i = index[id(block)]
        assert on_device == {i}, f"block {i} ran while {on_device} were placed"
        assert device.type == "cpu" and item[0].device.type == "cpu"
        seen.append(i)
        return real_forward(block, item, device)

    monkeypatch.setattr(sequential, "_home", lambda block: offload)
    monkeypatch.setattr(sequential, "_place", fake_place)
    monkeypatch.setattr(sequential, "_block_forward", spy_forward)
    res = prune(model, method, 0.5, calibration_tokens=data, device="cpu", batch_size=2)
    n = len(blocks)
    assert log == [x for i in range(n) for x in ((i, "cpu"), (i, "meta"))]
    assert seen == [i for i in range(n) for _ in range(2 * 2)]  # 2 batches x 2 passes
    assert not on_device
    for name in ref.masks:
        assert torch.equal(res.masks[name], ref.masks[name]), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_peak_is_one_block_plus_activations():
    data = torch.randint(0, 256, (4, 64), generator=torch.Generator().manual_seed(0))
    model, _ = load_model("tiny-llama", device="cpu")
    block_bytes = sum(p.numel() * p.element_size()
                      for p in transformer_blocks(model)[0].parameters())
    torch.cuda.reset_peak_memory_stats()
    prune(model, "sparsegpt", 0.5, calibration_tokens=data, device="cuda")
    assert next(model.parameters()).device.type == "cpu"
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    assert torch.cuda.max_memory_allocated() < block_bytes * 4 + 64 * 2**20
    assert torch.cuda.max_memory_allocated() < total or total < 64 * 2**20
