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
# # 01 · GGN, true Fisher and empirical Fisher
#
# For softmax cross-entropy the true Fisher equals the generalised Gauss-Newton matrix;
# the empirical Fisher (squared gradients at the data labels) is a different matrix.
# Part 1 checks this densely on a small MLP trained on scikit-learn's digits; part 2
# compares the diagonal empirical and true Fisher of the default language model.

# %% tags=["parameters"]
model = "smollm2-135m"       # language model of part 2
data = "wiki-excerpt"        # corpus of part 2
dtype = "float64"            # dtype of the dense matrices in part 1 (the table has both)
n_samples = 1                # sampled labels per token for the LM true Fisher
hidden = 8                   # digits MLP: 64 -> hidden -> 10
epochs = 100                 # full-batch Adam steps on the digits
n_curvature = 64             # held-out digits on which the curvature is measured
batch_size = 16              # curvature batches (the HVP averaging needs several)
mc_grid = [1, 4, 16, 64, 256]  # sampled labels S of the Monte Carlo Fisher
mc_seeds = 4
seq_len = 32                 # LM token blocks
n_blocks = 2
seed = 0
threads = 0                  # torch intra-op threads, 0 for the torch default
output_dir = "data/runs/fisher_ggn"
figures_dir = ""             # empty for figures/

# %%
import torch

import workbench as wb
from workbench import curvature as cv
from workbench.core import io, paths
from workbench.notebooks import fisher_ggn as fg
from workbench.experiments.analysis.plots import save_figure

if threads:
    torch.set_num_threads(int(threads))
wb.seed_everything(seed)
torch_dtype = {"float64": torch.float64, "float32": torch.float32}[dtype]
figdir = paths.resolve(figures_dir) if figures_dir else None
out = paths.resolve(output_dir)
prob = fg.digits_classifier(hidden=hidden, epochs=epochs, n_curvature=n_curvature,
                            batch_size=batch_size, seed=seed, dtype=torch_dtype)
D = cv.num_params(prob.model)
print(f"digits MLP 64-{hidden}-10: D = {D} parameters, train acc {prob.train_accuracy:.3f}, "
      f"held-out acc {prob.test_accuracy:.3f}, {n_curvature} curvature examples")

# %% [markdown]
# ## True Fisher = GGN, and how the empirical Fisher differs (float64 and float32)

# %%
checks = cv.verify_fisher_ggn(prob.model, prob.batches, hessian=False)
io.write_parquet(out / "verify.parquet", checks.astype({"value": float, "tolerance": float,
                                                        "passed": "boolean"}))
G = cv.dense_matrix_jacobian("ggn", prob.model, prob.batches)
F = cv.dense_matrix_jacobian("true_fisher", prob.model, prob.batches)
EF = cv.dense_matrix_jacobian("empirical_fisher", prob.model, prob.batches)
section = fg.fisher_ggn_section(checks, {"true_fisher": F, "empirical_fisher": EF, "ggn": G})
_ = save_figure(section.figure, "01_fisher_ef_matrices", folder=figdir)
print(section.sentence)
section.table

# %% [markdown]
# ## Monte Carlo Fisher: error against the number of sampled labels

# %%
mc = cv.mc_fisher_convergence(prob.model, prob.batches, n_samples_grid=mc_grid,
                              seeds=range(mc_seeds))
slope = cv.convergence_slope(mc)
io.write_parquet(out / "mc_convergence.parquet", mc)
section = fg.mc_section(mc, slope)
_ = save_figure(section.figure, "01_mc_fisher_convergence", folder=figdir)
print(section.sentence)

# %% [markdown]
# ## Averaging Hessian-vector products over more batches
# Error of `Hv` on `k` random batches against `Hv` on all of them (mean over repeats).

# %%
hvp = cv.hvp_variance_reduction(prob.model, prob.batches, n_repeats=4, seed=seed)
io.write_parquet(out / "hvp_averaging.parquet", hvp)
section = fg.hvp_section(hvp)
print(section.sentence)
section.table

# %% [markdown]
# ## Language model: diagonal empirical vs true Fisher per layer

# %%
lm, tokenizer = wb.load_model(model)
corpus = wb.load_corpus(data, seed=seed)
blocks = wb.token_blocks(tokenizer, corpus.split("validation"), seq_len, n_blocks=n_blocks,
                         seed=seed)
emp = cv.diagonal_fisher(lm, [blocks], fisher_type="empirical", chunk_size=1)
true = cv.diagonal_fisher(lm, [blocks], fisher_type="true", n_samples=n_samples, seed=seed,
                          chunk_size=1)
layers = fg.diagonal_by_layer(emp, true)
io.write_parquet(out / "lm_diagonal.parquet", layers)
section = fg.lm_diagonal_section(layers)
_ = save_figure(section.figure, "01_lm_diagonal_fisher_layers", folder=figdir)
print(section.sentence)
section.table

# %%
row = checks.set_index(["check", "dtype"]).value
summary = dict(
    fisher_vs_ggn_fp64=float(row[("fisher_vs_ggn_rel_error", "float64")]),
    fisher_vs_ggn_fp32=float(row[("fisher_vs_ggn_rel_error", "float32")]),
    ggn_fp32_vs_fp64=float(row[("ggn_fp32_vs_fp64_rel_error", "float32")]),
    ef_vs_fisher_rel_fro=float(row[("ef_vs_fisher_rel_fro", "float64")]),
    ef_over_fisher_trace=float(row[("ef_over_fisher_trace_ratio", "float64")]),
    mc_slope=slope,
    hvp_rel_error_by_k={int(k): float(v) for k, v in hvp.groupby("k").rel_error.mean().items()},
    lm_trace_ratio_ef_over_true=float(layers.empirical.sum() / layers.true.sum()),
    lm_median_spearman=float(layers.spearman.median()),
)
io.write_json(out / "summary.json", summary)
wb.write_manifest(out / "manifest.json", seed=seed, parameters=dict(
    model=model, data=data, dtype=dtype, n_samples=n_samples, hidden=hidden, epochs=epochs,
    n_curvature=n_curvature, batch_size=batch_size, seq_len=seq_len, n_blocks=n_blocks), summary=summary)
print(f"GGN vs true Fisher: {summary['fisher_vs_ggn_fp64']:.1e} (float64), "
      f"{summary['fisher_vs_ggn_fp32']:.1e} (float32); empirical Fisher is "
      f"{summary['ef_vs_fisher_rel_fro']:.2f} away (rel. Frobenius); MC slope {slope:.2f}; "
      f"LM: empirical/true trace {summary['lm_trace_ratio_ef_over_true']:.2f}.")
