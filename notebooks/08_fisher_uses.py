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
# # 08 · Uses of the Fisher: percolation and forgetting
#
# **Percolation** (seed 004): the group Fisher (per output channel, or per attention
# head) ranks the groups; `perturb_groups` puts Gaussian noise of `eps` × each group's
# weight sd on a fraction C of them, the top, random or bottom groups by Fisher, and
# restores the weights exactly after each evaluation. If the Fisher finds the fragile
# groups, perplexity rises much faster for the top groups than for random ones, and
# the bottom ones barely matter.
#
# **Forgetting**: train on corpus A while a `FisherAccumulator` (float16 storage)
# collects the diagonal Fisher of A through `train_masked(callback=...)`, then train on
# corpus B and compare the Fisher-weighted damage `Σ F_A (θ − θ_A)²` with the measured
# loss increase on held-out A text.

# %% tags=["parameters"]
model = "smollm2-135m"
corpus = "wiki-excerpt"      # percolation corpus, and corpus A of the forgetting run
corpus_b = "lee"             # corpus B of the forgetting run
seq_len = 64
fisher_tokens = 256          # tokens of the group Fisher that ranks the groups
eval_tokens = 512            # held-out tokens of the perplexities / losses on A
group_key = "channel"        # "channel", "input" or "head"
eps = 0.25                   # noise in units of each group's weight sd (all 30 layers
                             # ranked together: 4 x sd on 1 % of all rows is already fatal)
concentrations = [0.002, 0.01, 0.05]
seeds = [0, 1]               # noise seeds (error bars: 1 sd over them)
steps_a = 8                  # AdamW steps on corpus A
fisher_every = 4             # Fisher EMA update every this many steps on A
fisher_decay = 0.9
steps_b = 9                  # AdamW steps on corpus B, per learning rate
lrs_b = [1e-4, 3e-4]
probe_every = 3              # damage / loss-on-A probe every this many steps on B
lr_a = 1e-4
batch_size = 2
freeze_embeddings = True     # train the blocks only (less optimizer memory on CPU)
seed = 0
threads = 0                  # torch intra-op threads, 0 for the torch default
output_dir = "data/runs/08_fisher_uses"
figures_dir = ""             # empty for figures/

# %%
import pandas as pd
import torch

import workbench as wb
from workbench import curvature as cv
from workbench.core import io, paths
from workbench.curvature.kfac import modules_of_type
from workbench.experiments.analysis.plots import save_figure
from workbench.lottery.train import train_masked
from workbench.notebooks import fisher_uses as fu

if threads:
    torch.set_num_threads(int(threads))
