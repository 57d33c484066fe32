"""Diagonal Fisher and the EMA accumulator vs dense matrices and brute-force loops."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workbench.curvature import FisherAccumulator, dense_matrix, diagonal_fisher
from workbench.models import load_model

from . import cases


def rel(a, b):
    return float((a - b).norm() / b.norm())


def flat(d):
    return torch.cat([t.reshape(-1) for t in d.values()])


@pytest.mark.parametrize("sizes", [(8,), (3, 5)])
def test_empirical_diagonal_is_diag_of_dense_ef(sizes):
    model = cases.mlp(0)
    X, y = cases.classification_data(1, 8)
    batches = cases.split(X, y, sizes)
    EF = dense_matrix("ef", model, batches)
    d = diagonal_fisher(model, batches, chunk_size=3)
    assert rel(flat(d).double(), EF.diagonal()) < 1e-6  # float32 accumulation
    # the squared *batch* gradient is a different (wrong) quantity
    g = torch.autograd.grad(nn.CrossEntropyLoss()(model(X), y), list(model.parameters()))
    assert rel(torch.cat([t.reshape(-1) for t in g]).pow(2), EF.diagonal()) > 0.1


def test_true_diagonal_is_unbiased_for_fisher_diagonal():
    model = cases.mlp(1)
    X, y = cases.classification_data(2, 6)
    F = dense_matrix("fisher", model, [(X, y)]).diagonal()
    d1 = flat(diagonal_fisher(model, [(X, y)], kind="true", n_samples=1, seed=0)).double()
    dS = flat(diagonal_fisher(model, [(X, y)], kind="true", n_samples=1000, seed=0)).double()
    assert rel(dS, F) < 0.08
    assert rel(dS, F) < rel(d1, F) / 4


def test_loop_and_vmap_agree_and_chunk_invariance():
    model = cases.transformer(0)
    X, y = cases.sequence_data(3, 5)
    ref = diagonal_fisher(model, [(X, y)], method="loop", chunk_size=None)
    for cs in (1, 2, None):
        for kind in ("empirical", "true"):
            a = diagonal_fisher(model, [(X, y)], kind=kind, chunk_size=cs, seed=4)
            b = diagonal_fisher(model, [(X, y)], kind=kind, chunk_size=5, seed=4)
            assert rel(flat(a), flat(b)) < 1e-6, (kind, cs)
        assert rel(flat(diagonal_fisher(model, [(X, y)], chunk_size=cs)), flat(ref)) < 1e-6


def test_lm_token_normalisation_padding_and_sequence_sum():
    """Empirical LM diagonal = squared per-*sequence* gradients / active tokens."""
    model, _ = load_model("tiny-llama", device="cpu", dtype="float64")
    ids = torch.randint(0, 256, (3, 6), generator=torch.Generator().manual_seed(0))
    params = ["lm_head.weight", "model.layers.0.self_attn.q_proj.weight"]
    mask = torch.ones_like(ids)
    mask[2, 3:] = 0
    d = diagonal_fisher(model, [{"input_ids": ids, "attention_mask": mask}], params=params,
                        chunk_size=2)
    named = dict(model.named_parameters())
    ref = {n: torch.zeros_like(named[n]) for n in params}
    for i in range(3):
        T = int(mask[i].sum())
        x = ids[i:i + 1, :T]
        logits = model(x, use_cache=False).logits[0, :-1]
        loss = nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum")
        gs = torch.autograd.grad(loss, [named[n] for n in params])
        for n, g in zip(params, gs):
            ref[n] += g.pow(2)
    n_tokens = 5 + 5 + 2
    for n in params:
        assert rel(d[n].double(), ref[n] / n_tokens) < 1e-5
    # normalisations
    e = diagonal_fisher(model, [{"input_ids": ids, "attention_mask": mask}], params=params,
                        normalize="example")
    assert rel(e[params[0]], d[params[0]] * n_tokens / 3) < 1e-6


def test_half_precision_model_accumulates_float32_and_storage_options():
    model, _ = load_model("tiny-llama", device="cpu", dtype="bfloat16")
    ids = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(1))
    p = ["lm_head.weight"]
    d = diagonal_fisher(model, [ids], params=p)
    assert d[p[0]].dtype == torch.float32 and torch.isfinite(d[p[0]]).all()
    assert d[p[0]].sum() > 0
    h = diagonal_fisher(model, [ids], params=p, storage_dtype=torch.float16, device="cpu")
    assert h[p[0]].dtype == torch.float16
    assert rel(h[p[0]].float(), d[p[0]]) < 1e-2


def test_clipping_bounds_each_per_example_gradient():
    model = cases.mlp(0)
    X, y = cases.classification_data(1, 6)
    d = diagonal_fisher(model, [(X, y)], clip=1e-3, normalize="none")
    # sum over entries of the squared clipped gradients <= n * clip^2
    assert float(flat(d).sum()) <= 6 * 1e-6 * (1 + 1e-5)
    big = diagonal_fisher(model, [(X, y)], clip=1e6, normalize="none")
    assert rel(flat(big), flat(diagonal_fisher(model, [(X, y)], normalize="none"))) < 1e-7


def test_ema_bias_correction_reproduces_constant():
    x = {"w": torch.tensor([1.0, 2.5, 1e-3]), "b": torch.tensor([3.0])}
    acc = FisherAccumulator(decay=0.9)
    for t in range(1, 8):
        acc.update_from(x, task="a")
        got = acc.get("a")
        for n in x:
            torch.testing.assert_close(got[n], x[n], rtol=1e-6, atol=0)
        raw = acc.get("a", bias_corrected=False)
        torch.testing.assert_close(raw["w"], x["w"] * (1 - 0.9**t), rtol=1e-6, atol=0)
    # separate tasks, and the EMA of a changing input weighs recent steps more
    acc.update_from({"w": torch.zeros(3), "b": torch.zeros(1)}, task="b")
    acc.update_from({"w": torch.ones(3), "b": torch.ones(1)}, task="b")
    assert acc.tasks == ["a", "b"] and acc.steps("b") == 2
    torch.testing.assert_close(acc.get("b")["b"], torch.tensor([1.0 / 1.9]))
    with pytest.raises(ValueError, match="task"):
        acc.get("c")
    with pytest.raises(ValueError, match="decay"):
        FisherAccumulator(decay=1.0)


def test_accumulator_update_calls_diagonal_fisher():
    model = cases.mlp(0)
    X, y = cases.classification_data(1, 4)
    acc = FisherAccumulator(decay=0.5, storage_dtype=torch.float16)
    f = acc.update(model, [(X, y)], task="t")
    got = acc.get("t")
    assert got["0.weight"].dtype == torch.float16
    assert rel(got["0.weight"].float(), f["0.weight"]) < 1e-3


def test_bad_inputs():
    model = cases.mlp(0)
    X, y = cases.classification_data(1, 4)
    with pytest.raises(ValueError, match="kind"):
        diagonal_fisher(model, [(X, y)], kind="exact")
    with pytest.raises(ValueError, match="normalize"):
        diagonal_fisher(model, [(X, y)], normalize="batch")
    with pytest.raises(ValueError, match="empty"):
        diagonal_fisher(model, [])
    with pytest.raises(ValueError, match="loss_fn"):
        diagonal_fisher(model, [(X, y)], loss_fn=nn.HuberLoss())
    with pytest.raises(ValueError, match="mismatched shapes"):
        diagonal_fisher(model, [(X, y[:2])], method="loop")
    with pytest.raises(ValueError, match="clip"):
        diagonal_fisher(model, [(X, y)], clip=0.0)
    Xn = X.clone()
    Xn[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        diagonal_fisher(model, [(Xn, y)])


@pytest.mark.parametrize("kind", ["empirical", "true"])
def test_hook_vmap_and_loop_paths_agree(kind):
    """nn.Linear parameters go through hooks (2-D and 3-D inputs), the rest through vmap."""
    for model, (X, y) in ((cases.mlp(2), cases.classification_data(3, 7)),
                          (cases.transformer(1), cases.sequence_data(4, 3))):
        ref = diagonal_fisher(model, [(X, y)], kind=kind, method="loop", seed=1)
        for method in ("auto", "vmap"):
            got = diagonal_fisher(model, [(X, y)], kind=kind, method=method, seed=1,
                                  chunk_size=2)
            assert rel(flat(got), flat(ref)) < 1e-6, method
    hooks = diagonal_fisher(cases.mlp(2), [cases.classification_data(3, 7)], method="hooks")
    assert set(hooks) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    with pytest.raises(ValueError, match="method='hooks'"):
        diagonal_fisher(cases.transformer(1), [cases.sequence_data(4, 3)], method="hooks")
    with pytest.raises(ValueError, match="method"):
        diagonal_fisher(cases.mlp(2), [cases.classification_data(3, 7)], method="backpack")
