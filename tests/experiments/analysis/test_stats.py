"""Paired tests against scipy / statsmodels / hand computations (workbench.experiments.analysis.stats)."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as ss
from statsmodels.stats.multitest import multipletests

from tests.fixtures.runs import make_runs
from workbench.experiments.analysis import aggregate
from workbench.experiments.analysis import stats

A = np.array([10.0, 12.0, 9.5, 11.0, 10.5, 13.0, 12.5])
B = np.array([11.0, 12.5, 11.0, 11.2, 12.5, 13.1, 14.5])


def test_paired_test_agrees_with_scipy():
    r = stats.paired_test(A, B, n_resamples=2000, random_state=3)
    t = ss.ttest_rel(B, A)
    w = ss.wilcoxon(B - A)
    d = B - A
    assert r["n"] == 7
    assert r["t"] == pytest.approx(t.statistic) and r["p_t"] == pytest.approx(t.pvalue)
    assert r["w"] == pytest.approx(w.statistic) and r["p_wilcoxon"] == pytest.approx(w.pvalue)
    assert r["mean_diff"] == pytest.approx(d.mean())
    assert r["d_z"] == pytest.approx(d.mean() / d.std(ddof=1))
    boot = ss.bootstrap((d,), np.mean, n_resamples=2000, method="percentile",
                        rng=np.random.default_rng(3))
    assert r["ci_low"] == pytest.approx(boot.confidence_interval.low)
    assert r["ci_high"] == pytest.approx(boot.confidence_interval.high)
    assert r["ci_low"] < d.mean() < r["ci_high"]
    assert r["wilcoxon_can_reach"] and r["note"] == ""


@pytest.mark.parametrize("n", [3, 4, 5, 6, 7])
def test_wilcoxon_floor_matches_the_exact_test(n):
    # All differences positive: the most extreme outcome, i.e. the smallest exact p.
    d = np.arange(1.0, n + 1)
    exact = ss.wilcoxon(d, method="exact").pvalue
    assert stats.wilcoxon_min_p(n) == pytest.approx(exact)
    r = stats.paired_test(np.zeros(n), d)
    assert r["wilcoxon_can_reach"] == (n > 5)
    assert ("cannot reach" in r["note"]) == (n <= 5)


def test_degenerate_differences():
    r = stats.paired_test([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert math.isnan(r["p_t"]) and math.isnan(r["p_wilcoxon"]) and "zero" in r["note"]
    r = stats.paired_test([1.0, 2.0, 3.0], [2.0, 3.0, 4.0])
    assert r["d_z"] == math.inf and r["ci_low"] == r["ci_high"] == 1.0
    r = stats.paired_test([1.0], [2.0])
    assert r["n"] == 1 and math.isnan(r["p_t"])
    with pytest.raises(ValueError, match="same length"):
        stats.paired_test([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="finite"):
        stats.paired_test([1.0, np.nan], [1.0, 2.0])


def test_holm_matches_hand_computation():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone max: 0.06
    reject, adj = stats.holm(p, alpha=0.05)
    assert adj == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert list(reject) == [True, False, False, True]
    ref = multipletests(p, method="holm")
    assert adj == pytest.approx(ref[1])
    reject, adj = stats.holm([0.01, np.nan, 0.02])
    assert adj[0] == pytest.approx(0.02) and np.isnan(adj[1]) and not reject[1]


@pytest.fixture
def runs(tmp_path):
    return aggregate.load_runs(make_runs(tmp_path / "runs"))


def test_compare_factor_pairs_one_factor_at_a_time(runs):
    t = stats.compare_factor(runs, "init", "val_ppl")
    # only C2 vs B2 differ in init alone (A2 also differs in steps_per_round)
    assert set(zip(t.experiment_a, t.experiment_b)) == {("B2", "C2")}
    assert list(t.level) == pytest.approx([0.2, 0.36, 0.488])  # sparsity 0 excluded
    for _, row in t.iterrows():
        a = runs[(runs.experiment == "B2") & (runs.target_sparsity.round(3) == row.level)]
        b = runs[(runs.experiment == "C2") & (runs.target_sparsity.round(3) == row.level)]
        a, b = a.sort_values("seed").val_ppl.to_numpy(), b.sort_values("seed").val_ppl.to_numpy()
        assert row.p_t == pytest.approx(ss.ttest_rel(b, a).pvalue)
        assert row.mean_diff == pytest.approx((b - a).mean())
    assert t.p_holm.to_numpy() == pytest.approx(multipletests(t.p_t, method="holm")[1])
    assert t.significant.all()  # effect 40 * sparsity vs noise 0.3
    assert (t.n == 3).all() and t.note.str.contains("cannot reach").all()
    budget = stats.compare_factor(runs, "steps_per_round", "val_ppl", baseline=1)
    assert set(zip(budget.experiment_a, budget.experiment_b)) == {("A2", "B2")}
    text = stats.describe(pd.concat([t, budget], ignore_index=True))
    assert "C2" in text and "significant" in text and "Wilcoxon" in text


def test_compare_factor_matches_by_first_arrival_and_round(runs):
    df = runs.copy()
    # B2 reaches 0.2 in one round; a one-shot run stays at 0.2 and trains on
    one = df[df.experiment == "B2"].copy()
    one["experiment"], one["schedule"] = "I1", "oneshot"
    one["target_sparsity"] = np.where(one["round"] > 0, 0.2, 0.0)
    one["val_ppl"] = one["val_ppl"] + one["round"]
    df = pd.concat([df, one], ignore_index=True)
    # first arrival at 0.2: round 1 of both, the same procedure -> never compared
    assert stats.compare_factor(df, "schedule", "val_ppl").empty
    # last round at 0.2: I1 trained on for 3 rounds without rewinding -> compared
    last = stats.compare_factor(df, "schedule", "val_ppl", take="last")
    assert list(last.level) == [0.2] and last.experiment_b.iloc[0] == "I1"
    b2 = df[(df.experiment == "B2") & (df["round"] == 1)].sort_values("seed").val_ppl
    i1 = df[(df.experiment == "I1") & (df["round"] == 3)].sort_values("seed").val_ppl
    assert last.mean_diff.iloc[0] == pytest.approx((i1.to_numpy() - b2.to_numpy()).mean())
    by_round = stats.compare_factor(runs, "init", "val_ppl", at="round")
    assert list(by_round.level) == [0, 1, 2, 3]


def test_compare_factor_bad_arguments(runs):
    with pytest.raises(ValueError, match="init"):
        stats.compare_factor(runs, "colour", "val_ppl")
    with pytest.raises(ValueError, match="val_ppl"):
        stats.compare_factor(runs, "init", "accuracy")
    with pytest.raises(ValueError, match="wilcoxon"):
        stats.compare_factor(runs, "init", "val_ppl", test="mann-whitney")
    with pytest.raises(ValueError, match="round"):
        stats.compare_factor(runs, "init", "val_ppl", at="step")
    assert stats.compare_factor(runs, "scope", "val_ppl").empty


def test_below_three_pairs_is_not_testable():
    """n = 2: the means are given, no p-value, and the note says why (issue 20)."""
    res = stats.paired_test([1.0, 2.0], [1.5, 2.7])
    assert res["n"] == 2 and res["mean_diff"] == pytest.approx(0.6)
    assert np.isnan(res["p_t"]) and np.isnan(res["p_wilcoxon"]) and np.isnan(res["d_z"])
    assert "not testable: n=2 pairs < 3" in res["note"]
    assert not np.isnan(stats.paired_test([1.0, 2.0, 3.0], [1.5, 2.7, 3.2])["p_t"])
