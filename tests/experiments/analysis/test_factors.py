"""One-factor pairs of grid runs and one-shot comparisons, on one engine, against scipy,
statsmodels and hand computations (workbench.experiments.analysis.factors)."""

import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats as ss
from statsmodels.stats.multitest import multipletests

from tests.fixtures.runs import make_runs
from workbench.experiments.analysis import aggregate, factors
from workbench.experiments.analysis.oneshot_analysis import findings


@pytest.fixture
def runs(tmp_path):
    return aggregate.load_runs(make_runs(tmp_path / "runs"))


def test_compare_factor_pairs_one_factor_at_a_time(runs):
    t = factors.compare_factor(runs, "init", "val_ppl")
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
    budget = factors.compare_factor(runs, "steps_per_round", "val_ppl", baseline=1)
    assert set(zip(budget.experiment_a, budget.experiment_b)) == {("A2", "B2")}
    text = factors.describe(pd.concat([t, budget], ignore_index=True))
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
    assert factors.compare_factor(df, "schedule", "val_ppl").empty
    # last round at 0.2: I1 trained on for 3 rounds without rewinding -> compared
    last = factors.compare_factor(df, "schedule", "val_ppl", take="last")
    assert list(last.level) == [0.2] and last.experiment_b.iloc[0] == "I1"
    b2 = df[(df.experiment == "B2") & (df["round"] == 1)].sort_values("seed").val_ppl
    i1 = df[(df.experiment == "I1") & (df["round"] == 3)].sort_values("seed").val_ppl
    assert last.mean_diff.iloc[0] == pytest.approx((i1.to_numpy() - b2.to_numpy()).mean())
    by_round = factors.compare_factor(runs, "init", "val_ppl", at="round")
    assert list(by_round.level) == [0, 1, 2, 3]


def test_compare_factor_bad_arguments(runs):
    with pytest.raises(ValueError, match="init"):
        factors.compare_factor(runs, "colour", "val_ppl")
    with pytest.raises(ValueError, match="val_ppl"):
        factors.compare_factor(runs, "init", "accuracy")
    with pytest.raises(ValueError, match="wilcoxon"):
        factors.compare_factor(runs, "init", "val_ppl", test="mann-whitney")
    with pytest.raises(ValueError, match="round"):
        factors.compare_factor(runs, "init", "val_ppl", at="step")
    assert factors.compare_factor(runs, "scope", "val_ppl").empty



def _synthetic(rng, effects):
    """Rows for methods with given log-ppl effects, 6 seeds, rows shuffled."""
    rows = []
    noise = rng.normal(size=6)
    for method, eff in effects.items():
        for seed in range(6):
            nll = 3.0 + eff + 0.05 * noise[seed] + 0.02 * rng.normal()
            rows.append(dict(method=method, method_label=method, allocation="uniform",
                             pattern="unstructured", sparsity=0.5, seed=seed, val_nll=nll,
                             val_ppl=np.exp(nll), zeroshot_acc=np.nan))
    return pd.DataFrame(rows).sample(frac=1, random_state=0).reset_index(drop=True)


def test_paired_comparisons_match_scipy_and_holm():
    rng = np.random.default_rng(0)
    df = _synthetic(rng, {"a": 0.0, "b": 0.3, "c": 0.01})
    df = df.drop(df[(df.method == "c") & (df.seed == 5)].index)  # c lacks seed 5
    t = factors.compare_oneshot(df, "val_nll", "method")
    assert len(t) == 3  # every pair of 3 methods
    m = len(t)
    raw = []
    for _, r in t.iterrows():
        a = df[df.method == r["baseline"]].set_index("seed")["val_nll"]
        b = df[df.method == r["level_b"]].set_index("seed")["val_nll"]
        common = sorted(set(a.index) & set(b.index))
        ref = ss.ttest_rel(b[common], a[common])
        assert r["n"] == len(common)
        assert r["p_t"] == pytest.approx(ref.pvalue)
        d = b[common].to_numpy() - a[common].to_numpy()
        assert r["d_z"] == pytest.approx(d.mean() / d.std(ddof=1))
        raw.append(ref.pvalue)
    order = np.argsort(raw)
    holm = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):  # Holm step-down by hand
        running = max(running, min(1.0, (m - rank) * raw[i]))
        holm[i] = running
    assert t["p_holm"].to_numpy() == pytest.approx(holm)
    sig = t.set_index(["baseline", "level_b"])["significant"]
    assert sig[("a", "b")] and not sig[("a", "c")]
    text = findings(t)
    ratio = float(re.search(r"b vs a \(uniform, unstructured 50%\): perplexity [\d.]+ vs "
                            r"[\d.]+ \(ratio ([\d.]+)\)", text).group(1))
    assert ratio == pytest.approx(np.exp(0.3), rel=0.03)
    assert "2 significant" in text and "n = 5" in text


