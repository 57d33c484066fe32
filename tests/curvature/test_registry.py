"""The curvature registry: names and labels only, each entry one of two matrix types."""

from __future__ import annotations

import pytest
import torch

from workbench.curvature import dense_matrix, dense_matrix_jacobian
from workbench.curvature.registry import (
    CURVATURE_MATRICES,
    FISHER_TYPES,
    BatchMatrix,
    OutputSpaceMatrix,
    output_space_matrices,
    register_matrix,
)

from . import cases


def test_entries_are_one_of_two_types_and_carry_no_presentation():
    kinds = {e.name: type(e.fn) for e in CURVATURE_MATRICES}
    assert kinds == {"hessian": BatchMatrix, "ggn": OutputSpaceMatrix,
                     "empirical_fisher": OutputSpaceMatrix, "true_fisher": OutputSpaceMatrix}
    assert output_space_matrices() == ("ggn", "empirical_fisher", "true_fisher")
    for e in CURVATURE_MATRICES:
        assert isinstance(e.props["label"], str) and e.props["label"]
        assert "color" not in e.props  # figure colours: plots.style(name)
        assert e.props["fisher_type"] in (None, *FISHER_TYPES)
    with pytest.raises(TypeError, match="OutputSpaceMatrix or a BatchMatrix"):
        register_matrix("plain_function", lambda *a: None, label="x")
    with pytest.raises(ValueError, match="unknown properties"):
        register_matrix("coloured", BatchMatrix(lambda *a: None), color="#000000")
    assert "coloured" not in CURVATURE_MATRICES and "plain_function" not in CURVATURE_MATRICES


def test_each_type_is_dispatched_by_the_products():
    """The batch product of the Hessian and the output-space matrices both reach
    ``dense_matrix``; the Jacobian path takes output-space matrices only."""
    model = cases.mlp(0, d_in=3, hidden=2, d_out=2)
    batches = [cases.classification_data(1, 5, shape=(3,), classes=2)]
    H = dense_matrix("hessian", model, batches)
    G = dense_matrix("ggn", model, batches)
    assert torch.allclose(H, H.T, atol=1e-10) and not torch.allclose(H, G)
    torch.testing.assert_close(dense_matrix_jacobian("ggn", model, batches), G)
    with pytest.raises(ValueError, match=r"\('ggn', 'empirical_fisher', 'true_fisher'\) for "
                                         "dense_matrix_jacobian"):
        dense_matrix_jacobian("hessian", model, batches)
