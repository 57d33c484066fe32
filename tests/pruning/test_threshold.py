"""Exact streaming global threshold vs torch.kthvalue; approximate methods' contracts."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.pruning import threshold as th


def _scores(seed, shapes, levels):
    g = torch.Generator().manual_seed(seed)
    # few distinct values -> many ties; mix signs
    return {f"p{i}": (torch.randint(-levels, levels + 1, s, generator=g).float() / 3)
            for i, s in enumerate(shapes)}


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000),
       shapes=st.lists(st.tuples(st.integers(1, 40), st.integers(1, 40)), min_size=1, max_size=5),
       levels=st.integers(0, 6), frac=st.floats(0.0, 1.0))
def test_exact_kth_equals_kthvalue_with_ties(seed, shapes, levels, frac):
    scores = _scores(seed, shapes, levels)
    allv = torch.cat([t.reshape(-1) for t in scores.values()])
    k = min(max(1, round(frac * allv.numel())), allv.numel())
    got = th.exact_kth(scores, k)
    ref = torch.kthvalue(allv, k).values.item()
    assert got.value == ref
    assert got.n_below == int((allv < ref).sum())
    # the radix path (fallback) agrees too
    assert th._radix_kth(scores, k) == (ref, got.n_below)


def test_streaming_callable_equals_mapping_and_handles_inf_and_negative_zero():
    g = torch.Generator().manual_seed(1)
    scores = {f"p{i}": torch.randn(50, 70, generator=g) for i in range(4)}
    scores["p0"][0, :5] = float("inf")
    scores["p1"][0, :5] = -0.0
    scores["p2"][0, :5] = 0.0
    allv = torch.cat([t.reshape(-1) for t in scores.values()])
    for k in (1, 7, 7000, allv.numel() - 3, allv.numel()):
        a = th.exact_kth(scores, k)
        b = th.exact_kth(lambda: iter(scores.values()), k)
        assert (a.value, a.n_below) == (b.value, b.n_below)
        assert a.value == torch.kthvalue(allv, k).values.item()


def test_bracket_miss_falls_back_to_exact_radix(monkeypatch):
    monkeypatch.setattr(th, "_BRACKET_BUDGET", 3)  # force the fallback
    scores = _scores(3, [(30, 30), (10, 5)], 4)
    allv = torch.cat([t.reshape(-1) for t in scores.values()])
    got = th.exact_kth(scores, 400)
    assert got.value == torch.kthvalue(allv, 400).values.item()
    assert got.iterations == 4


def test_bf16_scores():
    g = torch.Generator().manual_seed(2)
    scores = {"a": torch.randn(64, 64, generator=g).bfloat16(),
              "b": torch.randn(32, 8, generator=g).bfloat16()}
    allv = torch.cat([t.reshape(-1).float() for t in scores.values()])
    got = th.exact_kth(scores, 2000)
    assert got.value == torch.kthvalue(allv, 2000).values.item()


def test_approximate_methods_report_true_counts():
    g = torch.Generator().manual_seed(4)
    scores = {"a": torch.rand(100, 100, generator=g), "b": torch.rand(50, 30, generator=g)}
    allv = torch.cat([t.reshape(-1) for t in scores.values()])
    k = 5000
    for method in ("statistical", "histogram"):
        t = th.global_threshold(scores, k, method=method)
        assert t.n_below == int((allv <= t.value).sum())
        assert abs(t.n_below - k) / allv.numel() < 0.01
    with pytest.raises(ValueError, match="method must be one of"):
        th.global_threshold(scores, k, method="nope")


def test_bad_inputs():
    with pytest.raises(ValueError, match="k must be in"):
        th.exact_kth({"a": torch.zeros(3)}, 4)
    with pytest.raises(ValueError, match="NaN"):
        th.exact_kth({"a": torch.tensor([1.0, math.nan, 2.0])}, 1)
