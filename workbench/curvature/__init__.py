"""Curvature of neural networks: GGN, Hessian, empirical and true Fisher.

Every quantity is a weighted sum over loss *terms* (examples of a classifier, predicted
tokens of a causal LM) with the normalisation of the loss (``mean`` over all active
terms of all batches, or ``sum``), and every one can be checked against a dense matrix:

* :mod:`.products`: matrix-free GGN / Hessian / empirical / true (exact or Monte Carlo)
  Fisher products over iterables of batches; :func:`dense_matrix` for small models.
* :mod:`.verify`: :func:`verify_fisher_ggn` (a pandas table of checks), Monte Carlo
  convergence, HVP variance reduction.
* :mod:`.diagonal`: diagonal empirical / true Fisher at LM scale.
* :mod:`.accumulator`: :class:`FisherAccumulator`, a per-task EMA of diagonal / group
  Fishers with low-precision storage.
* :mod:`.groups`: channel / input-channel / attention-head (GQA) group Fisher, reduced
  from a diagonal or collected directly with ``O(groups)`` memory; expansion back.
* :mod:`.perturb`: :func:`perturb_groups` (reversible noise on the top / random / bottom
  Fisher-ranked channels or heads at concentration C) and :func:`group_risk`.
* :mod:`.kfac`: :class:`KFAC` for linear layers with sequence inputs (expand / reduce),
  products, damped inverse, natural gradient of a language model; the layers it covers
  (:func:`~.kfac.default_modules`, :func:`~.kfac.modules_of_type`).
* :mod:`.spectrum`: Hutchinson trace, Lanczos top-k, effective rank, condition number.
* :mod:`.capacity`: Fisher-weighted damage, PAC-Bayes complexity, sharpness,
  :func:`capacity_summary`.
* :mod:`.registry`: the names: :class:`FisherType` (``empirical`` / ``true``) and
  ``CURVATURE_MATRICES`` (``hessian``, ``ggn``, ``empirical_fisher``, ``true_fisher``;
  each an :class:`~.registry.OutputSpaceMatrix` or a :class:`~.registry.BatchMatrix`).
* Private plumbing: :mod:`._problem` (terms, per-example slicing, the label-sampling rule
  of the true Fisher shared by diagonal, group and K-FAC, per-example functional calls),
  :mod:`._persample` (the per-example gradient iterator and hook-based squared
  gradients), :mod:`._storage` (low-precision storage and underflow warnings).
"""

from workbench.curvature.capacity import (
    capacity_summary,
    fisher_damage,
    fisher_weighted_damage,
    pac_bayes,
    sharpness,
)
from workbench.curvature.accumulator import FisherAccumulator
from workbench.curvature.diagonal import diagonal_fisher
from workbench.curvature.groups import collect_group_fisher, expand_groups, group_fisher
from workbench.curvature.kfac import KFAC, natural_gradient
from workbench.curvature.perturb import GroupPerturbation, group_risk, perturb_groups
from workbench.curvature.registry import CURVATURE_MATRICES, FISHER_TYPES, FisherType
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
    "CURVATURE_MATRICES",
    "FISHER_TYPES",
    "KFAC",
    "FisherAccumulator",
    "FisherType",
    "GroupPerturbation",
    "capacity_summary",
    "collect_group_fisher",
    "condition_number",
    "convergence_slope",
    "curvature_matmat",
    "dense_matrix",
    "dense_matrix_jacobian",
    "diagonal_fisher",
    "effective_rank",
    "empirical_fisher_vector_product",
    "expand_groups",
    "fisher_damage",
    "fisher_weighted_damage",
    "flat_params",
    "ggn_vector_product",
    "group_fisher",
    "group_risk",
    "hessian_vector_product",
    "hutchinson_trace",
    "hvp_variance_reduction",
    "lanczos_topk",
    "mc_fisher_convergence",
    "natural_gradient",
    "num_params",
    "pac_bayes",
    "param_names",
    "per_term_jacobian",
    "perturb_groups",
    "sharpness",
    "spectrum_summary",
    "subspace_alignment",
    "true_fisher_vector_product",
    "verify_fisher_ggn",
]
