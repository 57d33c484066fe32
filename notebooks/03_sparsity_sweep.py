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
# # 03 · How fast does quality fall as sparsity rises?
#
# One-shot pruning of the default model's block linear layers at several sparsities with
# magnitude (global and per layer), Wanda, Wanda + SparseGPT-style correction and the
# gradient probe; validation perplexity of each, from the same dense weights.
# Calibration: random windows of the train split (Wanda's protocol); evaluation:
# validation blocks.

# %% tags=["parameters"]
model = "smollm2-135m"
corpus = "wiki-excerpt"
presets = ["magnitude-layer", "magnitude-global", "wanda", "wanda+correction", "gradprobe"]
sparsities = [0.0, 0.1, 0.3, 0.5, 0.6, 0.7]
cal_windows = 32
cal_seq_len = 128
eval_blocks = 16
eval_seq_len = 256
batch_size = 8
seed = 0
output_dir = "data/runs/03_sparsity_sweep"
figure_name = "03_sparsity_sweep"

# %%
from pathlib import Path

import matplotlib.pyplot as plt

import workbench as wb
from workbench.core import io
from workbench.experiments.plots import color, label, save_figure

wb.seed_everything(seed)
lm, tokenizer = wb.load_model(model, device="cpu")
text = wb.load_corpus(corpus, seed=seed)
cal = wb.calibration_windows(tokenizer, text.train, cal_seq_len, cal_windows, seed=seed)
val = wb.token_blocks(tokenizer, text.validation, eval_seq_len, n_blocks=eval_blocks, seed=seed)
results = wb.compare_methods(lm, presets, sparsities, calibration=cal, evaluation=val,
                             batch_size=batch_size)
results

# %%
fig, ax = plt.subplots(figsize=(5.5, 3.6))
for key, part in results.groupby("preset", sort=False):
    ax.plot(part["achieved_sparsity"], part["perplexity"], marker="o", color=color(key),
            label=label(key))
ax.set_yscale("log")
ax.set_xlabel("achieved sparsity of the block linear layers")
ax.set_ylabel("validation perplexity")
ax.set_title(f"{model}: {cal_windows}x{cal_seq_len} calibration, "
             f"{eval_blocks}x{eval_seq_len} evaluation tokens", fontsize=9)
ax.legend(fontsize=8)
paths = save_figure(fig, figure_name)

# %%
out = Path(output_dir)
io.write_parquet(out / "results.parquet", results)
wb.write_manifest(out / "manifest.json", seed=seed, parameters=dict(
    model=model, corpus=corpus, presets=presets, sparsities=sparsities,
    cal_windows=cal_windows, cal_seq_len=cal_seq_len, eval_blocks=eval_blocks,
    eval_seq_len=eval_seq_len))
half = results[results["sparsity"] == 0.5].set_index("preset")["perplexity"]
if len(half):
    print(f"at 50%: best {half.idxmin()} ({half.min():.1f}), worst {half.idxmax()} "
          f"({half.max():.1f}); wrote {out}")
