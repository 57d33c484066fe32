"""Names of the curvature layer, declared once: Fisher types and curvature matrices.

* :class:`FisherType`: ``empirical`` (gradients at the data labels, the empirical Fisher
  of Kunstner et al. 2019) or ``true`` (labels sampled from the model's predictive
  distribution, the Fisher information). Every function of :mod:`workbench.curvature`
  that takes a Fisher type takes one of these two words (or the enum member).
* :data:`CURVATURE_MATRICES`: ``hessian``, ``ggn``, ``empirical_fisher``,
  ``true_fisher``, registered by :mod:`workbench.curvature.products` with their
  properties (``label``, ``psd``, ``fisher_type``, ``description``; labels only, no
  presentation: figure colours come from ``plots.style(name)`` keyed by the name). An
  entry is one of two shapes, each a type: :class:`OutputSpaceMatrix`
  (``sum_t w_t J_t^T M_t J_t``, given by ``M_t``: GGN, empirical and true Fisher) or
  :class:`BatchMatrix` (a product computed per batch in parameter space: the Hessian).
  Adding a matrix = one output-space function (or batch product) + one registration there
  + one test.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable

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


@dataclass(frozen=True)
class OutputSpaceMatrix:
    """A curvature matrix ``sum_t w_t J_t^T M_t J_t`` given by its output-space ``M_t``.

    ``J_t`` is the Jacobian of term ``t``'s outputs ``[C]`` w.r.t. the parameters and
    ``w_t`` its weight (see :mod:`workbench.curvature._problem`); two views of ``M_t``:

    Attributes:
        apply: ``(z, targets, w, loss_kind, JV, n_samples, generator) -> [K, n, C]``, the
            weighted product ``w_t M_t (J_t v_k)`` (matrix-free path); ``z`` ``[n, C]``
            detached outputs, ``JV`` ``[K, n, C]``.
        matrices: ``(z, targets, loss_kind, n_samples, generator) -> [n, C, C]`` (dense
            Jacobian path).
    """

    apply: Callable
    matrices: Callable


@dataclass(frozen=True)
class BatchMatrix:
    """A curvature matrix that is not of the output-space form, given by its product on
    one batch (the Hessian).

    Attributes:
        product: ``(model, loss_fn, loss_kind, params, batch, V, scale) -> [K, D]``, the
            batch's contribution ``M_batch V^T`` for ``V`` ``[K, D]``, every term of the
            batch weighted ``scale``.
    """

    product: Callable


#: The two shapes of a curvature-matrix entry.
MATRIX_TYPES = (OutputSpaceMatrix, BatchMatrix)


def output_space_matrices() -> tuple[str, ...]:
    """Names of the registered :class:`OutputSpaceMatrix` entries (registration order)."""
    return tuple(e.name for e in CURVATURE_MATRICES if isinstance(e.fn, OutputSpaceMatrix))


def register_matrix(name: str, matrix: OutputSpaceMatrix | BatchMatrix, **props: Any) -> None:
    """Register a curvature matrix in :data:`CURVATURE_MATRICES`.

    Raises:
        TypeError: ``matrix`` is neither an :class:`OutputSpaceMatrix` nor a
            :class:`BatchMatrix`.
        ValueError: A name registered twice or an undeclared property.
    """
    if not isinstance(matrix, MATRIX_TYPES):
        raise TypeError(f"curvature matrix {name!r} must be an OutputSpaceMatrix or a "
                        f"BatchMatrix, got {type(matrix).__name__}")
    CURVATURE_MATRICES.register(name, matrix, **props)


#: Curvature matrices (filled by :mod:`workbench.curvature.products`).
CURVATURE_MATRICES = Registry(
    "curvature matrix",
    argument="matrix",
    providers=("workbench.curvature.products",),
    defaults=dict(label=None, psd=False, fisher_type=None, description=""),
)