wb.seed_everything(seed)
out = paths.resolve(output_dir)
figdir = paths.resolve(figures_dir) if figures_dir else None
lm, tokenizer = wb.load_model(model)
text = wb.load_corpus(corpus, seed=seed)
fisher_blocks = wb.token_blocks(tokenizer, text.split("train"), seq_len,
                                n_blocks=max(1, fisher_tokens // seq_len), seed=seed)
eval_blocks = wb.token_blocks(tokenizer, text.split("validation"), seq_len,
                              n_blocks=max(1, eval_tokens // seq_len), seed=seed)
print(f"{model}: Fisher on {fisher_blocks.shape[0]} x {seq_len} train tokens of {corpus}, "
      f"evaluation on {eval_blocks.shape[0]} x {seq_len} validation tokens")

# %% [markdown]
# ## Percolation: perplexity vs concentration for top / random / bottom groups

# %%
groups = cv.collect_group_fisher(lm, list(fisher_blocks.split(batch_size)), seed=seed)
perc = fu.percolation_table(lm, groups, eval_blocks, key=group_key,
                              concentrations=concentrations, seeds=seeds, eps=eps)
io.write_parquet(out / "percolation.parquet", perc)
n_groups = int(perc[perc["rank"] != "none"].n_groups.max() / max(concentrations))
section = fu.percolation_section(perc, f"{model}, {corpus} validation ({eval_blocks.numel()} "
                                        f"tokens, seq_len {seq_len}): noise {eps:g} × sd on C "
                                        f"of ~{n_groups} {group_key} groups")
_ = save_figure(section.figure, "08_percolation", folder=figdir)
print(section.sentence)
section.table

# %% [markdown]
# ## Forgetting: Fisher of A collected during training on A, damage after training on B

# %%
del groups
weights = [f"{n}.weight" for n in modules_of_type(lm, None)]
if freeze_embeddings:
    for n, p in lm.named_parameters():
        if "embed" in n or "lm_head" in n or "wte" in n or "wpe" in n:
            p.requires_grad_(False)
text_b = wb.load_corpus(corpus_b, seed=seed)
train_a = wb.token_blocks(tokenizer, text.split("train"), seq_len,
                          n_blocks=max(batch_size, steps_a * batch_size), seed=seed + 1)
train_b = wb.token_blocks(tokenizer, text_b.split("train"), seq_len,
                          n_blocks=max(batch_size, steps_b * batch_size), seed=seed + 1)
acc = cv.FisherAccumulator(decay=fisher_decay, storage_dtype=torch.float16)
probe = fu.FisherProbe(acc, lm, train_a, every=fisher_every, batch=batch_size,
                         params=weights, last_step=steps_a - 1)
res_a = train_masked(lm, train_a, steps=steps_a, batch_size=batch_size, lr=lr_a, seed=seed,
                     callback=probe, progress=False, desc="train A")
fisher_a = acc.get("A")
theta_a = {n: p.detach().clone() for n, p in lm.named_parameters() if p.requires_grad}
loss_a = fu.mean_loss(lm, eval_blocks)
print(f"trained {steps_a} steps on {corpus} (last loss {res_a.losses[-1]:.3f}); Fisher EMA "
      f"of {acc.steps('A')} updates at steps {[s + 1 for s in probe.steps]}, float16 state "
      f"{acc.state_bytes('A') / 2**20:.0f} MiB, underflow {acc.underflow_share('A'):.2%}; "
      f"held-out loss on A {loss_a:.3f}")
rows = []
for lr in lrs_b:
    fu.restore_parameters(lm, theta_a)
    dp = fu.DamageProbe(lm, fisher_a, theta_a, eval_blocks, loss_a, every=probe_every,
                          label=f"lr {lr:g} on {corpus_b}")
    train_masked(lm, train_b, steps=steps_b, batch_size=batch_size, lr=lr, seed=seed,
                 callback=dp, progress=False, desc=f"train B lr {lr:g}")
    rows += dp.rows
fu.restore_parameters(lm, theta_a)
forget = pd.DataFrame(rows)
io.write_parquet(out / "forgetting.parquet", forget)
corr = fu.forgetting_correlation(forget)
section = fu.forgetting_section(forget, corr, f"{model}: A = {corpus} ({steps_a} steps), "
                                              f"B = {corpus_b} ({steps_b} steps), seq_len "
                                              f"{seq_len}, loss on {eval_blocks.numel()} A "
                                              "tokens")
_ = save_figure(section.figure, "08_forgetting", folder=figdir)
print(section.sentence)
section.table

# %%
top = perc[(perc["rank"] == "top") & (perc.concentration == max(concentrations))].ppl.mean()
rnd = perc[(perc["rank"] == "random") & (perc.concentration == max(concentrations))].ppl.mean()
bot = perc[(perc["rank"] == "bottom") & (perc.concentration == max(concentrations))].ppl.mean()
summary = dict(base_ppl=float(perc.ppl.iloc[0]), top_ppl=float(top), random_ppl=float(rnd),
               bottom_ppl=float(bot), forgetting=corr, loss_a=loss_a,
               fisher_underflow=acc.underflow_share("A"))
io.write_json(out / "summary.json", summary)
wb.write_manifest(out / "manifest.json", seed=seed, parameters=dict(
    model=model, corpus=corpus, corpus_b=corpus_b, seq_len=seq_len,
    fisher_tokens=fisher_tokens, eval_tokens=eval_tokens, group_key=group_key, eps=eps,
    concentrations=concentrations, seeds=seeds, steps_a=steps_a, fisher_every=fisher_every,
    fisher_decay=fisher_decay, steps_b=steps_b, lrs_b=lrs_b, probe_every=probe_every,
    lr_a=lr_a, batch_size=batch_size, freeze_embeddings=freeze_embeddings), summary=summary)
print(f"At C = {max(concentrations):.0%} of the {group_key} groups (noise {eps:g} × sd, "
      f"{len(seeds)} seeds), perplexity is {top:.1f} for the top-Fisher groups vs {rnd:.1f} "
      f"random and {bot:.1f} bottom (unperturbed {summary['base_ppl']:.1f}). Across "
      f"{corr['n']} probes of training on {corpus_b}, Fisher-weighted damage vs the measured "
      f"loss increase on {corpus}: {fu.correlation_text(corr)}; 0.5 × damage / measured "
      f"increase has median {corr['predicted_over_measured']:.3g} (1 = the quadratic model "
      "is exact). "
      "The probes of one run are ordered in time, so part of the correlation is shared "
      "drift of both quantities with the number of steps.")
