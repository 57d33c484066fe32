"""Analysis of one-shot sweeps: summaries, paired statistics by seed, the figure."""

import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from workbench.experiments.analysis.oneshot_analysis import (
    findings,
    paired_comparisons,
    plot_oneshot,
    significance,
    summarize,
)


def test_summary_has_one_row_per_curve_point(sweep):
    *_, df = sweep
    s = summarize(df)
    assert set(s["n_seeds"]) == {2} and len(s) == 5


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
    t = paired_comparisons(df, "val_nll", "method")
    assert len(t) == 3  # every pair of 3 methods
    m = len(t)
    raw = []
    for _, r in t.iterrows():
        a = df[df.method == r["baseline"]].set_index("seed")["val_nll"]
        b = df[df.method == r["level_b"]].set_index("seed")["val_nll"]
        common = sorted(set(a.index) & set(b.index))
        ref = sps.ttest_rel(b[common], a[common])
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
    t = significance(both, metrics=["val_nll", "zeroshot_acc"])
    assert list(t["factor"]) == ["allocation"]  # one method; accuracy all NaN: skipped
    assert t["baseline"].iloc[0] == "uniform" and t["level_b"].iloc[0] == "owl"
    assert t["mean_diff"].iloc[0] == pytest.approx(-0.2)


def test_experiments_of_a_grid_are_compared_within_method():
    rng = np.random.default_rng(2)
    a = _synthetic(rng, {"wanda": 0.0, "sparsegpt": -0.1}).assign(experiment="cal16")
    b = a.assign(experiment="cal64", val_nll=a["val_nll"] - 0.05)
    t = significance(pd.concat([a, b], ignore_index=True), metrics=["val_nll"])
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


def test_figure_has_error_bars_per_curve(sweep):
    *_, df = sweep
    fig, axes = plot_oneshot(df)
    assert [ax.get_title() for ax in axes] == ["unstructured", "2:4"]
    for ax in axes:
        labels = [c.get_label() for c in ax.containers]
        assert labels == ["Magnitude (n=2)", "Wanda (n=2)"]
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_rows_of_different_protocols_are_not_compared(sweep):
    *_, df = sweep
    other = df.copy()
    other["eval_fingerprint"] = "sha256:" + "0" * 64 + ":62"
    both = pd.concat([df, other], ignore_index=True)
    with pytest.raises(ValueError, match="different tokens"):
        summarize(both)
    with pytest.raises(ValueError, match="different tokens"):
        significance(both)
    assert len(summarize(both, allow_mixed_protocols=True)) == len(summarize(df))
