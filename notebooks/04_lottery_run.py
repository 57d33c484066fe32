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
# # 04 · One lottery-ticket run: IMP with rewinding, and the fate of the super weights
#
# One (experiment, seed) cell of the seed-002 grid, fully described by the parameters
# below. The super weights (SW) of the starting model are detected first (Yu et al.
# 2024: coincident spikes at the MLP output projection), then iterative magnitude
# pruning runs: round 0 trains the dense model, every later round prunes, rewinds the
# surviving weights (`init`) and retrains `steps_per_round` steps with the mask enforced.
# Definitions: `help(workbench.lottery.imp)`. The defaults are a CPU smoke size; real budgets
# (1k-20k steps per round) are parameters for a GPU.

# %% tags=["parameters"]
model = "smollm2-135m"
corpus = "wiki-excerpt"
experiment = "scratch"        # experiment id label, e.g. "A1"
init = "pretrained"           # "pretrained" | "xavier" | "kaiming" | "rewind"
rewind_step = 0               # for init "rewind", rewind to the weights at this training step
schedule = "constant"         # "constant" | "gradual" | "oneshot"
prune_pct = 0.2               # constant: fraction of REMAINING weights pruned per round; oneshot: total
targets = None                # gradual: list of cumulative sparsities, e.g. [0.05, 0.10, 0.15, 0.20]
n_rounds = 3
scope = "global"              # "global" | "layer"
importance_kind = "magnitude"
steps_per_round = 4
lr = 1e-4
lr_schedule = "constant"      # "constant" | "warmup_cosine"
warmup_steps = 0
batch_size = 2
seq_len = 64
grad_accum = 1
n_val_blocks = 8
val_seq_len = 128
eval_pruned = True            # also evaluate right after prune + rewind (val_ppl_pruned)
protect_sw = False
control = "none"              # "none" | "positive" (train, never prune) | "negative" (aggressive pruning)
seed = 0
output_dir = "data/runs/scratch"

# %%
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

import workbench as wb
from workbench.core import io
from workbench.lottery import imp as lottery
from workbench.experiments import plots

SW_DETECT_BLOCKS, SW_DETECT_LEN = 2, 64  # detection input: 2 validation blocks of 64 tokens
t0 = time.perf_counter()
wb.seed_everything(seed)
lm, tokenizer = wb.load_model(model)
text = wb.load_corpus(corpus)  # fixed document split; `seed` drives batches and inits
train_blocks = wb.token_blocks(tokenizer, text.train, seq_len)
val_blocks = wb.token_blocks(tokenizer, text.validation, val_seq_len, n_blocks=n_val_blocks)
print(f"{model} on {next(lm.parameters()).device}; {train_blocks.shape[0]} training blocks of "
      f"{seq_len} tokens, {val_blocks.shape[0]} validation blocks of {val_seq_len}")

# %% [markdown]
# ## Super weights of the starting model

# %%
sw_ids = wb.token_blocks(tokenizer, text.validation, SW_DETECT_LEN, n_blocks=SW_DETECT_BLOCKS)
sws = wb.find_super_weights(lm, sw_ids)
sw_table = pd.DataFrame(sws, columns=["layer", "param", "row", "col", "in_channel",
                                      "out_channel", "value", "input_activation",
                                      "output_activation", "output_ratio", "iteration"])
sw_table

# %% [markdown]
# ## Iterative pruning, rewinding, retraining

# %%
out = Path(output_dir)
config = lottery.IMPConfig(
    init=init, rewind_step=rewind_step, schedule=schedule, prune_pct=prune_pct,
    targets=targets, n_rounds=n_rounds, scope=scope, importance_kind=importance_kind,
    steps_per_round=steps_per_round, lr=lr, lr_schedule=lr_schedule,
    warmup_steps=warmup_steps, batch_size=batch_size, grad_accum=grad_accum,
    protect_sw=protect_sw, control=control, seed=seed, eval_pruned=eval_pruned,
)
result = wb.run_imp(lm, train_blocks, val_blocks, config, super_weights=sws, output_dir=out,
                    labels=dict(experiment=experiment, model=model, corpus=corpus))
records = result.records
records[["round", "target_sparsity", "sparsity", "val_ppl_pruned", "val_ppl", "train_loss",
         "sw_kept", "sw_total", "sw_value_drift", "mask_jaccard_prev"]]

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
plots.plot_sparsity_curve(records, "val_ppl", ax=axes[0])
plots.plot_sw_survival(records, ax=axes[1])
plots.save_figure(fig, "04_lottery_run", folder=out)

# %% [markdown]
# Tables, the robustness summary and the manifest go to `output_dir`; `records.parquet`
# is written last, so its presence means the run finished.

# %%
params = dict(model=model, corpus=corpus, experiment=experiment, seq_len=seq_len,
              n_val_blocks=n_val_blocks, val_seq_len=val_seq_len, **config.to_dict())
io.write_parquet(out / "losses.parquet", result.losses)
io.write_parquet(out / "layer_sparsity.parquet", result.layer_sparsity)
io.write_parquet(out / "super_weights.parquet", sw_table)
io.write_json(out / "summary.json", result.summary)
wb.write_manifest(out / "manifest.json", seed=seed, parameters=params,
                  seconds=time.perf_counter() - t0, resumed_from=result.resumed_from,
                  n_train_blocks=int(train_blocks.shape[0]))
io.write_parquet(out / "records.parquet", records)
last = records.iloc[-1]
print(f"{experiment} seed {seed}: sparsity {last['sparsity']:.3f} after {len(records) - 1} "
      f"rounds, val ppl {records['val_ppl'].iloc[0]:.2f} -> {last['val_ppl']:.2f}; "
      f"{int(last['sw_kept'])}/{int(last['sw_total'])} super weights kept; "
      f"winning-ticket score {result.summary['winning_ticket_score']:.3f}")
