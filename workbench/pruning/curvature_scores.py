"""Curvature-based score kinds and pruning methods, registered in
:mod:`workbench.pruning.registry`.

* ``obd_empirical`` / ``obd_true`` (Optimal Brain Damage with the empirical / true
  diagonal Fisher) are registered in :mod:`workbench.pruning.scores`.
* ``obs_kfac`` (this module): the Optimal Brain Surgeon saliency (Hassibi & Stork 1993)
  of removing weight ``q`` alone, ``s_q = w_q^2 / (2 [F^{-1}]_qq)``, with ``F`` the damped
  K-FAC block of the weight's layer, ``F = G (x) A + lambda I``
  (:class:`workbench.curvature.kfac.KFAC`, Fisher type ``true`` or ``empirical``,
  flavour ``expand`` or ``reduce``). ``[F^{-1}]_qq`` is read from the eigenbases of the
  factors, ``sum_{k,l} QG_{ok}^2 QA_{jl}^2 / (g_k a_l + lambda)``, without forming the
  ``[out * in]^2`` block (:meth:`KFAC.inverse_diagonal`). The damping is relative to the
  block's mean eigenvalue: ``lambda = damping * tr(G) tr(A) / (out * in)``. Only the
  saliency is used (the mask); the OBS weight update is not applied. Higher = more
  important, as for every kind.

Adding a kind here = one function + one ``SCORE_KINDS.register`` (+ a
``METHODS.register(name, score_method(name), ...)`` to prune by it) + one test.
"""

from __future__ import annotations

import torch

from workbench.core.checks import check_range
from workbench.curvature.kfac import KFAC
from workbench.pruning.calibration import batches_of
from workbench.pruning.masks import prunable_modules
from workbench.pruning.methods import score_method
from workbench.pruning.registry import METHODS, SCORE_KINDS


@SCORE_KINDS.register("obs_kfac", label="OBS (K-FAC)", needs_calibration=True,
                      description="w^2 / (2 [F^-1]_jj), damped K-FAC block")
def obs_kfac_scores(model, *, tokens, include=None, exclude=None, batch_size=8,
                    fisher_type: str = "true", n_samples: int | None = 1,
                    flavour: str = "expand", damping: float = 1e-2, seed: int = 0):
    """OBS saliency ``w^2 / (2 [F^{-1}]_jj)`` from the layer's damped K-FAC block.

    Args:
        fisher_type: ``"true"`` (default; ``n_samples`` sampled labels per token, ``None``
            = exact over the vocabulary: one backward pass per token id) or
            ``"empirical"`` (data labels; ``n_samples`` is ignored).
        flavour: ``"expand"`` or ``"reduce"`` (K-FAC weight-sharing flavour).
        damping: Relative damping (> 0): ``lambda = damping * mean eigenvalue`` of the
            layer's ``G (x) A``.
        seed: Seed of the sampled labels.
    """
    check_range("damping", damping, 0, lo_open=True)
    if fisher_type == "empirical":
        n_samples = None  # the empirical Fisher samples nothing
    modules = prunable_modules(model, include, exclude)
    mod_names = {p[: -len(".weight")]: p for p in modules}
    kfac = KFAC(model, batches_of(tokens, batch_size), fisher_type=fisher_type,
                n_samples=n_samples, flavour=flavour, seed=seed, modules=list(mod_names))
    out = {}
    for mname, pname in mod_names.items():
        A, G = kfac.factors[mname]
        lam = damping * float(torch.trace(G) * torch.trace(A)) / (G.shape[0] * A.shape[0])
        lam = lam if lam > 0 else damping
        inv_diag = kfac.inverse_diagonal(mname, lam)  # weight-shaped
        w = modules[pname].weight.detach().to(inv_diag.dtype)
        out[pname] = (0.5 * w.square() / inv_diag).float()
    return out


METHODS.register("obs_kfac", score_method("obs_kfac"), score_kind="obs_kfac",
                 needs_calibration=True, reusable_scores=True, default_scope="layer",
                 label="OBS saliency (K-FAC)",
                 description="lowest OBS saliency w^2 / [F^-1]_jj from K-FAC factors")
