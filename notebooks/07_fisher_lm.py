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
# # 07 · Fisher, K-FAC and capacity of a language model
#
# On the default model: the true vs empirical Fisher per layer type and per attention
# head (group Fisher collected with O(groups) memory), the K-FAC factor spectra per
# block, a natural-gradient sanity check, and the capacity (diagonal-Fisher trace,
# sharpness, PAC-Bayes complexity) of the dense model next to a 50 % Wanda model,
# with the Fisher-weighted damage of that pruning.

# %% tags=["parameters"]
model = "smollm2-135m"
corpus = "wiki-excerpt"
tokens = 256                 # tokens the curvature is measured on (seq_len-token blocks)
seq_len = 64
fisher_type = "true"         # Fisher type of K-FAC, the capacity table and the damage
n_calibration = 16           # Wanda calibration windows (seq_len tokens each)
sparsity = 0.5
damping = 1e-3               # K-FAC damping (added to the Kronecker product)
kfac_types = ["q_proj", "k_proj", "v_proj", "o_proj"]  # K-FAC layers (None: all block
                             # linears; the 1536-wide MLP factors cost ~1 min each on CPU)
sharpness_tokens = 32        # tokens of the Lanczos lambda_max (double backward per step)
seed = 0
threads = 0                  # torch intra-op threads, 0 for the torch default
output_dir = "data/runs/07_fisher_lm"
figures_dir = ""             # empty for figures/

# %%
import copy

import pandas as pd
import torch

import workbench as wb
from workbench import curvature as cv
from workbench.core import io, paths
from workbench.curvature.kfac import modules_of_type
from workbench.experiments.analysis.plots import save_figure
from workbench.notebooks import fisher_lm as fl

if threads:
    torch.set_num_threads(int(threads))
wb.seed_everything(seed)
out = paths.resolve(output_dir)
figdir = paths.resolve(figures_dir) if figures_dir else None
lm, tokenizer = wb.load_model(model)
text = wb.load_corpus(corpus, seed=seed)
blocks = wb.token_blocks(tokenizer, text.split("validation"), seq_len,
                         n_blocks=max(1, tokens // seq_len), seed=seed)
calibration_tokens = wb.calibration_windows(tokenizer, text.split("train"), seq_len,
                                            n_calibration, seed=seed)
chunks = list(blocks.split(2))
print(f"{model}: {blocks.shape[0]} x {seq_len} tokens, Fisher type {fisher_type!r}")

# %% [markdown]
# ## True vs empirical Fisher per layer type and per attention head

# %%
groups = {ft: cv.collect_group_fisher(lm, chunks, fisher_type=ft, seed=seed)
          for ft in ("true", "empirical")}
by_type = fl.fisher_by_layer_type(groups["true"], groups["empirical"])
by_head = fl.fisher_by_head(groups["true"], groups["empirical"])
io.write_parquet(out / "fisher_by_type.parquet", by_type)
io.write_parquet(out / "fisher_by_head.parquet", by_head)
section = fl.fisher_lm_section(by_type, by_head)
_ = save_figure(section.figure, "07_fisher_true_vs_empirical", folder=figdir)
print(section.sentence)
section.table

# %% [markdown]
# ## K-FAC factor spectra per block

# %%
kfac = cv.KFAC(lm, chunks, fisher_type=fisher_type, modules=modules_of_type(lm, kfac_types),
               n_samples=1 if fisher_type == "true" else None, seed=seed)
spectra = fl.kfac_spectra(kfac)
io.write_parquet(out / "kfac_spectra.parquet", spectra)
section = fl.kfac_section(kfac, spectra, "o_proj")
_ = save_figure(section.figure, "07_kfac_spectra", folder=figdir)
print(section.sentence)
section.table

# %% [markdown]
# ## Natural-gradient sanity check
# One step along `-(K + λI)⁻¹ g` and along `-g` (the K-FAC layers), loss on the same tokens.

# %%
natgrad = fl.natural_gradient_check(lm, chunks, kfac, damping=damping)
io.write_parquet(out / "natural_gradient.parquet", natgrad)
section = fl.natural_gradient_section(natgrad)
print(section.sentence)
section.table

# %% [markdown]
# ## Capacity: dense vs 50 % Wanda, and the Fisher damage of the pruning

# %%
del kfac
pruned = copy.deepcopy(lm)
wb.prune(pruned, "wanda", sparsity, calibration_tokens=calibration_tokens)
models = {"dense": lm, f"wanda {sparsity:.0%}": pruned}
weights = [f"{n}.weight" for n in modules_of_type(lm, None)]
fisher = {name: cv.diagonal_fisher(m, chunks, fisher_type=fisher_type, params=weights,
                                   seed=seed, chunk_size=2) for name, m in models.items()}
sharp = blocks[:1, :max(2, sharpness_tokens)]
capacity = pd.concat({name: cv.capacity_summary(m, chunks, fisher=fisher[name], seed=seed,
                                                fisher_type=fisher_type, sharpness_tokens=sharp,
                                                lanczos_tol=1e-2).value
                      for name, m in models.items()}, axis=1)
io.write_parquet(out / "capacity.parquet", capacity.reset_index())
named = {name: dict(m.named_parameters()) for name, m in models.items()}
damage = cv.fisher_weighted_damage(fisher["dense"], named["dense"], named[f"wanda {sparsity:.0%}"],
                                   fisher_b=fisher[f"wanda {sparsity:.0%}"], symmetric=True)
section = fl.capacity_section(capacity, damage)
print(section.sentence)
section.table

# %%
summary = dict(
    empirical_over_true_trace=float(by_type.empirical.sum() / by_type.true.sum()),
    natural_step_best_change=float(natgrad[natgrad.step == "natural"].change.min()),
    gradient_step_best_change=float(natgrad[natgrad.step == "gradient"].change.min()),
    capacity=capacity.to_dict(), damage=damage)
io.write_json(out / "summary.json", summary)
wb.write_manifest(out / "manifest.json", seed=seed, parameters=dict(
    model=model, corpus=corpus, tokens=tokens, seq_len=seq_len, fisher_type=fisher_type,
    n_calibration=n_calibration, sparsity=sparsity, damping=damping, kfac_types=kfac_types,
    sharpness_tokens=sharpness_tokens), summary=summary)
cols = list(capacity.columns)
print(f"Empirical/true Fisher trace {summary['empirical_over_true_trace']:.2f}; one natural "
      f"step changes the loss by {summary['natural_step_best_change']:+.4f} nats (gradient "
      f"step {summary['gradient_step_best_change']:+.4f}); {cols[1]} vs dense: Fisher trace "
      f"{capacity.loc['fisher_trace', cols[1]] / capacity.loc['fisher_trace', cols[0]]:.2f}x, "
      f"lambda_max {capacity.loc['lambda_max', cols[1]] / capacity.loc['lambda_max', cols[0]]:.2f}x, "
      f"PAC-Bayes complexity {capacity.loc['pac_bayes_complexity', cols[1]]:.3f} vs "
      f"{capacity.loc['pac_bayes_complexity', cols[0]]:.3f}; symmetric Fisher damage removes "
      f"{damage['normalized']:.1%} of the Fisher-weighted parameter norm.")
