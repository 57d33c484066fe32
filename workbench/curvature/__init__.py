"""Curvature of neural networks: GGN, Hessian, empirical and true Fisher.

Every quantity is a weighted sum over loss *terms* (examples of a classifier, predicted
tokens of a causal LM) with the normalisation of the loss (``mean`` over all active
terms of all batches, or ``sum``), and every one can be checked against a dense matrix:

* :mod:`.products`: matrix-free GGN / Hessian / empirical / true (exact or Monte Carlo)
  Fisher products over iterables of batches; :func:`dense_matrix` for small models.
* :mod:`.verify`: :func:`verify_fisher_ggn` (a pandas table of checks), Monte Carlo
  convergence, HVP variance reduction.
* :mod:`.diagonal`: diagonal empirical / true Fisher at LM scale, :class:`FisherAccumulator`.
* :mod:`.groups`: channel and attention-head group Fisher.
* :mod:`.kfac`: :class:`KFAC` factors, products, damped inverse, natural gradient.
* :mod:`.spectrum`: Hutchinson trace, Lanczos top-k, effective rank, condition number,
  Fisher-weighted damage.
* :mod:`.examples`: the digits classifier and LM tables/figures of notebook 01.
"""

from workbench.curvature.diagonal import FisherAccumulator, diagonal_fisher
from workbench.curvature.groups import group_fisher
from workbench.curvature.kfac import KFAC
from workbench.curvature.products import (
    curvature_matmat,
    dense_matrix,
    dense_matrix_jacobian,
    empirical_fisher_vector_product,
    flat_params,
    ggn_vector_product,
    hessian_vector_product,
    num_params,
    param_names,
    per_term_jacobian,
    true_fisher_vector_product,
)
from workbench.curvature.spectrum import (
    condition_number,
    effective_rank,
    fisher_weighted_damage,
    hutchinson_trace,
    lanczos_topk,
    spectrum_summary,
)
from workbench.curvature.verify import (
    convergence_slope,
    hvp_variance_reduction,
    mc_fisher_convergence,
    subspace_alignment,
    verify_fisher_ggn,
)

__all__ = [
    "KFAC",
    "FisherAccumulator",
    "condition_number",
    "convergence_slope",
    "curvature_matmat",
    "dense_matrix",
    "dense_matrix_jacobian",
    "diagonal_fisher",
    "effective_rank",
    "empirical_fisher_vector_product",
    "fisher_weighted_damage",
    "flat_params",
    "ggn_vector_product",
    "group_fisher",
    "hessian_vector_product",
    "hutchinson_trace",
    "hvp_variance_reduction",
    "lanczos_topk",
    "mc_fisher_convergence",
    "num_params",
    "param_names",
    "per_term_jacobian",
    "spectrum_summary",
    "subspace_alignment",
    "true_fisher_vector_product",
    "verify_fisher_ggn",
]
