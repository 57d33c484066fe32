"""Matrix-free products vs curvlinops 3.0.1 and torch.func dense references (float64)."""

from __future__ import annotations

import copy

import pytest
import torch
from curvlinops import (
    EFLinearOperator,
    FisherMCLinearOperator,
    GGNLinearOperator,
    HessianLinearOperator,
)
from torch import nn
from torch.func import functional_call, hessian, jacrev

from workbench.curvature import (
    curvature_matmat,
    dense_matrix,
    dense_matrix_jacobian,
    empirical_fisher_vector_product,
    ggn_vector_product,
    hessian_vector_product,
    true_fisher_vector_product,
)

from . import cases

PROBLEMS = cases.problems()
IDS = [p[0] for p in PROBLEMS]
OPS = {"ggn": GGNLinearOperator, "empirical_fisher": EFLinearOperator, "hessian": HessianLinearOperator}


def rel(a, b):
    return float((a - b).norm() / b.norm())


def curvlinops_dense(kind, model, loss_fn, batches):
    model = copy.deepcopy(model)  # curvlinops gets its own copy
    params = [p for p in model.parameters() if p.requires_grad]
    D = sum(p.numel() for p in params)
    op = OPS[kind](model, loss_fn, params, batches)
    return op @ torch.eye(D, dtype=torch.float64)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name,model,batches", PROBLEMS, ids=IDS)
def test_dense_matches_curvlinops(name, model, batches, reduction):
    loss_fn = nn.CrossEntropyLoss(reduction=reduction)
    for kind in ("ggn", "empirical_fisher", "hessian"):
        ours = dense_matrix(kind, model, batches, loss_fn=loss_fn)
        ref = curvlinops_dense(kind, model, loss_fn, batches)
        assert rel(ours, ref) < 1e-12, (kind, rel(ours, ref))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mse_matches_curvlinops(reduction):
    model = cases.mlp(3)
    X, _ = cases.classification_data(4, 8)
    Y = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    batches = [(X[:3], Y[:3]), (X[3:], Y[3:])]
    loss_fn = nn.MSELoss(reduction=reduction)
    for kind in ("ggn", "empirical_fisher", "hessian"):
        assert rel(dense_matrix(kind, model, batches, loss_fn=loss_fn),
                   curvlinops_dense(kind, model, loss_fn, batches)) < 1e-12
    # the exact Gaussian Fisher equals the GGN for MSE
    G = dense_matrix("ggn", model, batches, loss_fn=loss_fn)
    assert rel(dense_matrix("true_fisher", model, batches, loss_fn=loss_fn), G) < 1e-12


def _flat_loss_fn(model, batches, loss_fn):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    X = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])

    def unflat(theta):
        out, i = {}, 0
        for n, s in zip(names, shapes):
            out[n] = theta[i:i + s.numel()].reshape(s)
            i += s.numel()
        return out

    def outputs(theta):
        return functional_call(model, unflat(theta), (X,))

    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return theta, outputs, y


@pytest.mark.parametrize("name,model,batches", PROBLEMS, ids=IDS)
def test_against_torch_func_on_concatenated_data(name, model, batches):
    """Hessian and GGN built by torch.func on the concatenated data (brute force)."""
    loss_fn = nn.CrossEntropyLoss()
    theta, outputs, y = _flat_loss_fn(model, batches, loss_fn)
    H_ref = hessian(lambda t: loss_fn(outputs(t), y))(theta)
    assert rel(dense_matrix("hessian", model, batches), H_ref) < 1e-12
    out = outputs(theta).detach()
    J = jacrev(outputs)(theta).reshape(-1, theta.numel())  # [(n C), D]
    H_out = hessian(lambda z: loss_fn(z, y))(out).reshape(out.numel(), out.numel())
    G_ref = J.T @ H_out @ J
    assert rel(dense_matrix("ggn", model, batches), G_ref) < 1e-12
    assert rel(dense_matrix_jacobian("ggn", model, batches), G_ref) < 1e-12
    assert rel(dense_matrix_jacobian("empirical_fisher", model, batches),
               dense_matrix("empirical_fisher", model, batches)) < 1e-12


def test_channel_last_sequence_outputs():
    """[b, T, C] outputs with [b, T] targets equal the flattened model."""
    X, y = cases.sequence_data(7, 3)
    a = dense_matrix("ggn", cases.transformer(1), [(X, y)])
    b = dense_matrix("ggn", cases.transformer(1, flatten=True), [(X, y.reshape(-1))])
    assert rel(a, b) < 1e-14


@pytest.mark.parametrize("name,model,batches", PROBLEMS[:4], ids=IDS[:4])
def test_true_fisher_equals_ggn_for_cross_entropy(name, model, batches):
    G = dense_matrix("ggn", model, batches)
    F = dense_matrix("true_fisher", model, batches)
    assert rel(F, G) < 1e-12


def test_nll_on_log_probs_fisher_differs_from_ggn():
    """With log-softmax inside the model, NLLLoss is linear in its input: GGN = 0,
    while the true Fisher (a property of the predictive distribution) is unchanged."""
    base = cases.mlp(0)
    logmodel = nn.Sequential(*copy.deepcopy(base), nn.LogSoftmax(-1))
    X, y = cases.classification_data(1, 10)
    batches = [(X[:4], y[:4]), (X[4:], y[4:])]
    nll = nn.NLLLoss()
    G_nll = dense_matrix("ggn", logmodel, batches, loss_fn=nll)
    F_nll = dense_matrix("true_fisher", logmodel, batches, loss_fn=nll)
    F_ce = dense_matrix("true_fisher", base, batches)
    assert G_nll.abs().max() < 1e-14
    assert F_nll.norm() > 1e-3
    # the difference is all of the Fisher: ||F - G|| / ||F|| = 1
    assert float((F_nll - G_nll).norm() / F_nll.norm()) == pytest.approx(1.0, abs=1e-12)
    assert rel(F_nll, F_ce) < 1e-12  # same distribution, same Fisher
    # and the Hessian is the same function's Hessian either way
    assert rel(dense_matrix("hessian", logmodel, batches, loss_fn=nll),
               dense_matrix("hessian", base, batches)) < 1e-12


