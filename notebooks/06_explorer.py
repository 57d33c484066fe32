# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     notebook_metadata_filter: -jupytext.text_representation
#   kernelspec:
#     display_name: Python (workbench)
#     language: python
#     name: workbench
# ---

# %% [markdown]
# # 06 · Explorer: browse the runs of a grid
#
# Pick a spec, a metric, experiments and a sparsity range; the figure (mean ± sd over
# seeds, seeds overlaid) and the summary table update. The metric list holds metrics
# only (`aggregate.metric_columns`: no hyperparameters), and the chosen metric is kept
# when the spec changes (if the new runs have it). Open it in JupyterLab for the
# widgets; under papermill it runs top to bottom and shows the default view.

# %% tags=["parameters"]
spec = "pilot"
profile = "cpu"      # profile the grid ran with ("none": as written)
runs = ""            # a runs folder; overrides spec/profile when set
metric = "val_ppl"

# %%
import functools

import ipywidgets as widgets
import matplotlib.pyplot as plt
from IPython.display import clear_output, display

from workbench.core import paths
from workbench.experiments.analysis import aggregate, plots
from workbench.experiments.design import specs

FOLDER = f"folder: {runs}" if runs else None


@functools.lru_cache(maxsize=8)
def runs_of(source: str, prof: str):
    """The runs of a spec (or of the runs folder), read once per (source, profile)."""
    path = paths.resolve(runs) if source == FOLDER else source
    return aggregate.load_runs(path, None if prof == "none" else prof)


chosen = {"metric": metric}  # the user's last choice, kept across specs and profiles


def view(df, metric, experiments, lo, hi):
    """Figure and summary table of the selection."""
    sel = df[df.experiment.isin(experiments) & df.sparsity.between(lo, hi)]
    if sel.empty:
        print("nothing selected")
        return None, None
    fig, ax = plots.plot_sparsity_curve(sel, metric)
    table = aggregate.summarize(sel, metrics=[metric], wide=True)
    return fig, table


# %%
sources = ([FOLDER] if FOLDER else []) + specs.available_specs()
start = FOLDER or spec
df = runs_of(start, profile)
w_spec = widgets.Dropdown(options=sources, value=start, description="spec")
w_profile = widgets.Dropdown(options=["cpu", "gpu", "none"], value=profile,
                             description="profile")
w_metric = widgets.Dropdown(options=aggregate.metric_columns(df) if len(df) else [],
                            description="metric")
w_metric.value = aggregate.keep_choice(w_metric.options, chosen["metric"])
w_exps = widgets.SelectMultiple(options=sorted(df.experiment.unique()) if len(df) else [],
                                value=tuple(sorted(df.experiment.unique())) if len(df) else (),
                                description="experiments", rows=6)
w_range = widgets.FloatRangeSlider(value=(0.0, 1.0), min=0.0, max=1.0, step=0.01,
                                   description="sparsity")
w_out = widgets.Output()


def on_source(_=None):
    data = runs_of(w_spec.value, w_profile.value)
    exps = sorted(data.experiment.unique()) if len(data) else []
    w_exps.options, w_exps.value = exps, tuple(exps)
    w_metric.unobserve(on_metric, names="value")  # new options must not overwrite the choice
    w_metric.options = aggregate.metric_columns(data) if len(data) else []
    w_metric.value = aggregate.keep_choice(w_metric.options, chosen["metric"])
    w_metric.observe(on_metric, names="value")
    refresh()


def on_metric(change):
    if change["new"] is not None:
        chosen["metric"] = change["new"]
    refresh()


def refresh(_=None):
    data = runs_of(w_spec.value, w_profile.value)
    with w_out:
        clear_output(wait=True)
        if data.empty or w_metric.value is None:
            print(f"no finished runs for {w_spec.value} ({w_profile.value})")
            return
        fig, table = view(data, w_metric.value, w_exps.value, *w_range.value)
        if fig is not None:
            plt.show()
            display(table)


for w in (w_spec, w_profile):
    w.observe(on_source, names="value")
w_metric.observe(on_metric, names="value")
for w in (w_exps, w_range):
    w.observe(refresh, names="value")
display(widgets.HBox([widgets.VBox([w_spec, w_profile, w_metric, w_range]), w_exps]), w_out)
refresh()

# %% [markdown]
# The default view, also as plain output (what a headless run shows):

# %%
fig, table = view(df, w_metric.value, w_exps.value, *w_range.value) if len(df) else (None, None)
table
