"""Adding a score kind, a pruning method or a curvature matrix is one registration.

Each test registers a new entry (in the test only: the registry is restored afterwards)
and checks that the public entry points take it with no other edit, against an
independent computation. The fourth extension point, a lottery factor (one field of
``IMPConfig``), is proved by ``tests/experiments/design/test_schema_field.py``.
"""

import pytest
import torch
from torch import nn

import workbench as wb
from workbench.core.registry import Registry
from workbench.curvature.products import curvature_matmat
from workbench.curvature.registry import CURVATURE_MATRICES, OutputSpaceMatrix, register_matrix
from workbench.experiments.analysis.plots import style
from workbench.lottery.schema import IMPConfig
from workbench.pruning.methods import score_method
from workbench.pruning.params import prunable_parameters
from workbench.pruning.registry import METHODS, SCORE_KINDS


def scoped(monkeypatch, registry: Registry) -> Registry:
    """Registrations made after this call are undone when the test ends."""
    len(registry)  # load the providers first
    monkeypatch.setattr(registry, "_entries", dict(registry._entries))
    return registry


def squared_scores(model, *, tokens=None, include=None, exclude=None, batch_size=8):
    """``w^2`` of every prunable weight (the test's new score kind)."""
    return {n: p.detach().float() ** 2
            for n, p in prunable_parameters(model, include, exclude).items()}


def test_a_score_kind_is_one_registration(monkeypatch, tiny_llama):
    model, _ = tiny_llama
    scoped(monkeypatch, SCORE_KINDS).register("squared", squared_scores, label="w²")
    scores = wb.importance(model, "squared")
    weights = dict(model.named_parameters())
    reference = wb.importance(model, "magnitude")
    assert set(scores) == set(reference)
    for name, s in scores.items():
        torch.testing.assert_close(s, weights[name].detach().float() ** 2)
    # the lottery schema takes it as a design value, from the registry
    assert IMPConfig(score_kind="squared").score_kind == "squared"
    with pytest.raises(ValueError, match="score_kind"):
        IMPConfig(score_kind="cubed")


def test_a_pruning_method_is_one_registration(monkeypatch, tiny_llama):
    model, _ = tiny_llama
    scoped(monkeypatch, SCORE_KINDS).register("squared", squared_scores, label="w²")
    scoped(monkeypatch, METHODS).register(
        "squared", score_method("squared"), score_kind="squared", label="w² (test)")
    dense = {n: p.detach().clone() for n, p in model.named_parameters()}
    try:
        masks = wb.prune(model, "squared", 0.5).masks
        # w^2 ranks like |w|: the masks equal magnitude's, computed on the same weights
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(dense[n])
        reference = wb.prune(model, "magnitude", 0.5).masks
        assert set(masks) == set(reference)
        for name in masks:
            assert torch.equal(masks[name], reference[name])
            assert 0.45 < 1 - masks[name].float().mean().item() < 0.55
    finally:
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(dense[n])
    # figures give the new name a look of its own (keyed by the name)
    assert style("squared").color == style("squared").color
    assert style("squared") != style("magnitude")


def _gram_apply(z, tgt, w, lkind, JV, n_samples, gen):
    """``M_t = I``: the products ``w_t J_t v``."""
    return w.unsqueeze(-1) * JV


def _gram_matrices(z, tgt, lkind, n_samples, gen):
    return torch.eye(z.shape[-1], dtype=z.dtype).expand(z.shape[0], -1, -1)


def test_a_curvature_matrix_is_one_registration(monkeypatch):
    """``J^T J / N`` (the Gauss-Newton matrix with an identity output Hessian) registered
    as an output-space matrix, multiplied by the generic product, equals the dense matrix
    built from ``torch.func.jacrev`` by hand."""
    scoped(monkeypatch, CURVATURE_MATRICES)
    register_matrix("jacobian_gram", OutputSpaceMatrix(_gram_apply, _gram_matrices),
                    label="JᵀJ", psd=True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 5)).double()
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 5, (6,))
    V = torch.randn(2, sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    product = curvature_matmat("jacobian_gram", model, [(x, y)], V)

    names = [n for n, _ in model.named_parameters()]
    params = {n: p.detach() for n, p in model.named_parameters()}

    def outputs(flat):
        chunks, start = {}, 0
        for n in names:
            chunks[n] = flat[start:start + params[n].numel()].view_as(params[n])
            start += params[n].numel()
        return torch.func.functional_call(model, chunks, (x,))  # [N, C]

    flat = torch.cat([params[n].reshape(-1) for n in names])
    J = torch.func.jacrev(outputs)(flat)  # [N, C, D]
    dense = torch.einsum("ncd,nce->de", J, J) / x.shape[0]  # mean cross-entropy: 1/N
    torch.testing.assert_close(product, V @ dense.T)
