"""Grid figures: files, TrueType fonts, plotted values (workbench.experiments.plots)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
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
    curves = [c for c in ax.containers if c.get_label().startswith(plots.label("B2"))]
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
    curve = [c for c in ax.containers if c.get_label().startswith(plots.label("B2"))][0]
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
    xs = np.concatenate([ln.get_xdata() for ln in ax.lines if ln.get_color() == plots.color("B2")
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
