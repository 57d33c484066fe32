"""Grid figures: files, TrueType fonts, plotted values (workbench.experiments.analysis.plots)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from scipy import stats  # noqa: E402
from pypdf import PdfReader  # noqa: E402

from tests.fixtures.runs import make_runs  # noqa: E402
from workbench.experiments.analysis import aggregate
from workbench.experiments.analysis import plots


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


def test_colours_follow_names_not_order():
    from workbench.experiments.design import specs
    from workbench.pruning.registry import METHODS, SCORE_KINDS

    # registered methods: fixed, distinct palette slots; labels from the registry
    names = list(METHODS.names()) + [k for k in SCORE_KINDS.names() if k not in METHODS]
    colours = [plots.style(n).color for n in names]
    assert len(set(colours)) == len(colours) and set(colours) <= set(plots.PALETTE)
    for entry in METHODS:
        assert "color" not in entry.props  # colours are not registry data
        assert plots.method_style(entry.name) == (plots.style(entry.name).color,
                                                  entry.props["label"])
    with pytest.raises(ValueError, match="wanda"):
        plots.method_style("no-such-method")
    # any other name: the same look in every figure, whatever the order or the subset
    a = plots.experiment_styles(["A2", "B2", "C2"])
    b = plots.experiment_styles(["C2", "B2"])
    assert a["B2"] == b["B2"] and a["C2"] == b["C2"]
    assert plots.style("B2") == plots.style("B2")
    # the digest is fixed text -> slot (independent reference: sha1 by hand)
    import hashlib
    h = int(hashlib.sha1(b"B2").hexdigest(), 16)
    slots = [c for c in plots.PALETTE if c != "#000000"]
    assert plots.style("B2").color == slots[h % len(slots)]
    raw = {"name": "s", "notebook": "nb", "experiments": {
        "B2": {"label": "baseline", "color": "#123456"}, "C2": {}, "ctl": {"reference": True},
        "A2": {}}}
    spec = specs.parse_spec(raw)
    st = plots.experiment_styles(["A2", "B2", "C2", "ctl"], spec)
    assert st["B2"] == ("#123456", "baseline")  # the spec's keys win
    assert st["C2"] == (plots.style("C2").color, "C2")
    assert st["ctl"][0] == plots.REFERENCE_COLOR
    assert plots.style("wanda/owl").color == plots.style("wanda").color
    assert plots.style("wanda/owl").linestyle == "--"


def test_identical_curves_stay_distinguishable(runs):
    df, _ = runs
    twin = df[df.experiment == "B2"].assign(experiment="B2-copy")
    fig, ax = plots.plot_sparsity_curve(pd.concat([df, twin]), "val_ppl")
    curves = {c.get_label().split(" (")[0]: c.lines[0] for c in ax.containers}
    one, two = curves["B2"], curves["B2-copy"]
    assert np.allclose(np.asarray(one.get_ydata(), float), np.asarray(two.get_ydata(), float))
    assert (one.get_marker(), one.get_linestyle(), one.get_color()) != (
        two.get_marker(), two.get_linestyle(), two.get_color())
    assert one.get_markerfacecolor() == "none"  # hollow: the one below shows through
    assert ax.get_legend().get_title().get_text() == (
        "bars: geometric mean ×/÷ geometric sd over seeds")
    plt.close(fig)


def test_importing_plots_changes_no_setting_and_save_applies_the_style(runs, tmp_path):
    import subprocess
    import sys

    code = ("import matplotlib as m; before = dict(m.rcParams); "
            "import workbench.experiments.analysis.plots; "
            "print(sorted(k for k in before if before[k] != m.rcParams[k]))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.stdout.strip() == "[]", res.stderr
    df, _ = runs
    fig, ax = plots.plot_sparsity_curve(df, "val_ppl")
    assert ax.get_yscale() == "log"
    check_saved(fig, "style", tmp_path)
    assert not ax.spines["top"].get_visible()
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_yticklabels() + ax.get_yticklabels(minor=True)]
    assert [t for t in labels if t], labels
    assert not [t for t in labels if "times" in t or "^" in t or "\\" in t], labels
    for t in labels:
        if t:
            float(t)  # plain numbers


def test_sweep_figure_true_sparsity_and_zero_shot(sweep, tmp_path):
    from workbench.experiments.analysis import oneshot_analysis as oa

    *_, df = sweep
    df = df.assign(zeroshot_acc=0.25 + 0.1 * df["sparsity"] + 0.01 * df["seed"])
    fig, rows = oa.plot_oneshot(df, ["val_ppl", "zeroshot_acc"])
    assert len(rows) == 2  # perplexity and zero-shot accuracy
    ax = rows[0][0]
    assert list(ax.get_xticks()) == [0.5] and ax.get_xticklabels()[0].get_text() == "50%"
    xs = [x for c in ax.containers for x in c.lines[0].get_xdata()]
    assert xs and all(abs(x - 0.5) <= 0.01 + 1e-9 for x in xs)  # offset by at most 1 point
    lo, hi = ax.get_xlim()
    assert hi - lo >= 0.1  # the offsets are small beside the axis
    title = fig._suptitle.get_text()
    for part in (df["model"].iloc[0], "lee", "n = 2 calibration seeds", "profile: none"):
        assert part in title, title
    assert "zeroshot_acc: mean ± sd over seeds" in fig.legends[0].get_title().get_text()
    # the title fits the figure: wider, it would set the saved image's width
    renderer = fig.canvas.get_renderer()
    assert fig._suptitle.get_window_extent(renderer).width <= fig.bbox.width
    check_saved(fig, "sweep", tmp_path)


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
