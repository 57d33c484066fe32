"""Names shared by the notebook modules: transformer block of a parameter, curve labels."""

from __future__ import annotations

import re

from workbench.curvature.registry import CURVATURE_MATRICES

_LAYER = re.compile(r"\.layers\.(\d+)\.|\.h\.(\d+)\.")


def layer_index(name: str) -> int:
    """Transformer block index in a parameter or module name (``...layers.3.`` or
    ``...h.3.``), ``-1`` outside the blocks."""
    m = _LAYER.search(name)
    return int(m.group(1) or m.group(2)) if m else -1


def matrix_label(key: str) -> str:
    """Display label of a curvature matrix name (the registry's ``label``), else ``key``."""
    return CURVATURE_MATRICES.get(key).props["label"] if key in CURVATURE_MATRICES else key
