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
# # 02 · Which weights matter? Importance scores and their masks
#
# Scores the default model's block linear layers with every score kind on a few
# calibration windows, then asks how similar the score kinds are: the Spearman rank
# correlation per layer, and the overlap (Jaccard index of the pruned sets) of the masks
# each score kind selects at the same sparsity.

# %% tags=["parameters"]
model = "smollm2-135m"
corpus = "wiki-excerpt"
score_kinds = ["magnitude", "gradient_norm", "taylor", "obd_empirical", "wanda", "hybrid"]
cal_windows = 8
cal_seq_len = 64
batch_size = 4
sparsity = 0.5
scope = "layer"
seed = 0
output_dir = "data/runs/02_importance"
figure_name = "02_importance_overlap"

# %%
import matplotlib.pyplot as plt
import seaborn as sns

import workbench as wb
from workbench.core import io, paths
from workbench.pruning.mask_report import overlap_matrix
from workbench.pruning.registry import SCORE_KINDS
from workbench.pruning.scores import score_correlations
from workbench.experiments.analysis.plots import save_figure

wb.seed_everything(seed)
lm, tokenizer = wb.load_model(model, device="cpu")
text = wb.load_corpus(corpus, seed=seed)
cal = wb.calibration_windows(tokenizer, text.train, cal_seq_len, cal_windows, seed=seed)
scores = {k: wb.importance(lm, k, tokens=cal, batch_size=batch_size) for k in score_kinds}
print(f"{len(scores[score_kinds[0]])} weight matrices scored with {len(score_kinds)} "
      f"score kinds on {cal_windows} x {cal_seq_len} calibration tokens")

# %% [markdown]
# Rank correlation between score kinds, averaged over layers (per-layer values in the table).

# %%
corr = score_correlations(scores, seed=seed)
corr_mean = corr.groupby(["score_kind_a", "score_kind_b"])["spearman"].agg(
    ["mean", "min", "max"])
corr_mean

# %%
masks = {k: wb.select_masks(s, sparsity, scope=scope) for k, s in scores.items()}
overlap = overlap_matrix(masks)
overlap

# %%
fig, ax = plt.subplots(figsize=(5.2, 4.2))
sns.heatmap(overlap.astype(float), annot=True, fmt=".2f", vmin=0, vmax=1, cmap="viridis",
            xticklabels=[SCORE_KINDS.get(k).label for k in overlap.columns],
            yticklabels=[SCORE_KINDS.get(k).label for k in overlap.index], ax=ax)
ax.set_title(f"Jaccard of pruned sets, {sparsity:.0%} {scope} sparsity")
figure_files = save_figure(fig, figure_name)

# %%
out = paths.resolve(output_dir)
io.write_parquet(out / "correlations.parquet", corr)
io.write_parquet(out / "overlap.parquet", overlap.reset_index(names="score_kind"))
wb.write_manifest(out / "manifest.json", seed=seed, parameters=dict(
    model=model, corpus=corpus, score_kinds=score_kinds, cal_windows=cal_windows,
    cal_seq_len=cal_seq_len, sparsity=sparsity, scope=scope))
pairs = overlap.stack()
off = pairs[[a != b for a, b in pairs.index]]
pair = off.idxmin() if len(off) else (score_kinds[0], score_kinds[0])
print(f"least similar masks at {sparsity:.0%}: {pair[0]} vs {pair[1]} "
      f"(Jaccard {off.min() if len(off) else 1.0:.2f}); wrote {out}")
