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
# # 05 · Pilot analysis: the table's questions, answered by the declared contrasts
#
# Reads every finished run of a spec (default: the pilot under the `cpu` profile) and
# answers the questions the spec declares (`questions:` in `data/experiments/pilot.yaml`):
# each contrast compares two experiments on runs paired by seed, matched at the same
# sparsity, round or per run (sweet spot), with a paired t-test (Wilcoxon alongside),
# effect size d_z, bootstrap CI and Holm correction over all declared tests, and a
# one-line verdict (with the power caveat for n = 3). Perplexity is tested on its
# logarithm (`val_nll`). Definitions: `help(workbench.experiments.analysis.findings)`.

# %% tags=["parameters"]
spec = "pilot"
profile = "cpu"                 # the profile the grid ran with ("none": as written)
runs = ""                       # a runs folder; overrides spec/profile when set
out_dir = "figures/pilot"       # figures, tables and findings.md (relative: project root)
alpha = 0.05

# %%
from workbench.core import paths
from workbench.experiments.analysis import findings

out = paths.resolve(out_dir)
source = paths.resolve(runs) if runs else spec
analysis = findings.analyse(source, None if profile == "none" else profile, alpha=alpha)
print(findings.scale_note(analysis))
analysis.summary

# %%
findings.figures(analysis, out, prefix="pilot")

# %% [markdown]
# ## The declared contrasts, and a verdict for each

# %%
findings.contrast_table(analysis)

# %%
verdicts = findings.verdicts(analysis)
verdicts

# %% [markdown]
# ## Findings by question (written to `findings.md` with the tables)

# %%
written = findings.write_findings(analysis, out)
print(f"wrote {written['findings']}")
