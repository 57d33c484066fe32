"""Notebook 01 helpers against hand computations (numpy ranks, explicit sums)."""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from workbench.notebooks import fisher_ggn as fg
from workbench.notebooks.section import Section


def test_digits_classifier_holds_out_the_curvature_examples():
    from sklearn.datasets import load_digits

    prob = fg.digits_classifier(hidden=3, n_train=50, n_curvature=12, batch_size=5, epochs=2,
                                seed=3)
    assert [len(x) for x, _ in prob.batches] == [5, 5, 2]
    X, y = load_digits(return_X_y=True)
    perm = np.random.default_rng(3).permutation(len(X))  # independent: the rule by hand
    xs = torch.cat([x for x, _ in prob.batches]).numpy()
    assert np.allclose(xs, X[perm[50:62]] / 16.0)
    assert np.array_equal(torch.cat([t for _, t in prob.batches]).numpy(), y[perm[50:62]])
    assert 0.0 <= prob.test_accuracy <= 1.0 and prob.model[0].weight.shape == (3, 64)
    with pytest.raises(ValueError, match="n_train \\+ n_curvature"):
        fg.digits_classifier(n_train=1790, n_curvature=64)
    with pytest.raises(ValueError, match="hidden must be >= 1"):
        fg.digits_classifier(hidden=0)


def test_precision_table_is_check_by_dtype():
    checks = pd.DataFrame(dict(check=["a", "a", "b", "b"],
                               dtype=["float32", "float64", "float32", "float64"],
                               value=[1.0, 2.0, 3.0, 4.0]))
    t = fg.precision_table(checks)
    assert t.loc["a", "float32"] == 1.0 and t.loc["b", "float64"] == 4.0
    assert list(t.columns) == ["float32", "float64"]


def _ranks(v):
    r = np.empty(len(v))
    r[np.argsort(v)] = np.arange(len(v))
    return r


def test_diagonal_by_layer_against_sums_and_ranks():
    g = torch.Generator().manual_seed(0)
    names = ["model.layers.0.mlp.weight", "transformer.h.3.attn.weight", "lm_head.weight"]
    emp = {n: torch.rand(2, 3, generator=g) for n in names}
    true = {n: torch.rand(2, 3, generator=g) for n in names}
    df = fg.diagonal_by_layer(emp, true).set_index("name")
    assert df.layer.tolist() == [0, 3, -1]
    for n in names:
        e, f = emp[n].double().numpy().ravel(), true[n].double().numpy().ravel()
        assert df.loc[n, "numel"] == 6
        assert np.isclose(df.loc[n, "empirical"], e.sum()) and np.isclose(df.loc[n, "true"],
                                                                          f.sum())
        assert np.isclose(df.loc[n, "ratio"], e.sum() / f.sum())
        assert np.isclose(df.loc[n, "rel_diff"], np.linalg.norm(e - f) / np.linalg.norm(f))
        assert np.isclose(df.loc[n, "spearman"], np.corrcoef(_ranks(e), _ranks(f))[0, 1])
    with pytest.raises(ValueError, match="same parameter names"):
        fg.diagonal_by_layer(emp, {names[0]: true[names[0]]})
    with pytest.raises(ValueError, match="shapes differ"):
        fg.diagonal_by_layer({"a": torch.ones(2)}, {"a": torch.ones(3)})


def test_sections_return_table_figure_sentence():
    checks = pd.DataFrame(dict(
        check=["fisher_vs_ggn_rel_error"] * 2 + ["ef_vs_fisher_rel_fro",
                                                  "ef_over_fisher_trace_ratio"],
        dtype=["float64", "float32", "float64", "float64"], value=[1e-16, 2e-8, 0.5, 0.9]))
    m = torch.eye(3, dtype=torch.float64)
    sec = fg.fisher_ggn_section(checks, {"true_fisher": m, "ggn": m})
    assert isinstance(sec, Section) and sec.table.equals(fg.precision_table(checks))
    assert len(sec.figure.axes) == 4  # 2 heatmaps, colour bar, spectra
    assert "1.0e-16 (float64), 2.0e-08 (float32)" in sec.sentence and "0.50 away" in sec.sentence
    mc = pd.DataFrame(dict(n_samples=[1, 4, 1, 4], rel_error=[1.0, 0.4, 0.8, 0.6],
                           seed=[0, 0, 1, 1]))
    sec2 = fg.mc_section(mc, -0.5)
    assert np.allclose(sec2.table["mean"], [0.9, 0.5]) and "-0.500" in sec2.sentence
    hvp = pd.DataFrame(dict(k=[1, 1, 2], rel_error=[0.2, 0.4, 0.1]))
    sec3 = fg.hvp_section(hvp)
    assert sec3.figure is None and np.allclose(sec3.table["mean"], [0.3, 0.1])
    assert "0.3 on k = 1" in sec3.sentence and "0.1 on k = 2" in sec3.sentence
    layers = pd.DataFrame(dict(layer=[0, 0, 1], empirical=[1.0, 2.0, 3.0], true=[1.0, 1.0, 2.0],
                               ratio=[1.0, 2.0, 1.5], spearman=[0.1, 0.3, 0.5]))
    sec4 = fg.lm_diagonal_section(layers)
    assert sec4.table.loc[0, "empirical"] == 3.0 and sec4.table.loc[0, "ratio"] == 1.5
    assert "trace 1.50" in sec4.sentence and "0.30" in sec4.sentence
    for s in (sec, sec2, sec4):
        plt.close(s.figure)
