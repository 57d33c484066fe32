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
# # 04 · One lottery-ticket run: IMP with rewinding, and the fate of the super weights
#
# One (experiment, seed) cell of the super-weight x lottery-ticket grid. `config` holds
# overrides of the run's schema (`workbench.lottery.schema.IMPConfig`: every field, its
# allowed values and its role are listed by `workbench.lottery.schema.config_fields()`);
# the defaults are a CPU smoke size. The super weights (SW) of the loaded model are
# detected first (Yu et al. 2024), then iterative magnitude pruning starts from θ0
# (`init`: the pre-trained weights or a fresh Xavier / Kaiming / normal draw), trains,
# prunes, rewinds to θ0 and retrains; after each round the detector looks for emergent
# SWs. Definitions: `help(workbench.lottery.imp)`.

# %% tags=["parameters"]
run_dir = None   # run folder; None: data/runs/<experiment> under the project root
config = {}      # overrides of IMPConfig, e.g. {"init": "xavier", "prune_pct": 0.1}

# %%
import matplotlib.pyplot as plt

from workbench.core import paths
from workbench.experiments.analysis import plots
from workbench.experiments.running import runs
from workbench.lottery import cell

cfg = cell.as_config(config)
out = paths.resolve(run_dir or f"data/runs/{cfg.experiment}")
run = cell.run(cfg, out)
run.tables["super_weights"]

# %% [markdown]
# ## Iterative pruning, rewinding, retraining

# %%
run.result.records[list(cell.DISPLAY_COLUMNS)]

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
plots.plot_sparsity_curve(run.result.records, "val_ppl", ax=axes[0])
plots.plot_sw_survival(run.result.records, ax=axes[1])
plots.save_figure(fig, "04_lottery_run", folder=out)

# %% [markdown]
# The tables, the robustness summary and the manifest go to the run folder through the
# run layout (`workbench.experiments.running.runs.write_run`: atomic, records last).

# %%
runs.write_run(out, run.tables, run.result.summary, run.manifest)
print(cell.sentence(run))
