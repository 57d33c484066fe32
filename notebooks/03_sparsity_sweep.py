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
# # 03 · How fast does quality fall as sparsity rises, and which differences are real?
#
# One-shot pruning of the block linear layers with several methods (any registered in
# `workbench.pruning.registry.METHODS`), layer-sparsity allocations (uniform, OWL) and
# sparsity patterns (unstructured levels and N:M), each repeated over **calibration
# seeds** (different random train windows per seed, Wanda's protocol) from the same
# dense weights. Every run is scored by validation perplexity and, when
# `zeroshot_task` is set, zero-shot accuracy on a local lm-eval task (the shipped
# `wiki_lastword`: LAMBADA-style last-word prediction on held-out text). Method and
# allocation differences are tested paired by calibration seed (t-test, Wilcoxon, d_z,
# Holm over all comparisons).

# %% tags=["parameters"]
model = "smollm2-135m"  # type: str
corpus = "wiki-excerpt"  # type: str
methods = ["magnitude", "wanda", "wanda_obs", "sparsegpt"]  # type: list[@method]
allocations = ["uniform"]  # type: list[@allocation]
sparsities = [0.3, 0.5, 0.6, 0.7, "2:4"]  # type: list[sparsity]
seeds = None  # type: list[int[0:]]|None  None: 3 calibration seeds on CPU, 5 with CUDA
n_calibration = 32  # type: int[1:]
seq_len = 128  # type: int[1:]  calibration window length
n_eval = 16  # type: int[1:]
eval_seq_len = 256  # type: int[1:]  context length of the perplexity evaluation
zeroshot_task = "wiki_lastword"  # type: str|None  None: no zero-shot accuracy; or a task YAML path
zeroshot_limit = 100  # type: int[1:]|None
batch_size = 8  # type: int[1:]
output_dir = "data/runs/03_sparsity_sweep"  # type: str
figure_name = "03_sparsity_sweep"  # type: str
experiment = "03_sparsity_sweep"  # type: str  set by the grid runner (workbench grid run <spec>)
seed = None  # type: int[0:]|None  set by the grid runner: this cell's one calibration seed (overrides seeds)
eval_card = None  # type: str|None  None: corpus' validation blocks; or a protocol card, e.g. "wikitext2"
calibration_card = None  # type: str|None  None: corpus' train windows; or e.g. "c4"
data = None  # type: str|None  folder with the cards' files (hub format), e.g. data/datasets
reproduce_table = None  # type: str|None  e.g. "wanda-llama2-7b": its methods and cards, ours next to theirs
reproduce_seq_len = 256  # type: int[1:]  window length of the reproduction (the table's: 4096)
reproduce_n_eval = 16  # type: int[1:]|None  evaluation windows of the reproduction (None: all)

# %%
import workbench as wb
from workbench.core import io, paths
from workbench.pruning import oneshot
from workbench.experiments.analysis import factors, oneshot_analysis
from workbench.experiments.running import runs
from workbench.experiments.analysis.plots import save_figure

if seed is not None:
    seeds = [seed]
lm, tokenizer = wb.load_model(model)
results = oneshot.oneshot_sweep(
    lm, tokenizer, corpus, methods=methods, sparsities=sparsities, allocations=allocations,
    seeds=seeds, n_calibration=n_calibration, calibration_seq_len=seq_len, n_eval=n_eval,
    eval_seq_len=eval_seq_len, zeroshot_task=zeroshot_task, zeroshot_limit=zeroshot_limit,
    batch_size=batch_size, model_name=model, eval_card=eval_card,
    calibration_card=calibration_card, data=None if data is None else paths.resolve(data))
results.insert(0, "experiment", experiment)
out = paths.resolve(output_dir)
table = factors.oneshot_significance(results)
io.write_parquet(out / "significance.parquet", table)
# records.parquet + summary.json + manifest.json, records last (a grid cell's completion mark)
parameters = dict(model=model, corpus=corpus, methods=methods, allocations=allocations,
                  sparsities=sparsities, seeds=sorted(set(results["seed"])),
                  n_calibration=n_calibration, seq_len=seq_len, n_eval=n_eval,
                  eval_seq_len=eval_seq_len, zeroshot_task=zeroshot_task,
                  zeroshot_limit=zeroshot_limit, eval_card=eval_card,
                  calibration_card=calibration_card, data=data)
runs.write_run(out, {"records": results}, summary=dict(findings=oneshot_analysis.findings(table)),
               manifest=dict(seed=seed, parameters=parameters,
                             skipped=results.attrs.get("skipped", [])))

# %% [markdown]
# Top: validation perplexity (geometric mean ×/÷ geometric sd over calibration seeds);
# bottom: zero-shot accuracy (mean ± sd), when `zeroshot_task` is set. Each seed a faint
# line; dashed: OWL allocation; grey dashed: the dense model. Each method keeps its colour
# and marker in every figure (`workbench.experiments.analysis.plots.style`); points at one
# sparsity are offset sideways, the ticks are at the true sparsities. The title names the
# model, corpus, evaluation protocol, n and profile.

# %%
fig, axes = oneshot_analysis.plot_oneshot(results, ["val_ppl", "zeroshot_acc"])
save_figure(fig, figure_name)

# %%
oneshot_analysis.results_table(results)

# %% [markdown]
# Paired tests by calibration seed: perplexity on its logarithm (differences are log
# ratios), accuracy as is; Holm-corrected over the whole table.

# %%
table[["factor", "baseline", "level_b", "context", "pattern", "level", "metric", "n",
       "mean_diff", "d_z", "p_t", "p_wilcoxon", "p_holm", "significant"]]

# %%
print(oneshot_analysis.findings(table))

# %% [markdown]
# ## Protocol and a published table
# Every row records its protocol (card, SHA-256 + count fingerprint of the evaluated
# tokens, seq_len, token-level perplexity, calibration card, zero-shot metric, lm-eval
# version); rows of different fingerprints are never compared. With `reproduce_table`
# set, the table's methods run with the table's cards on this model (files from `data`),
# ours next to theirs with the difference and our calibration-seed spread; a model that
# is not the table's is labelled.

# %%
protocol_columns = ["eval_card", "eval_fingerprint", "eval_context_length", "eval_n_blocks",
                    "eval_ppl_level", "calibration_card", "zeroshot_metric", "lm_eval_version"]
print(results[protocol_columns].drop_duplicates().to_string(index=False))
if reproduce_table is not None:
    from workbench.pruning import reproduce

    reproduction = reproduce.reproduce(
        reproduce_table, lm, tokenizer, data=None if data is None else paths.resolve(data),
        seq_len=reproduce_seq_len, n_eval=reproduce_n_eval, n_calibration=n_calibration,
        seeds=sorted(set(results["seed"])), batch_size=batch_size, model_name=model)
    io.write_parquet(out / "reproduction.parquet", reproduction.comparison)
    print(reproduction.text())
