"""One tidy frame over a spec's runs and its summaries
(workbench.experiments.analysis.aggregate)."""

import numpy as np
import pandas as pd
import pytest

from tests.fixtures.runs import make_runs
from workbench.experiments.analysis import aggregate


@pytest.fixture
def runs(tmp_path):
    return make_runs(tmp_path / "runs", unfinished={("A2", 2)})


def test_load_runs_reads_finished_cells_only_and_adds_design(runs):
    df = aggregate.load_runs(runs)
    # 3 experiments x 3 seeds x 4 rounds, minus the unfinished A2/seed2
    assert len(df) == 3 * 3 * 4 - 4
    assert not ((df.experiment == "A2") & (df.seed == 2)).any()
    assert {"prune_pct", "n_rounds", "init", "steps_per_round"} <= set(df.columns)
    assert (df.loc[df.experiment == "C2", "init"] == "xavier").all()
    assert df.groupby(["experiment", "seed"]).size().eq(4).all()
    assert df.attrs["runs_dir"] == str(runs)
    losses = aggregate.load_runs(runs, table="losses")
    assert {"experiment", "seed", "round", "step", "loss"} <= set(losses.columns)
    assert len(losses[(losses.experiment == "B2") & (losses.seed == 0)]) == 4 * 4
    assert len(aggregate.load_runs(runs, experiments=["B2"]).experiment.unique()) == 1
    with pytest.raises(ValueError, match="records"):
        aggregate.load_runs(runs, table="bogus")


def test_empty_folder_gives_an_empty_frame(tmp_path):
    assert aggregate.load_runs(tmp_path).empty


def test_summarize_matches_numpy(runs):
    df = aggregate.load_runs(runs)
    s = aggregate.summarize(df, metrics=("val_ppl", "sw_survival"))
    row = s[(s.experiment == "B2") & (s["round"] == 2) & (s.metric == "val_ppl")].iloc[0]
    vals = df[(df.experiment == "B2") & (df["round"] == 2)].val_ppl.to_numpy()
    assert row["mean"] == pytest.approx(vals.mean())
    assert row["std"] == pytest.approx(np.std(vals, ddof=1))
    assert row["n"] == 3
    a2 = s[(s.experiment == "A2") & (s["round"] == 1) & (s.metric == "val_ppl")].iloc[0]
    assert a2["n"] == 2
    assert row["sparsity"] == pytest.approx(df[(df.experiment == "B2") & (df["round"] == 2)]
                                            .sparsity.mean())
    with pytest.raises(ValueError, match="nope"):
        aggregate.summarize(df, metrics=("nope",))


def test_summary_table_is_readable(runs):
    df = aggregate.load_runs(runs)
    t = aggregate.summarize(df, metrics=("val_ppl",), wide=True)
    assert list(t.columns) == ["experiment", "round", "sparsity", "val_ppl", "n"]
    vals = df[(df.experiment == "C2") & (df["round"] == 3)].val_ppl
    cell = t[(t.experiment == "C2") & (t["round"] == 3)].val_ppl.iloc[0]
    assert cell == f"{vals.mean():.3g} ± {vals.std():.2g}"
    assert isinstance(t, pd.DataFrame) and len(t) == 12


def test_records_get_log_perplexity(tmp_path):
    df = aggregate.load_runs(make_runs(tmp_path / "runs"))
    np.testing.assert_allclose(np.exp(df["val_nll"]), df["val_ppl"], rtol=1e-12)
