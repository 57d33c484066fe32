# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python (workbench)
#     language: python
#     name: workbench
# ---

# %% [markdown]
# # 05 · Pilot analysis: what changes super-weight survival and perplexity?
#
# Reads every finished run of a spec (default: the pilot of seed 002 under the `cpu`
# profile), draws sparsity vs validation perplexity and super-weight (SW) survival vs
# sparsity (mean ± sd over seeds, seeds overlaid) and the training-loss curves, then
# asks for each factor of the design whether it changes a metric at matched sparsity:
# runs paired by seed, paired t-test (Wilcoxon alongside), effect size d_z, bootstrap CI
# of the mean paired difference, Holm correction over the whole table. Perplexity is
# tested on its logarithm (`val_nll`, the mean NLL per token): a paired difference of
# log-perplexities is a perplexity ratio, and raw perplexities of a collapsing model span
# orders of magnitude across seeds.

# %% tags=["parameters"]
spec = "pilot"
profile = "cpu"                 # the profile the grid ran with ("none": as written)
runs = ""                       # a runs folder; overrides spec/profile when set
out_dir = "figures/pilot"       # figures, tables and findings.md
factors = ["init", "steps_per_round", "schedule", "scope", "lr_schedule", "control"]
metrics = ["val_nll", "sw_survival"]  # tested; val_nll = log(val_ppl), nats per token
alpha = 0.05

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from workbench.experiments import aggregate

from workbench.core import io

from workbench.experiments import plots

from workbench.experiments import stats

source = runs or spec
prof = None if profile == "none" else profile
df = aggregate.load_runs(source, prof)
losses = aggregate.load_runs(source, prof, table="losses")
out = Path(out_dir)
out.mkdir(parents=True, exist_ok=True)
if df.empty:
    raise RuntimeError(f"no finished runs in {df.attrs['runs_dir']}: run the grid first")
cells = df.groupby(["experiment", "seed"]).ngroups
print(f"{cells} finished runs of {df.experiment.nunique()} experiments "
      f"({', '.join(sorted(df.experiment.unique()))}), seeds {sorted(df.seed.unique())}, "
      f"from {df.attrs['runs_dir']}")

# %% [markdown]
# ## Summary: mean ± sd over seeds, per experiment and round

# %%
shown = dict.fromkeys(["val_ppl", *metrics, "train_loss"])
summary = aggregate.summarize(df, metrics=[m for m in shown if m in df], wide=True)
io.write_text(out / "summary.csv", summary.to_csv(index=False))
summary

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
plots.plot_sparsity_curve(df, "val_ppl", ax=axes[0])
plots.plot_sw_survival(df, ax=axes[1])
plots.save_figure(fig, "pilot_sparsity", folder=out)

# %%
if not losses.empty:
    fig, ax = plots.plot_loss_curves(losses)
    plots.save_figure(fig, "pilot_losses", folder=out)

# %% [markdown]
# ## Does a factor change a metric at matched sparsity?
#
# Experiments are paired when they differ only in the factor; sparsity levels are the
# targets both runs reached (the first round that reached it), seeds pair the runs.

# %%
table = stats.significance_table(df, factors, [m for m in metrics if m in df], alpha=alpha)
io.write_text(out / "significance.csv", table.to_csv(index=False))
cols = ["factor", "experiment_b", "experiment_a", "metric", "level", "n", "mean_b", "mean_a",
        "mean_diff", "ci_low", "ci_high", "d_z", "p_t", "p_wilcoxon", "p_holm", "significant"]
table[cols].round(4) if len(table) else table

# %% [markdown]
# ## Findings (generated from the numbers above)

# %%
findings = stats.describe(table, alpha=alpha)
with pd.option_context("display.width", 200, "display.max_columns", 30):
    report = (f"# Findings: {spec} ({profile})\n\n{findings}\n\n## Summary (mean ± sd)\n\n"
              f"```\n{summary.to_string(index=False)}\n```\n\n## Significance\n\n"
              f"```\n{table[cols].round(4).to_string(index=False) if len(table) else '-'}\n```\n")
io.write_text(out / "findings.md", report)
print(findings)
