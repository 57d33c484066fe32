"""Exact streaming global threshold vs torch.kthvalue; approximate algorithms' contracts."""

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


def test_approximate_algorithms_report_true_counts():
    g = torch.Generator().manual_seed(4)
    scores = {"a": torch.rand(100, 100, generator=g), "b": torch.rand(50, 30, generator=g)}
    allv = torch.cat([t.reshape(-1) for t in scores.values()])
    k = 5000
    for algorithm in ("statistical", "histogram"):
        t = th.global_threshold(scores, k, algorithm=algorithm)
        assert t.n_below == int((allv <= t.value).sum())
        assert abs(t.n_below - k) / allv.numel() < 0.01
    with pytest.raises(ValueError, match="algorithm must be one of"):
        th.global_threshold(scores, k, algorithm="nope")


def test_bad_inputs():
    with pytest.raises(ValueError, match="k must be in"):
        th.exact_kth({"a": torch.zeros(3)}, 4)
    with pytest.raises(ValueError, match="NaN"):
        th.exact_kth({"a": torch.tensor([1.0, math.nan, 2.0])}, 1)


# ----------------------------------------------------------------------------- approximate
# Heavy-tailed scores like the real ones (SmolLM2-135M Wanda scores: max 4.8e4, median
# 0.39; GGUF-dequantised magnitudes: few distinct values), not only uniform ones.
def _heavy(kind: str, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    shapes = [(96, 160), (160, 96), (64, 320)]
    out = {}
    for i, s in enumerate(shapes):
        if kind == "lognormal":
            t = torch.exp(2.5 * torch.randn(s, generator=g))
        elif kind == "pareto":  # tail index 0.7: infinite mean
            t = torch.rand(s, generator=g).clamp_min(1e-12) ** (-1 / 0.7)
        elif kind == "wanda":  # |w| * ||x_j|| with a few massive input channels
            norms = torch.where(torch.rand(s[1], generator=g) < 0.01,
                                torch.tensor(4.8e4), 0.5 + torch.rand(s[1], generator=g))
            t = torch.randn(s, generator=g).abs() * 0.05 * norms
        elif kind == "quantised":  # |q * d|: 4-bit codes times a per-block fp16 scale
            q = torch.randint(-8, 8, s, generator=g).float()
            d = (0.02 * torch.exp(0.5 * torch.randn(s[0], 1, generator=g))).half().float()
            t = (q * d).abs()
        elif kind == "ties":  # very few distinct values, many exact ties
            t = torch.randint(0, 3000, s, generator=g).float() ** 2 / 7
        else:
            raise AssertionError(kind)
        out[f"p{i}"] = t
    return out


HEAVY = ("lognormal", "pareto", "wanda", "quantised", "ties")


@pytest.mark.parametrize("kind", HEAVY)
@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("algorithm", ["histogram", "statistical"])
def test_approximate_counts_within_tolerance_on_heavy_tails(kind, sparsity, algorithm):
    scores = _heavy(kind)
    allv = torch.cat([t.reshape(-1) for t in scores.values()])
    n = allv.numel()
    k = round(sparsity * n)
    t = th.global_threshold(scores, k, algorithm=algorithm)
    # the reported count is the true count of the rule `score <= value`
    assert t.n_below == int((allv <= t.value).sum())
    # ... and within the tolerance (0.1 % of all scores) of the target
    assert abs(t.n_below - k) <= th.DEFAULT_TOLERANCE * n, (t.n_below, k)
    # mask agreement with the exact k lowest (stable sort = ties by position): they
    # differ on exactly the count error
    order = torch.argsort(allv, stable=True)
    exact = torch.zeros(n, dtype=torch.bool)
    exact[order[:k]] = True
    assert int(((allv <= t.value) != exact).sum()) == abs(t.n_below - k)
    # the threshold sits at the k-th smallest (torch.kthvalue) on the side it errs
    ref = float(torch.kthvalue(allv, k).values)
    assert (t.value >= ref) if t.n_below >= k else (t.value < ref)
    assert t.achieved_sparsity == t.n_below / n and t.count_error == t.n_below - k
    assert t.tolerance == th.DEFAULT_TOLERANCE and t.algorithm == algorithm


@pytest.mark.parametrize("algorithm", ["histogram", "statistical"])
def test_unreachable_target_because_of_ties_raises_or_warns(algorithm):
    g = torch.Generator().manual_seed(5)
    scores = {"a": torch.randint(0, 3, (100, 100), generator=g).float()}
    allv = scores["a"].reshape(-1)
    k = int((allv == 0).sum()) + int((allv == 1).sum()) // 2  # mid tie block of 1.0
    with pytest.raises(th.ThresholdToleranceError, match="straddles the target"):
        th.global_threshold(scores, k, algorithm=algorithm)
    with pytest.warns(th.ThresholdToleranceWarning, match="missed the target"):
        t = th.global_threshold(scores, k, algorithm=algorithm, on_miss="warn")
    # the best a threshold can do: one end of the tie block, reported honestly
    assert t.n_below in (int((allv < 1).sum()), int((allv <= 1).sum()))
    assert t.n_below == int((allv <= t.value).sum())
    # a looser tolerance accepts it; the exact algorithm breaks ties by position
    th.global_threshold(scores, k, algorithm=algorithm, tolerance=0.5)
    assert th.exact_kth(scores, k).value == 1.0


def test_statistical_stops_when_the_count_cannot_change():
    # GGUF-like: ~50 distinct values; bisection ends at adjacent floats, far below the cap
    g = torch.Generator().manual_seed(6)
    scores = {"a": (torch.randint(0, 50, (300, 300), generator=g).float() / 7)}
    allv = scores["a"].reshape(-1)
    for k in (1, 4000, 45000, 89999):
        t = th.statistical_threshold(scores, k, tolerance=0.0, on_miss="warn")
        assert t.iterations <= 40
        assert t.n_below == int((allv <= t.value).sum())
        # no threshold does better: the count is an end of the block holding the k-th
        v = torch.kthvalue(allv, k).values
        ends = (int((allv < v).sum()), int((allv <= v).sum()))
        assert t.n_below in ends and abs(t.n_below - k) == min(abs(e - k) for e in ends)


def test_histogram_refines_in_passes_and_handles_signs_and_infinities():
    g = torch.Generator().manual_seed(7)
    signed = {"a": torch.randn(200, 200, generator=g) * torch.exp(3 * torch.randn(200, 200,
                                                                                   generator=g))}
    signed["a"][0, :3] = float("-inf")
    signed["a"][1, :3] = float("inf")
    allv = signed["a"].reshape(-1)
    for k in (3, 4, 20000, 39996, 39997, 40000):  # 3 x -inf and 3 x +inf: reachable k
        t = th.histogram_threshold(signed, k, tolerance=0.0)
        assert t.n_below == int((allv <= t.value).sum()) == k
    with pytest.warns(th.ThresholdToleranceWarning):  # inside the -inf tie block
        t = th.histogram_threshold(signed, 1, tolerance=0.0, on_miss="warn")
    assert t.n_below == int((allv <= t.value).sum()) == 3
    coarse = th.histogram_threshold(signed, 20000, bins=16, tolerance=0.0, on_miss="warn")
    assert coarse.iterations > 2 and coarse.n_below == 20000  # refinement passes
    with pytest.raises(th.ThresholdToleranceError):
        th.histogram_threshold(signed, 20000, bins=16, max_passes=1)


def test_select_masks_with_approximate_algorithms_and_bad_choices():
    from workbench.pruning.masks import select_masks

    scores = _heavy("wanda", 3)
    n = sum(t.numel() for t in scores.values())
    exact = select_masks(scores, 0.5, scope="global")
    for algorithm in ("histogram", "statistical"):
        masks = select_masks(scores, 0.5, scope="global", threshold_algorithm=algorithm)
        pruned = sum(int((~m).sum()) for m in masks.values())
        assert abs(pruned - n // 2) <= th.DEFAULT_TOLERANCE * n
        differ = sum(int((m != exact[k]).sum()) for k, m in masks.items())
        assert differ <= th.DEFAULT_TOLERANCE * n
    bf = {k: v.bfloat16() for k, v in scores.items()}  # compared in float32, not bf16
    masks = select_masks(bf, 0.3, scope="global", threshold_algorithm="histogram")
    t = th.histogram_threshold(bf, round(0.3 * n))
    assert sum(int((~m).sum()) for m in masks.values()) == t.n_below
    with pytest.raises(ValueError, match="threshold_algorithm must be one of"):
        select_masks(scores, 0.5, scope="global", threshold_algorithm="hist")
    with pytest.raises(ValueError, match="needs scope='global'"):
        select_masks(scores, 0.5, scope="layer", threshold_algorithm="histogram")
    with pytest.raises(ValueError, match="on_miss"):
        th.histogram_threshold(scores, 3, on_miss="ignore")
    with pytest.raises(ValueError, match="tolerance"):
        th.statistical_threshold(scores, 3, tolerance=-1.0)
    with pytest.raises(ValueError, match="k must be in"):
        th.histogram_threshold(scores, n + 1)


# ----------------------------------------------------------------------------- via prune
def test_prune_selects_the_threshold_algorithm_for_every_global_method():
    from workbench.core.models import load_model
    from workbench.pruning.methods import prune
    from workbench.pruning.scores import importance

    data = torch.randint(0, 256, (4, 24), generator=torch.Generator().manual_seed(0))
    model, _ = load_model("tiny-llama", device="cpu")
    dense = {n: p.detach().clone() for n, p in model.named_parameters()}

    def fresh():
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(dense[n])
        return model

    mag = importance(fresh(), "magnitude")
    n = sum(t.numel() for t in mag.values())
    for method, kw in (("magnitude", {}), ("wanda", {"calibration_tokens": data}),
                       ("taylor", {"calibration_tokens": data}),
                       ("gradprobe", {"calibration_tokens": data})):
        exact = prune(fresh(), method, 0.5, scope="global", **kw)
        for tm in ("histogram", "statistical"):
            res = prune(fresh(), method, 0.5, scope="global", threshold_algorithm=tm, **kw)
            assert res.info["threshold_algorithm"] == tm
            if method != "gradprobe":  # gradprobe restores some candidates by design
                assert abs(res.info["achieved_sparsity"] - 0.5) <= th.DEFAULT_TOLERANCE
            differ = sum(int((m != exact.masks[k]).sum()) for k, m in res.masks.items())
            assert differ <= 2 * th.DEFAULT_TOLERANCE * n + (n // 100 if method == "gradprobe"
                                                             else 0), (method, tm, differ)
    # the histogram threshold of the magnitude scores is what prune applied
    res = prune(fresh(), "magnitude", 0.3, scope="global", threshold_algorithm="histogram")
    t = th.histogram_threshold(mag, round(0.3 * n))
    assert sum(int((~m).sum()) for m in res.masks.values()) == t.n_below
    # validated before any work, with the allowed values named
    with pytest.raises(ValueError, match=r"threshold_algorithm must be one of \('exact'"):
        prune(fresh(), "magnitude", 0.5, scope="global", threshold_algorithm="approx")
    with pytest.raises(ValueError, match="needs scope='global'"):
        prune(fresh(), "magnitude", 0.5, threshold_algorithm="histogram")  # default: layer
    with pytest.raises(ValueError, match="needs scope='global'"):
        prune(fresh(), "wanda", 0.5, threshold_algorithm="statistical", calibration_tokens=data)
    assert all(torch.equal(p, dense[n]) for n, p in model.named_parameters())


def test_method_keywords_are_now_algorithm():
    from workbench.core.models import load_model
    from workbench.pruning.gradient_probe import gradprobe
    from workbench.pruning.masks import select_masks
    from workbench.pruning.methods import prune

    scores = {"w": torch.rand(64)}
    with pytest.raises(TypeError, match="'method' is now 'algorithm'"):
        th.global_threshold(scores, 3, method="exact")
    assert th.global_threshold(scores, 3, algorithm="exact").algorithm == "exact"
    assert th.THRESHOLD_ALGORITHMS == ("exact", "statistical", "histogram")
    note = "'threshold_method' is now 'threshold_algorithm'"
    with pytest.raises(TypeError, match=note):
        select_masks(scores, 0.5, scope="global", threshold_method="exact")
    model, _ = load_model("tiny-llama", device="cpu")
    with pytest.raises(TypeError, match=note):
        prune(model, "magnitude", 0.5, scope="global", threshold_method="exact")
    with pytest.raises(TypeError, match=note):
        gradprobe(model, 0.5, calibration_tokens=torch.zeros(1, 4, dtype=torch.long),
                  threshold_method="exact")
