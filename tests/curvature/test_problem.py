"""The shared plumbing of _problem: one label-sampling rule for diagonal, group and K-FAC."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workbench.curvature import KFAC, collect_group_fisher, diagonal_fisher
from workbench.curvature import _problem as P


def _spy_labels(monkeypatch):
    """Record every call of the one rule: ``{global example index: labels [S, T]}``."""
    seen: dict[int, torch.Tensor] = {}
    rule = P.sample_labels

    def spy(loss_kind, outputs, n_examples, n_samples, seed, first):
        Y = rule(loss_kind, outputs, n_examples, n_samples, seed, first)
        for i in range(n_examples):
            assert first + i not in seen, "an example drew its labels twice"
            seen[first + i] = Y[:, i].clone()
        return Y

    monkeypatch.setattr(P, "sample_labels", spy)
    return seen


def _reference_labels(model, batches, n_samples, seed):
    """The documented rule, written out independently: example ``i`` (counted over all
    batches) samples from softmax of its own logits with a generator seeded
    ``seed * 1_000_003 + i``."""
    out, i = {}, 0
    for batch in batches:
        with torch.no_grad():
            logits = model(batch).logits[:, :-1]  # position s predicts token s + 1
        for row in logits:
            gen = torch.Generator().manual_seed(seed * 1_000_003 + i)
            p = row.double().softmax(-1)
            out[i] = torch.multinomial(p, n_samples, replacement=True, generator=gen).T
            i += 1
    return out


def test_diagonal_group_and_kfac_draw_the_same_true_fisher_labels(tiny_llama, monkeypatch):
    """Same seed -> the same sampled labels per example in all three paths, whatever the
    batching and chunking, and equal to the documented rule written out by hand."""
    model = tiny_llama[0]
    g = torch.Generator().manual_seed(2)
    batches = [torch.randint(0, 256, (3, 6), generator=g), torch.randint(0, 256, (2, 6), generator=g)]
    ref = _reference_labels(model, batches, n_samples=2, seed=11)
    linear = ["model.layers.0.mlp.up_proj"]
    drawn = {}
    for name, run in {
        "diagonal": lambda: diagonal_fisher(model, batches, fisher_type="true", n_samples=2,
                                            seed=11, chunk_size=2,
                                            params=[f"{linear[0]}.weight"]),
        "diagonal/vmap": lambda: diagonal_fisher(model, batches, fisher_type="true",
                                                 n_samples=2, seed=11, chunk_size=1,
                                                 backend="loop",
                                                 params=["model.norm.weight"]),
        "group": lambda: collect_group_fisher(model, batches, fisher_type="true", n_samples=2,
                                              seed=11, chunk_size=3, modules=linear),
        "kfac": lambda: KFAC(model, batches, fisher_type="true", n_samples=2, seed=11,
                             modules=linear),
    }.items():
        with monkeypatch.context() as m:
            drawn[name] = _spy_labels(m)
            run()
    for name, labels in drawn.items():
        assert sorted(labels) == sorted(ref), name  # every example drew, through the rule
        for i, y in ref.items():
            assert torch.equal(labels[i].reshape(y.shape), y), (name, i)


def test_one_rule_gives_equal_numbers_without_looking_at_labels():
    """A behavioural check that fails when one path samples differently: for a linear
    classifier ``z = W a`` on one-hot inputs ``a``, the K-FAC output factor's diagonal
    ``G_oo = 1/(N S) sum_{s,n} r_{s,n,o}^2`` (``r`` = output residual at the sampled label)
    equals the row sums of the diagonal Fisher ``sum_j F_oj`` and the group Fisher's
    channel values, because ``||a_n|| = 1``. With other labels in one path the three
    differ (Monte Carlo noise of 3 draws)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4, bias=False)).double()
    g = torch.Generator().manual_seed(3)
    X = torch.eye(6, dtype=torch.float64)[torch.randint(0, 6, (9,), generator=g)]
    y = torch.randint(0, 4, (9,), generator=g)
    batches = [(X[:4], y[:4]), (X[4:], y[4:])]
    kw = dict(fisher_type="true", n_samples=3, seed=7)
    G = KFAC(model, batches, **kw).factors["0"][1]
    diag = diagonal_fisher(model, batches, chunk_size=3, **kw)["0.weight"]
    group = collect_group_fisher(model, batches, chunk_size=2, heads=None, **kw)
    torch.testing.assert_close(diag.double().sum(1), G.diagonal(), rtol=1e-6, atol=0)
    torch.testing.assert_close(group["0.weight|channel"].double(), G.diagonal(), rtol=1e-6,
                               atol=0)
    other = KFAC(model, batches, fisher_type="true", n_samples=3, seed=8).factors["0"][1]
    assert not torch.allclose(other.diagonal(), G.diagonal(), rtol=1e-3)  # the test can fail


def test_labels_do_not_depend_on_chunking_and_differ_across_seeds():
    logits = torch.randn(6 * 4, 5, generator=torch.Generator().manual_seed(0))
    whole = P.sample_labels("ce", logits, 6, 3, seed=1, first=10)
    parts = torch.cat([P.sample_labels("ce", logits[:8], 2, 3, seed=1, first=10),
                       P.sample_labels("ce", logits[8:], 4, 3, seed=1, first=12)], 1)
    assert whole.shape == (3, 6, 4) and torch.equal(whole, parts)
    assert not torch.equal(whole, P.sample_labels("ce", logits, 6, 3, seed=2, first=10))
    assert P.label_seed(1, 10) == 1 * P.LABEL_SEED_STRIDE + 10
    mse = P.sample_labels("mse", logits[:6], 6, 2, seed=0, first=0)  # one term per example
    assert mse.shape == (2, 6, 5)


@pytest.mark.parametrize("batch", [torch.arange(12).reshape(3, 4),
                                   {"input_ids": torch.arange(12).reshape(3, 4),
                                    "attention_mask": torch.ones(3, 4, dtype=torch.long)},
                                   (torch.randn(3, 5), torch.arange(3))])
def test_per_example_slicing(batch):
    assert P.n_examples(batch) == 3
    rows = P.example_rows(batch, slice(1, 3))
    assert P.n_examples(rows) == 2
    one = P.add_example_dim(P.example_rows(batch, 2))
    assert P.n_examples(one) == 1
    first = P.example_rows(batch, slice(2, 3))
    flat = lambda b: b if isinstance(b, torch.Tensor) else (
        b["input_ids"] if isinstance(b, dict) else b[0])
    assert torch.equal(flat(one), flat(first))
    P.check_example_batch(batch)
    with pytest.raises(ValueError, match="mismatched shapes"):
        P.check_example_batch((torch.randn(3, 5), torch.arange(2)))
