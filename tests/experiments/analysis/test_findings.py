"""findings: the super-weight definition and detector settings stated in findings.md and
the figure caption, read from the runs and the detector (not copied constants)."""

from __future__ import annotations

import dataclasses
import inspect

from tests.fixtures.runs import DESIGNS, make_runs, write_spec_record
from workbench.experiments.analysis import findings
from workbench.lottery import superweights
from workbench.lottery.schema import IMPConfig


def _analysis(tmp_path, designs=None):
    root = make_runs(tmp_path / "runs", designs=designs)
    write_spec_record(root, designs=designs)
    return findings.analyse(root, None, n_resamples=200)


def test_findings_state_the_sw_definition_with_the_schema_defaults(tmp_path):
    a = _analysis(tmp_path)
    text = findings.findings_markdown(a)
    defaults = {f.name: f.default for f in dataclasses.fields(IMPConfig)}
    max_iter = inspect.signature(superweights.find_super_weights).parameters["max_iter"].default
    assert "**Super weight (SW)** (Yu et al. 2024" in text
    assert f"sw_threshold = {defaults['sw_threshold']:g}" in text
    assert f"sw_spike_ratio = {defaults['sw_spike_ratio']:g}" in text
    assert (f"{defaults['sw_blocks']} validation blocks of {defaults['sw_seq_len']} tokens"
            in text)
    assert f"at most {max_iter} passes" in text and f"`{superweights.DEFAULT_MODULE}`" in text
    assert "`sw_survival` is the share of the pre-trained model's SW coordinates" in text


def test_settings_come_from_the_runs_and_differences_are_shown(tmp_path):
    designs = {e: (dict(d, sw_threshold=250.0 if e == "C2" else 500.0, sw_blocks=3), eff, sw)
               for e, (d, eff, sw) in DESIGNS.items()}
    a = _analysis(tmp_path, designs)
    st = findings.sw_settings(a)
    assert st["sw_threshold"] == [250.0, 500.0] and st["sw_blocks"] == [3]
    text = findings.findings_markdown(a)
    assert "sw_threshold = 250/500" in text and "3 validation blocks" in text


def _saved_figures(tmp_path, monkeypatch) -> tuple[object, dict]:
    """Run ``findings.figures`` on a small analysis with ``save_figure`` replaced by a
    capture: ``(analysis, {figure name: figure})``."""
    import matplotlib

    matplotlib.use("Agg")
    from workbench.experiments.analysis import plots

    a = _analysis(tmp_path)
    seen = {}

    def capture(fig, name, *, folder=None):
        seen[name] = fig
        return {}

    monkeypatch.setattr(plots, "save_figure", capture)
    findings.figures(a, tmp_path / "figs", prefix="x")
    return a, seen


def test_figure_caption_states_the_sw_definition(tmp_path, monkeypatch):
    a, seen = _saved_figures(tmp_path, monkeypatch)
    caption = findings.sw_definition(a, short=True)
    # beside the suptitle with the scale
    assert caption in [t.get_text() for t in seen["x_sparsity"].texts]
    assert ">= 1000" in caption and "2 val. blocks x 64 tokens" in caption


def test_grid_figure_legends_say_what_the_error_bars_are(tmp_path, monkeypatch):
    _, seen = _saved_figures(tmp_path, monkeypatch)
    titles = [ax.get_legend().get_title().get_text() for ax in seen["x_sparsity"].axes
              if ax.get_legend() is not None]
    # perplexity on a log axis, SW survival on a linear one
    assert titles == ["bars: geometric mean ×/÷ geometric sd over seeds",
                      "bars: mean ± sd over seeds"]


def test_fewer_than_three_seeds_are_not_testable_and_the_findings_say_why(tmp_path):
    root = make_runs(tmp_path / "runs", seeds=(0, 1))
    write_spec_record(root)
    a = findings.analyse(root, None, n_resamples=200)
    tested = a.contrasts[a.contrasts.n > 0]
    assert (tested.n == 2).all() and tested.p_t.isna().all() and tested.p_holm.isna().all()
    assert not tested.significant.astype(bool).any()
    reason = "not testable: n=2 pairs < 3 (a paired t-test on 2 pair(s) has 1 degree(s) of freedom)"
    assert tested.note.str.contains(reason, regex=False).all()
    verdicts = findings.verdicts(a)
    has_data = verdicts[verdicts.contrast != "sweet_xavier"]  # critical_sparsity: no pairs
    assert has_data.verdict.str.contains(reason, regex=False).all(), has_data.verdict.tolist()
    text = findings.findings_markdown(a)
    assert f"Verdict: inconclusive ({reason})." in text
    # the n = 2 differences are not "zero variance" (they were never estimated)
    assert "zero variance" not in text and "identically in every seed" not in text
    assert f"comparisons are {reason}" in text  # the automatic pairs say it too
