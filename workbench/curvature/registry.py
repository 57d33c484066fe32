"""Names of the curvature layer, declared once: Fisher types and curvature matrices.

* :class:`FisherType`: ``empirical`` (gradients at the data labels, the empirical Fisher
  of Kunstner et al. 2019) or ``true`` (labels sampled from the model's predictive
  distribution, the Fisher information). Every function of :mod:`workbench.curvature`
  that takes a Fisher type takes one of these two words (or the enum member).
* :data:`CURVATURE_MATRICES`: ``hessian``, ``ggn``, ``empirical_fisher``,
  ``true_fisher``, registered by :mod:`workbench.curvature.products` with their
  properties (``label``, ``color`` (Okabe-Ito hex, used by the figures), ``psd``,
  ``fisher_type``, ``output_space``, ``description``).
  Adding a matrix = one output-space function + one registration there + one test.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from workbench.core.registry import Registry


class FisherType(str, Enum):
    """Fisher type: which labels the squared gradients are taken at."""

    EMPIRICAL = "empirical"
    TRUE = "true"


#: The Fisher types as plain strings.
FISHER_TYPES = tuple(t.value for t in FisherType)


def check_fisher_type(value: Any, argument: str = "fisher_type") -> FisherType:
    """The :class:`FisherType` of ``value`` (a member or its string).

    Raises:
        ValueError: Anything else (the message lists ``empirical`` and ``true``).
    """
    try:
        return FisherType(value)
    except ValueError:
        raise ValueError(f"{argument} must be one of {FISHER_TYPES}, got {value!r}") from None


#: Curvature matrices (filled by :mod:`workbench.curvature.products`).
CURVATURE_MATRICES = Registry(
    "curvature matrix",
    argument="matrix",
    providers=("workbench.curvature.products",),
    defaults=dict(label=None, color=None, psd=False, fisher_type=None, output_space=True,
                  description=""),
)
