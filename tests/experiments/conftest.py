"""Shared fixtures of the experiment-layer tests: one small multi-seed one-shot sweep."""

import pytest
import torch

import workbench as wb
from workbench.experiments.oneshot import oneshot_sweep

@pytest.fixture(autouse=True)
def figures_in_tmp(tmp_path, monkeypatch):
    """Figures saved without a folder go to the test's temporary folder, never to the
    project's ``figures/`` (``save_figure`` reads ``paths.FIGURES_DIR`` when called)."""
    from workbench.core import paths

    folder = tmp_path / "figures"
    monkeypatch.setattr(paths, "FIGURES_DIR", folder)
    return folder


SIZES = dict(n_calibration=2, calibration_seq_len=16, n_eval=2, eval_seq_len=32, batch_size=2)


@pytest.fixture(scope="module")
def sweep():
    """``(model, tokenizer, corpus, dense weights, rows)``: tiny-llama swept over magnitude
    and Wanda at 50 % and 2:4 with seeds 0 and 1 (run once per test module, on one thread).
    """
    model, tok = wb.load_model("tiny-llama", device="cpu", seed=0)
    dense = {n: p.detach().clone() for n, p in model.named_parameters()}
    corpus = wb.load_corpus("lee")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        df = oneshot_sweep(model, tok, corpus, methods=["magnitude", "wanda"],
                           sparsities=[0.5, "2:4"], seeds=[0, 1], progress=False, **SIZES)
        yield model, tok, corpus, dense, df
    finally:
        torch.set_num_threads(threads)