def test_allocation_factor_and_family():
    rng = np.random.default_rng(1)
    df = _synthetic(rng, {"wanda": 0.0})
    owl = df.assign(allocation="owl", val_nll=df["val_nll"] - 0.2)
    both = pd.concat([df, owl], ignore_index=True)
    t = factors.oneshot_significance(both, metrics=["val_nll", "zeroshot_acc"])
    assert list(t["factor"]) == ["allocation"]  # one method; accuracy all NaN: skipped
    assert t["baseline"].iloc[0] == "uniform" and t["level_b"].iloc[0] == "owl"
    assert t["mean_diff"].iloc[0] == pytest.approx(-0.2)


def test_experiments_of_a_grid_are_compared_within_method():
    rng = np.random.default_rng(2)
    a = _synthetic(rng, {"wanda": 0.0, "sparsegpt": -0.1}).assign(experiment="cal16")
    b = a.assign(experiment="cal64", val_nll=a["val_nll"] - 0.05)
    t = factors.oneshot_significance(pd.concat([a, b], ignore_index=True), metrics=["val_nll"])
    by = t.groupby("factor")
    assert by.size().to_dict() == {"experiment": 2, "method": 2}
    exp = t[t.factor == "experiment"]
    assert set(exp["context"]) == {"wanda, uniform", "sparsegpt, uniform"}
    assert exp["mean_diff"].to_numpy() == pytest.approx([-0.05, -0.05])
    meth = t[t.factor == "method"]  # within each experiment, never across
    assert set(meth["context"]) == {"uniform, cal16", "uniform, cal64"}
    effect = {"wanda": 0.0, "sparsegpt": -0.1}
    for _, r in meth.iterrows():  # pairing across experiments would add +-0.05
        assert r["mean_diff"] == pytest.approx(effect[r["level_b"]] - effect[r["baseline"]],
                                               abs=0.02)
    assert meth["mean_diff"].iloc[0] == pytest.approx(meth["mean_diff"].iloc[1])




def test_describe_names_pairs_below_three_seeds_not_testable(runs):
    two = runs[runs.seed < 2]
    t = factors.compare_factor(two, "init", "val_ppl")
    assert (t.n == 2).all() and t.p_t.isna().all() and not t.significant.any()
    text = factors.describe(t)
    assert ("3 comparisons are not testable: n=2 pairs < 3 (a paired t-test on 2 pair(s) has "
            "1 degree(s) of freedom): C2 vs B2 at sparsity 0.20") in text
    assert "zero variance" not in text and "Wilcoxon" not in text
    # mixed: the n = 3 pairs are tested, the n = 2 ones named
    mixed = pd.concat([factors.compare_factor(runs, "init", "val_ppl"), t], ignore_index=True)
    text = factors.describe(mixed)
    assert "3 differ significantly" in text and "3 comparisons are not testable" in text
    assert "With n = 3 seeds per pair" in text


def test_oneshot_findings_name_the_untestable_comparisons():
    rng = np.random.default_rng(0)
    df = _synthetic(rng, {"a": 0.0, "b": 0.3})
    few = _synthetic(rng, {"a": 0.0, "b": 0.3}).assign(sparsity=0.6)
    few = few[few.seed < 2]
    t = factors.compare_oneshot(pd.concat([df, few], ignore_index=True), "val_nll", "method")
    assert list(t.n) == [6, 2] and np.isnan(t.p_t.iloc[1]) and np.isnan(t.p_holm.iloc[1])
    text = findings(t)
    assert "over n = 6 calibration seeds" in text and "1 significant" in text
    assert "1 comparisons are not testable: n=2 pairs < 3" in text
    assert "The other" not in text  # the untestable one is not counted as not significant
