"""Paired tests against scipy / statsmodels / hand computations
(workbench.experiments.analysis.stats)."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as ss
from statsmodels.stats.multitest import multipletests

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


def test_below_three_pairs_is_not_testable():
    """n = 2: the means are given, no p-value, and the note says why (issue 20)."""
    res = stats.paired_test([1.0, 2.0], [1.5, 2.7])
    assert res["n"] == 2 and res["mean_diff"] == pytest.approx(0.6)
    assert np.isnan(res["p_t"]) and np.isnan(res["p_wilcoxon"]) and np.isnan(res["d_z"])
    assert "not testable: n=2 pairs < 3" in res["note"]
    assert not np.isnan(stats.paired_test([1.0, 2.0, 3.0], [1.5, 2.7, 3.2])["p_t"])


def test_paired_by_level_pairs_by_seed_within_levels():
    idx = pd.MultiIndex.from_product([[0.2, 0.5], [0, 1, 2, 3]], names=["level", "seed"])
    a = pd.Series(np.arange(8.0) ** 1.5, index=idx)
    b = pd.Series(np.arange(8.0) ** 1.6 + [0, 1, 0, 2, 1, 0, 3, 1], index=idx)
    b = b.drop((0.5, 3))  # seed 3 missing at 0.5: paired on seeds 0-2 there
    b[(0.2, 1)] = np.inf  # a non-finite value drops its pair
    out = stats.paired_by_level(a.sample(frac=1, random_state=0), b, n_resamples=200)
    assert list(out) == [0.2, 0.5]
    for level, seeds in ((0.2, [0, 2, 3]), (0.5, [0, 1, 2])):
        x = a.xs(level).loc[seeds].to_numpy()
        y = b.xs(level).loc[seeds].to_numpy()
        assert out[level]["n"] == 3
        assert out[level]["p_t"] == pytest.approx(ss.ttest_rel(y, x).pvalue)
        assert out[level]["sd_a"] == pytest.approx(np.std(x, ddof=1))
        assert out[level]["sd_b"] == pytest.approx(np.std(y, ddof=1))
    assert list(stats.paired_by_level(a, b, levels=[0.5], n_resamples=200)) == [0.5]


def test_holm_table_is_one_family_of_the_chosen_test():
    t = pd.DataFrame({"p_t": [0.01, 0.04, np.nan, 0.03], "p_wilcoxon": [0.2, 0.1, 0.3, 0.05]})
    out = stats.holm_table(t, test="t")
    assert out["p_holm"].to_numpy()[[0, 1, 3]] == pytest.approx(
        multipletests([0.01, 0.04, 0.03], method="holm")[1])
    assert np.isnan(out["p_holm"][2]) and not out["significant"][2]
    assert (out["test"] == "t").all() and list(t.columns) == ["p_t", "p_wilcoxon"]
    w = stats.holm_table(t, test="wilcoxon")
    assert w["p_holm"].to_numpy() == pytest.approx(
        multipletests(t["p_wilcoxon"], method="holm")[1])
    with pytest.raises(ValueError, match="allowed.*wilcoxon"):
        stats.holm_table(t, test="z")


def _workbench_imports(path):
    """Every module a file imports (top-level and function-local), resolved."""
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_stats_is_a_leaf():
    """stats imports nothing of workbench.experiments (it would close a circle again)."""
    from pathlib import Path

    used = _workbench_imports(Path(stats.__file__))
    assert not [n for n in used if n.startswith("workbench.experiments")], used
    assert not [n for n in used if n.startswith("workbench.") and not
                n.startswith("workbench.core")], used
