"""The pruning layer's registries: importance kinds and pruning methods.

Each kind / method is registered exactly once, next to its implementation, with its
properties as data. Unknown names fail with the list of registered names.

* :data:`SCORE_KINDS`: ``fn(model, *, tokens, include, exclude, batch_size, **opts)
  -> {param name: float32 score}`` (higher = more important).
* :data:`METHODS`: one-shot pruning methods used by :func:`workbench.prune`.

Providers (modules whose import registers entries) are imported on first lookup.
"""

from __future__ import annotations

from workbench.core.registry import Registry

#: Importance score kinds (what a weight's importance *is*).
SCORE_KINDS = Registry(
    "importance kind",
    argument="kind",
    providers=("workbench.pruning.scores", "workbench.pruning.curvature_scores"),
    defaults=dict(needs_calibration=False, label=None, description=""),
)

#: One-shot pruning methods (how a mask is chosen and the weights changed).
METHODS = Registry(
    "pruning method",
    argument="method",
    providers=("workbench.pruning.methods", "workbench.pruning.curvature_scores"),
    defaults=dict(needs_calibration=False, default_scope="layer", reusable_scores=False,
                  label=None, color=None, description=""),
)
