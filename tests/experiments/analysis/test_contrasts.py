"""Declared contrasts computed: paired tests against scipy, one Holm family, verdicts
(workbench.experiments.analysis.contrasts)."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats as ss
from statsmodels.stats.multitest import multipletests

from tests.fixtures.runs import DESIGNS, make_runs
from workbench.experiments.analysis import aggregate, stats
from workbench.experiments.analysis import contrasts as analysis_contrasts
from workbench.experiments.design import contrasts


@pytest.fixture
def data(tmp_path):
    root = make_runs(tmp_path / "runs")
    return aggregate.load_runs(root), aggregate.load_summaries(root)


PARAMS = {name: d for name, (d, _, _) in DESIGNS.items()}


def test_compute_contrasts_matches_scipy_and_holm(data):
    df, summaries = data
    questions = contrasts.parse_questions({
        "init": {"question": "init?", "metrics": ["val_ppl"],
                 "contrasts": {"xavier": {"a": "B2", "b": "C2"},
                               "budget": {"a": "B2", "b": "A2", "at": "round"}}},
        "gone": {"question": "missing arm?", "metrics": ["val_ppl"],
                 "contrasts": {"missing": {"a": "B2", "b": "X9"}}},
    }, {**PARAMS, "X9": {**PARAMS["B2"], "steps_per_round": 9}})
    t = analysis_contrasts.compute_contrasts(df, questions, {**PARAMS, "X9": PARAMS["B2"]},
                                    summaries=summaries, n_resamples=500)
    tested = t[t.n > 0]
    # budget at round: rounds 0-3 all differ (round 0 trains 1 vs 4 steps)
    assert list(tested.contrast) == ["xavier"] * 3 + ["budget"] * 4
    for _, row in tested.iterrows():
        col = "target_sparsity" if row["at"] == "sparsity" else "round"
        key = df[col].round(3) if row["at"] == "sparsity" else df[col]
        a = df[(df.experiment == row.a) & (key == row.level)].sort_values("seed").val_ppl
        b = df[(df.experiment == row.b) & (key == row.level)].sort_values("seed").val_ppl
        assert row.p_t == pytest.approx(ss.ttest_rel(b, a).pvalue)
        assert row.mean_a == pytest.approx(a.mean()) and row.sd_b == pytest.approx(b.std())
    assert tested.p_holm.to_numpy() == pytest.approx(multipletests(tested.p_t, method="holm")[1])
    # the missing arm is reported, not dropped; X9 is identical to B2 under these params
    gone = t[t.contrast == "missing"].iloc[0]
    assert gone.n == 0 and "X9" in gone.note


def test_run_level_contrast_uses_the_summaries(data):
    df, summaries = data
    summaries = summaries.assign(optimal_sparsity=np.where(summaries.experiment == "C2", 0.2,
                                                           0.4 + 0.01 * summaries.seed))
    q = contrasts.parse_questions({"s": {"question": "?", "contrasts": {
        "x": {"a": "B2", "b": "C2", "at": "run", "metrics": ["optimal_sparsity"]}}}}, PARAMS)
    row = analysis_contrasts.compute_contrasts(df, q, PARAMS, summaries=summaries).iloc[0]
    assert row.level == "run" and row.n == 3
    assert row.mean_diff == pytest.approx(0.2 - 0.41)


def test_verdicts():
    def rows(diffs, p, n=3):
        return pd.DataFrame({"mean_diff": diffs, "p_holm": p, "n": n,
                             "significant": [x < 0.05 for x in p], "note": ""})

    assert analysis_contrasts.verdict(rows([1.0], [0.01]), "higher").startswith("supported")
    assert analysis_contrasts.verdict(rows([-1.0], [0.01]), "higher").startswith("not supported")
    v = analysis_contrasts.verdict(rows([1.0], [0.3]))
    assert v.startswith("inconclusive") and "n=3" in v and "3.3" in v
    assert analysis_contrasts.verdict(rows([1.0], [0.3], n=12)).startswith("not supported")
    assert analysis_contrasts.verdict(pd.DataFrame({"p_holm": [np.nan], "note": ["identical"]})
                             ).startswith("inconclusive: nothing testable")
    assert stats.minimal_detectable_effect(3) == pytest.approx(3.264, abs=1e-3)
