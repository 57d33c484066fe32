"""Grid figures: files, TrueType fonts, plotted values (workbench.experiments.plots)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from scipy import stats  # noqa: E402
from pypdf import PdfReader  # noqa: E402

from tests.fixtures.runs import make_runs  # noqa: E402
from workbench.experiments import aggregate
from workbench.experiments import plots


def font_subtypes(pdf_path):
    """Subtypes of every font in the PDF (descendants of Type0 fonts included)."""
    out = set()
    for page in PdfReader(pdf_path).pages:
        fonts = page.get("/Resources", {}).get("/Font", {})
        for ref in fonts.values():
            font = ref.get_object()
            out.add(str(font["/Subtype"]))
            for d in font.get("/DescendantFonts", []):
                out.add(str(d.get_object()["/Subtype"]))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = make_runs(tmp_path_factory.mktemp("runs"))
    return aggregate.load_runs(root), aggregate.load_runs(root, table="losses")


def check_saved(fig, name, folder):
    out = plots.save_figure(fig, name, folder=folder)
    plt.close(fig)
    assert out["pdf"].stat().st_size > 1000 and out["png"].stat().st_size > 1000
    subtypes = font_subtypes(out["pdf"])
    assert subtypes and "/Type3" not in subtypes, subtypes
    assert subtypes <= {"/TrueType", "/Type0", "/CIDFontType2"}, subtypes
    return out


def test_sparsity_curve_plots_mean_and_sd(runs, tmp_path):
    df, _ = runs
    fig, ax = plots.plot_sparsity_curve(df, "val_ppl")
    b2 = df[df.experiment == "B2"]
    # log axis: geometric mean, bar from gm / gsd to gm * gsd (scipy's definitions)
    gm = b2.groupby("round").val_ppl.apply(lambda v: stats.gmean(v)).to_numpy()
    gsd = b2.groupby("round").val_ppl.apply(lambda v: stats.gstd(v)).to_numpy()
    curves = [c for c in ax.containers if c.get_label().startswith("B2 ")]
    assert len(curves) == 1
    data_line, _caps, (bars,) = curves[0].lines
    assert np.allclose(data_line.get_ydata(), gm)
    segs = bars.get_segments()
    assert np.allclose([s[0, 1] for s in segs], gm / gsd)
    assert np.allclose([s[1, 1] for s in segs], gm * gsd)
    assert ax.get_yscale() == "log"
    assert "(n=3)" in curves[0].get_label()
    check_saved(fig, "sparsity_ppl", tmp_path)
    # linear axis: arithmetic mean +- sd
    fig, ax = plots.plot_sparsity_curve(df, "val_ppl", logy=False)
    curve = [c for c in ax.containers if c.get_label().startswith("B2 ")][0]
    data_line, _caps, (bars,) = curve.lines
    assert np.allclose(data_line.get_ydata(), b2.groupby("round").val_ppl.mean())
    sds = b2.groupby("round").val_ppl.std().to_numpy()
    assert np.allclose([s[1, 1] - s[0, 1] for s in bars.get_segments()], 2 * sds)
    assert ax.get_yscale() == "linear"


def test_sw_survival_and_losses(runs, tmp_path):
    df, losses = runs
    fig, ax = plots.plot_sw_survival(df)
    assert ax.get_ylim()[1] == pytest.approx(1.05)
    check_saved(fig, "sw_survival", tmp_path)
    fig, ax = plots.plot_loss_curves(losses)
    # 4 rounds of 4 steps for B2: the mean curve covers global steps 0..15
    b2 = plots.experiment_styles(["A2", "B2", "C2"])["B2"][0]
    xs = np.concatenate([ln.get_xdata() for ln in ax.lines if ln.get_color() == b2
                         and ln.get_linewidth() > 1])
    assert sorted(set(xs)) == list(range(16))
    check_saved(fig, "losses", tmp_path)
    with pytest.raises(ValueError, match="loss"):
        plots.plot_loss_curves(df)


def test_fisher_comparison(tmp_path):
    rng = np.random.default_rng(0)
    true = rng.gamma(1.0, size=200)
    emp = true * rng.lognormal(0, 0.1, size=200)
    fig, axes = plots.plot_fisher_comparison(true, emp)
    rel = np.linalg.norm(emp - true) / np.linalg.norm(true)
    assert f"rel. diff = {rel:.3f}" in axes[0].get_title()
    check_saved(fig, "fisher", tmp_path)
    fig, _ = plots.plot_fisher_comparison(np.eye(4) + 0.1, np.eye(4) + 0.2)
    plt.close(fig)
    with pytest.raises(ValueError, match="same"):
        plots.plot_fisher_comparison(np.ones(3), np.ones(4))


def test_colours_come_from_the_registry_and_the_spec():
    from workbench.experiments import specs
    from workbench.pruning.registry import METHODS

    for entry in METHODS:
        assert plots.method_style(entry.name) == (entry.props["color"], entry.props["label"])
    with pytest.raises(ValueError, match="wanda"):
        plots.method_style("no-such-method")
    raw = {"name": "s", "notebook": "nb", "experiments": {
        "B2": {"label": "baseline", "color": "#123456"}, "C2": {}, "ctl": {"reference": True},
        "A2": {}}}
    spec = specs.parse_spec(raw)
    st = plots.experiment_styles(["A2", "B2", "C2", "ctl"], spec)
    assert st["B2"] == ("#123456", "baseline")  # the spec's keys win
    # palette by position in the spec (controls excluded), not by name or hash
    assert st["C2"] == (plots.PALETTE[1], "C2") and st["A2"] == (plots.PALETTE[2], "A2")
    assert st["ctl"][0] == plots.REFERENCE_COLOR
    assert plots.experiment_styles(["Z", "Y"])["Y"][0] == plots.PALETTE[1]


def test_controls_are_reference_lines(runs):
    df, _ = runs
    ctl = df[df.experiment == "B2"].assign(experiment="ctl", sparsity=0.0)
    fig, ax = plots.plot_sparsity_curve(pd.concat([df, ctl]), "val_ppl", references=["ctl"],
                                        title="profile cpu: 4 steps/round")
    last = ctl[ctl["round"] == ctl["round"].max()].val_ppl
    (line,) = [ln for ln in ax.lines if ln.get_label().startswith("ctl")]
    assert line.get_linestyle() == "--"
    assert line.get_ydata()[0] == pytest.approx(stats.gmean(last))
    assert not [c for c in ax.containers if c.get_label().startswith("ctl")]
    assert ax.get_title() == "profile cpu: 4 steps/round"
    plt.close(fig)
