"""Analysis of one-shot sweeps: summaries, protocols, the figure."""

import pandas as pd
import pytest

from workbench.experiments.analysis.factors import oneshot_significance
from workbench.experiments.analysis.oneshot_analysis import plot_oneshot, summarize


def test_summary_has_one_row_per_curve_point(sweep):
    *_, df = sweep
    s = summarize(df)
    assert set(s["n_seeds"]) == {2} and len(s) == 5


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
        oneshot_significance(both)
    assert len(summarize(both, allow_mixed_protocols=True)) == len(summarize(df))
