"""One look per name across figures and modules; importing changes no matplotlib setting."""

import subprocess
import sys

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.colors import to_hex

from workbench.curvature.registry import CURVATURE_MATRICES
from workbench.experiments.analysis import plots
from workbench.notebooks import fisher_ggn as fg
from workbench.notebooks import fisher_lm as fl
from workbench.notebooks import fisher_uses as fu

# every module this change touches (notebook helpers, the registration, the palette)
MODULES = ("workbench.notebooks", "workbench.notebooks.section", "workbench.notebooks._common",
           "workbench.notebooks.fisher_ggn", "workbench.notebooks.fisher_lm",
           "workbench.notebooks.fisher_uses", "workbench.curvature.products",
           "workbench.curvature.kfac", "workbench.curvature",
           "workbench.experiments.analysis.plots")


@pytest.mark.parametrize("module", MODULES)
def test_importing_changes_no_matplotlib_setting(module):
    code = ("import matplotlib as m; before = dict(m.rcParams); "
            f"import {module}; "
            "print(sorted(k for k in before if before[k] != m.rcParams[k]))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]", res.stderr


def test_curvature_registry_keeps_labels_only():
    assert set(CURVATURE_MATRICES.names()) == {"hessian", "ggn", "empirical_fisher",
                                               "true_fisher"}
    for entry in CURVATURE_MATRICES:
        assert not entry.props.get("color")  # presentation lives in plots.style
        assert entry.props["label"]
        look = plots.style(entry.name)
        assert look.color in plots.PALETTE and look == plots.style(entry.name)
    # the matrices drawn together are told apart
    colours = [plots.style(n).color for n in CURVATURE_MATRICES.names()]
    assert len(set(colours)) == len(colours)


def _hex(name):
    """The colour of ``name`` as matplotlib reports it (lower-case hex)."""
    return to_hex(plots.style(name).color)


def _line_colours(ax):
    return {line.get_label(): to_hex(line.get_color()) for line in ax.get_lines()}


def test_a_curvature_matrix_has_one_colour_in_every_figure():
    true_c, emp_c = _hex("true_fisher"), _hex("empirical_fisher")
    # figure 1 (notebook 01): spectra panel of the dense matrices
    m = torch.eye(3, dtype=torch.float64)
    fig1, axes = fg.plot_matrices_and_spectra({"true_fisher": m, "empirical_fisher": 2 * m})
    got1 = _line_colours(axes[-1])
    assert got1 == {"True Fisher": true_c, "Empirical Fisher": emp_c}
    # figure 2 (notebook 01): traces per block
    layers = pd.DataFrame(dict(layer=[0, 1], empirical=[1.0, 2.0], true=[3.0, 4.0]))
    fig2, ax2 = fg.plot_layer_diagonals(layers)
    assert _line_colours(ax2) == got1
    # figure 3 (notebook 01): the Monte Carlo error is the true Fisher's
    mc = pd.DataFrame(dict(n_samples=[1, 4, 1, 4], rel_error=[1.0, 0.5, 1.1, 0.6],
                           seed=[0, 0, 1, 1]))
    fig3, ax3 = fg.plot_mc_convergence(mc, -0.5)
    assert to_hex(ax3.collections[0].get_facecolor()[0]) == true_c
    # figure 4 (another module, notebook 07): bars per layer type
    by_type = pd.DataFrame(dict(layer=[0, 0], type=["q_proj", "o_proj"], true=[1.0, 2.0],
                                empirical=[3.0, 4.0]))
    fig4, (a1, _) = fl.plot_fisher_lm(by_type, by_type.iloc[:0])
    bars = {c.get_label(): to_hex(c.patches[0].get_facecolor()) for c in a1.containers}
    assert bars == got1
    for f in (fig1, fig2, fig3, fig4):
        plt.close(f)


def test_a_rank_and_a_run_have_one_colour_from_the_palette():
    perc = pd.DataFrame(dict(rank=["none", "top", "random", "bottom"],
                             concentration=[0, .1, .1, .1], seed=[-1, 0, 0, 0],
                             ppl=[10.0, 30.0, 12.0, 10.5]))
    fig, ax = fu.plot_percolation(perc, "t")
    colours = {c.get_label().split(" ")[0]: to_hex(c.lines[0].get_color())
               for c in ax.containers}
    assert colours == {r: _hex(r) for r in ("top", "random", "bottom")}
    assert set(colours.values()) <= {to_hex(c) for c in plots.PALETTE}
    assert len(set(colours.values())) == 3
    forget = pd.DataFrame(dict(run=["a", "a", "b", "b"], damage=[1.0, 2.0, 1.0, 3.0],
                               increase=[0.1, 0.2, 0.1, 0.3]))
    fig2, ax2 = fu.plot_forgetting(forget, fu.forgetting_correlation(forget), "t")
    got = {line.get_label().split(" ")[0]: to_hex(line.get_color()) for line in ax2.get_lines()}
    assert got == {"a": _hex("a"), "b": _hex("b")}
    plt.close(fig)
    plt.close(fig2)


def test_save_figure_applies_the_style(tmp_path):
    layers = pd.DataFrame(dict(layer=[0, 1], empirical=[1.0, 2.0], true=[3.0, 4.0]))
    fig, ax = fg.plot_layer_diagonals(layers)
    assert ax.spines["top"].get_visible()  # drawing alone does not style
    out = plots.save_figure(fig, "diag", folder=tmp_path)
    assert not ax.spines["top"].get_visible()
    assert all(p.stat().st_size > 0 for p in out.values())
    assert np.isclose(ax.get_lines()[0].get_ydata()[1], 4.0)
    plt.close(fig)
