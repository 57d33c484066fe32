"""The pruning layer's registries: score kinds and pruning methods.

Each score kind / method is registered exactly once, next to its implementation, with its
properties as data. Unknown names fail with the list of registered names.

* :data:`SCORE_KINDS`: ``fn(model, *, tokens, include, exclude, batch_size, **opts)
  -> {param name: float32 score}`` (higher = more important). ``tokens`` is the
  calibration ``LongTensor[n, seq]`` (or ``None`` for kinds that need none). Declare
  kind-specific options as keyword-only parameters: :func:`workbench.importance` checks
  the options a user passes against the function's signature.
* :data:`METHODS`: one-shot pruning methods used by :func:`workbench.prune`:
  ``fn(request: workbench.pruning.methods.PruneRequest, **opts) -> (masks, info)``, the
  function prunes ``request.model`` in place and returns the keep-masks and a dict of
  extra information. Methods that only rank weights by a score kind are made with
  :func:`workbench.pruning.methods.score_method` (``METHODS.register("x",
  score_method("x"), score_kind="x", ...)``).

Properties (data, read by ``prune``, ``sweep``, the presets and the plots; colours are
not registry data: :func:`workbench.experiments.analysis.plots.style` keys them by name):

========================  ==================================================================
``needs_calibration``     calibration token ids are required
``label``                 display name (figures, tables)
``description``           one line: what it computes
``default_scope``         methods: scope used when ``scope=None``
``reusable_scores``       methods: scores do not depend on the sparsity, so ``sweep``
                          computes them once (needs ``score_kind``)
``score_kind``            methods: the :data:`SCORE_KINDS` name it ranks by, if any
``allocations``           methods: layer-sparsity allocations supported
                          (``"uniform"``, ``"owl"``)
========================  ==================================================================

Providers (modules whose import registers entries) are imported on first lookup.
"""

from __future__ import annotations

from workbench.core.registry import Registry

#: Score kinds (what a weight's importance *is*); chosen by the argument ``score_kind``.
SCORE_KINDS = Registry(
    "score kind",
    argument="score_kind",
    providers=("workbench.pruning.scores", "workbench.pruning.curvature_scores"),
    defaults=dict(needs_calibration=False, label=None, description=""),
)

#: One-shot pruning methods (how a mask is chosen and the weights changed).
METHODS = Registry(
    "pruning method",
    argument="method",
    providers=("workbench.pruning.methods", "workbench.pruning.curvature_scores"),
    defaults=dict(needs_calibration=False, default_scope="layer", reusable_scores=False,
                  score_kind=None, allocations=("uniform",), label=None, description=""),
)