def test_vector_products_formats_and_batch_invariance():
    model = cases.mlp(2)
    X, y = cases.classification_data(3, 9)
    one, three = [(X, y)], [(X[:2], y[:2]), (X[2:5], y[2:5]), (X[5:], y[5:])]
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    for fn in (ggn_vector_product, hessian_vector_product, empirical_fisher_vector_product,
               true_fisher_vector_product):
        a, b = fn(model, one, v), fn(model, three, v)
        assert rel(b, a) < 1e-13
        d = fn(model, three, {n: t for n, t in zip(
            [n for n, _ in model.named_parameters()],
            torch.split(v, [p.numel() for p in model.parameters()]))} | {})
        assert isinstance(d, dict)
    # sum reduction: batches add up
    s = nn.CrossEntropyLoss(reduction="sum")
    parts = sum(ggn_vector_product(model, [b], v, loss_fn=s) for b in three)
    assert rel(ggn_vector_product(model, three, v, loss_fn=s), parts) < 1e-13


def test_dict_input_is_reshaped_per_parameter():
    model = cases.mlp(2)
    X, y = cases.classification_data(3, 5)
    v = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    out = ggn_vector_product(model, [(X, y)], v)
    flat = ggn_vector_product(model, [(X, y)], torch.cat([t.reshape(-1) for t in v.values()]))
    assert set(out) == set(v)
    assert rel(torch.cat([t.reshape(-1) for t in out.values()]), flat) < 1e-14


def test_monte_carlo_fisher_unbiased_and_matches_curvlinops_in_expectation():
    model = cases.mlp(4)
    X, y = cases.classification_data(5, 6)
    batches = [(X, y)]
    F = dense_matrix("true_fisher", model, batches)
    mean = sum(dense_matrix_jacobian("true_fisher", model, batches, n_samples=1, seed=s)
               for s in range(400)) / 400
    single = dense_matrix_jacobian("true_fisher", model, batches, n_samples=1, seed=0)
    assert rel(mean, F) < 0.12
    assert rel(mean, F) < rel(single, F) / 5
    # the matrix-free MC product and the Jacobian path use the same labels
    assert rel(dense_matrix("true_fisher", model, batches, n_samples=3, seed=7),
               dense_matrix_jacobian("true_fisher", model, batches, n_samples=3, seed=7)) < 1e-12
    m2 = copy.deepcopy(model)
    op = FisherMCLinearOperator(m2, nn.CrossEntropyLoss(), list(m2.parameters()), batches,
                                mc_samples=4000)
    ref = op @ torch.eye(F.shape[0], dtype=torch.float64)
    assert rel(ref, F) < 0.05


def test_lm_token_blocks_and_padding_mask():
    from workbench.core.models import load_model

    model, _ = load_model("tiny-llama", device="cpu", dtype="float64")
    ids = torch.randint(0, 256, (2, 6), generator=torch.Generator().manual_seed(0))
    params = ["lm_head.weight"]
    D = model.lm_head.weight.numel()
    v = torch.randn(D, dtype=torch.float64)
    a = ggn_vector_product(model, [ids], v, params=params)
    b = true_fisher_vector_product(model, [ids[:1], ids[1:]], v, params=params)
    assert rel(b, a) < 1e-10
    # padding: the masked positions contribute nothing (same as the unpadded block)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    padded = {"input_ids": ids, "attention_mask": mask}
    c = ggn_vector_product(model, [padded], v, params=params)
    d = ggn_vector_product(model, [ids[:1], {"input_ids": ids[1:, :4]}], v, params=params)
    assert rel(c, d) < 1e-10


def test_bad_inputs_raise_clear_errors():
    model = cases.mlp(0)
    X, y = cases.classification_data(0, 4)
    v = torch.zeros(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    with pytest.raises(ValueError, match="loss_fn"):
        ggn_vector_product(model, [(X, y)], v, loss_fn=nn.L1Loss())
    with pytest.raises(ValueError, match="reduction"):
        ggn_vector_product(model, [(X, y)], v, loss_fn=nn.CrossEntropyLoss(reduction="none"))
    with pytest.raises(ValueError, match="empty"):
        ggn_vector_product(model, [], v)
    with pytest.raises(ValueError, match="mismatched shapes"):
        ggn_vector_product(model, [(X, y[:3])], v)
    with pytest.raises(ValueError, match="V: expected shape"):
        ggn_vector_product(model, [(X, y)], v[:-1])
    with pytest.raises(ValueError, match=r"matrix must be one of \('hessian', 'ggn', "
                       r"'empirical_fisher', 'true_fisher'\).*got 'fisher'"):
        curvature_matmat("fisher", model, [(X, y)], v)  # the old name: no alias
    with pytest.raises(ValueError, match="matrix must be one of"):
        dense_matrix_jacobian("hessian", model, [(X, y)])
    with pytest.raises(ValueError, match="n_samples"):
        true_fisher_vector_product(model, [(X, y)], v, n_samples=0)
    bad = copy.deepcopy(model)
    with torch.no_grad():
        bad[0].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        ggn_vector_product(bad, [(X, y)], v + 1)
