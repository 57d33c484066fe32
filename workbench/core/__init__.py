"""Foundation layer: models, token data, evaluation, reproducibility, file I/O, paths.

Nothing here imports from the layers above (pruning, curvature, lottery, experiments).

Offline first: importing ``workbench.core`` sets ``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE``
and ``HF_DATASETS_OFFLINE`` (and ``HF_EVALUATE_OFFLINE``) to ``1`` (unless they are already set) so that a mistyped model
or corpus name fails at once instead of waiting on DNS lookups; set ``WORKBENCH_HUB=1``
to allow Hugging Face hub downloads.
"""

import os as _os

if _os.environ.get("WORKBENCH_HUB") != "1":
    for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE",
                 "HF_EVALUATE_OFFLINE"):
        _os.environ.setdefault(_var, "1")
