"""Tests for workbench.lottery.train: masked retraining loop."""

from __future__ import annotations

import math

import pytest
import torch

from workbench.core.models import load_model
from workbench.lottery.train import lr_lambda, train_masked


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny():
    model, _ = load_model("tiny-llama", device="cpu", seed=0)
    return model


@pytest.fixture
def blocks():
    return torch.randint(0, 256, (12, 16), generator=torch.Generator().manual_seed(3))


def _random_masks(model, density=0.5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=gen) < density
            for n, p in model.named_parameters() if n.endswith("proj.weight")}


def test_pruned_weights_exactly_zero_after_every_step(tiny, blocks):
    masks = _random_masks(tiny)
    named = dict(tiny.named_parameters())
    seen = []

    def check(step):
        bad = sum(int((named[n].detach()[~m] != 0).sum()) for n, m in masks.items())
        seen.append(bad)

    train_masked(tiny, blocks, steps=4, lr=1e-2, weight_decay=0.1, masks=masks,
                 progress=False, callback=check)
    assert seen == [0, 0, 0, 0]
    # the kept weights did move (the check above is not vacuous)
    fresh, _ = load_model("tiny-llama", device="cpu", seed=0)
    name = next(iter(masks))
    moved = (named[name].detach() != fresh.get_parameter(name).detach())[masks[name]]
    assert moved.float().mean() > 0.9


def test_without_masks_the_same_entries_become_nonzero(tiny, blocks):
    masks = _random_masks(tiny)
    with torch.no_grad():
        for n, m in masks.items():
            tiny.get_parameter(n).mul_(m)
    train_masked(tiny, blocks, steps=2, lr=1e-2, progress=False)
    n, m = next(iter(masks.items()))
    assert (tiny.get_parameter(n).detach()[~m] != 0).float().mean() > 0.9


def test_same_seed_same_losses_different_seed_differs(blocks):
    runs = []
    for seed in (0, 0, 1):
        model, _ = load_model("tiny-llama", device="cpu", seed=0)
        runs.append(train_masked(model, blocks, steps=3, lr=1e-3, seed=seed,
                                 progress=False).losses)
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_first_loss_matches_independent_cross_entropy(tiny, blocks):
    gen = torch.Generator().manual_seed(5)
    idx = torch.randint(0, blocks.shape[0], (1, 2), generator=gen)[0]
    ids = blocks[idx]
    with torch.no_grad():
        logits = tiny(ids).logits
        logp = torch.log_softmax(logits[:, :-1].double(), -1)
        ref = -logp.gather(-1, ids[:, 1:, None]).mean().item()
    res = train_masked(tiny, blocks, steps=1, batch_size=2, seed=5, progress=False)
    assert res.losses[0] == pytest.approx(ref, rel=1e-5)


def test_grad_accumulation_matches_larger_batch(blocks):
    a, _ = load_model("tiny-llama", device="cpu", seed=0)
    b, _ = load_model("tiny-llama", device="cpu", seed=0)
    ra = train_masked(a, blocks, steps=2, batch_size=4, grad_accum=1, lr=1e-3, seed=2,
                      progress=False)
    rb = train_masked(b, blocks, steps=2, batch_size=2, grad_accum=2, lr=1e-3, seed=2,
                      progress=False)
    assert ra.losses == pytest.approx(rb.losses, rel=1e-5)
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-5), n


def test_warmup_cosine_schedule_values(tiny, blocks):
    res = train_masked(tiny, blocks, steps=6, lr=1e-3, lr_schedule="warmup_cosine",
                       warmup_steps=2, progress=False)
    expected = [1e-3 * 0.5, 1e-3 * 1.0]
    expected += [1e-3 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert res.lrs == pytest.approx(expected)
    assert lr_lambda(10, steps=10, schedule="warmup_cosine", warmup_steps=2) == pytest.approx(0)
    assert lr_lambda(3, steps=10, schedule="constant", warmup_steps=0) == 1.0


def test_snapshot_step_is_state_after_k_steps(blocks):
    a, _ = load_model("tiny-llama", device="cpu", seed=0)
    b, _ = load_model("tiny-llama", device="cpu", seed=0)
    ra = train_masked(a, blocks, steps=3, lr=1e-3, snapshot_step=2, progress=False)
    train_masked(b, blocks, steps=2, lr=1e-3, progress=False)
    for k, v in b.state_dict().items():
        assert torch.equal(ra.snapshot[k], v), k
    r0 = train_masked(b, blocks, steps=1, snapshot_step=0, progress=False)
    assert r0.snapshot is not None


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(steps=-1), "steps"),
        (dict(steps=1, lr_schedule="linear"), "lr_schedule"),
        (dict(steps=1, autocast="fp8"), "autocast"),
        (dict(steps=1, grad_accum=0), "grad_accum"),
        (dict(steps=1, lr=0), "lr"),
        (dict(steps=1, snapshot_step=5), "snapshot_step"),
        (dict(steps=1, masks={"nope.weight": torch.ones(2, 2, dtype=torch.bool)}), "masks"),
    ],
)
def test_bad_input_raises(tiny, blocks, kwargs, word):
    with pytest.raises(ValueError, match=word):
        train_masked(tiny, blocks, progress=False, **kwargs)


def test_matches_plain_adamw_loop_and_masked_moments_stay_zero(blocks):
    """Independent reference: a hand-written eager loop with the unfused, single-tensor
    AdamW; the workbench loop (fused AdamW, masks) must give the same weights."""
    a, _ = load_model("tiny-llama", device="cpu", seed=0)
    b, _ = load_model("tiny-llama", device="cpu", seed=0)
    res = train_masked(a, blocks, steps=3, batch_size=2, lr=1e-3, weight_decay=0.01,
                       seed=4, progress=False)
    opt = torch.optim.AdamW(b.parameters(), lr=1e-3, weight_decay=0.01, foreach=False)
    idx = torch.randint(0, blocks.shape[0], (3, 2), generator=torch.Generator().manual_seed(4))
    ref_losses = []
    for step in range(3):
        ids = blocks[idx[step]]
        logits = b(ids).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                 ids[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad()
        ref_losses.append(loss.item())
    assert res.losses == pytest.approx(ref_losses, rel=1e-5)
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6), n


def test_dropout_is_seeded_by_the_round_seed_not_the_process_history():
    # tiny-gpt2 trains with dropout (global RNG): the same seed must give the same losses
    # whatever the global RNG state was (a resumed run starts a fresh process)
    from workbench.core.models import load_model

    blocks = torch.randint(0, 256, (8, 16), generator=torch.Generator().manual_seed(0))
    losses = []
    for state in (1, 2):
        model = load_model("tiny-gpt2", device="cpu", seed=0)[0]
        assert model.config.resid_pdrop > 0
        torch.manual_seed(state)
        losses.append(train_masked(model, blocks, steps=3, lr=1e-3, seed=5,
                                   progress=False).losses)
        after = torch.rand(1)
        torch.manual_seed(state)
        assert torch.equal(after, torch.rand(1))  # the caller's RNG stream is untouched
    assert losses[0] == losses[1]
