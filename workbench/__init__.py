"""workbench: prune language models and study their curvature.

The top-level names are imported lazily, so ``import workbench`` is cheap and a
notebook can write ``workbench.load_model(...)``, ``workbench.perplexity(...)``, ...
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> module that defines it
_EXPORTS = {
    # foundation
    "load_model": "models",
    "logits_of": "models",
    "forward_logits": "models",
    "load_corpus": "data",
    "token_blocks": "data",
    "calibration_windows": "data",
    "perplexity": "evaluate",
    "evaluate_perplexity": "evaluate",
    "seed_everything": "repro",
    "write_manifest": "repro",
    "environment_record": "repro",
    "run_notebook": "notebooks",
    # pruning (issue 4)
    "importance": "scores",
    "select_masks": "masks",
    "apply_masks": "masks",
    "prune": "pruning",
    "sweep": "pruning",
    "compare_methods": "pruning",
    "gradprobe": "gradient_probe",
    "sparsity_report": "masks",
    "mask_overlap": "masks",
    "save_masks": "masks",
    "load_masks": "masks",
    "restore": "masks",
    "global_threshold": "threshold",
    # experiment grids, statistics, figures (issue 6)
    "load_spec": "specs",
    "run_grid": "grid",
    "grid_status": "grid",
    "load_runs": "aggregate",
    "summarize": "aggregate",
    "summary_table": "aggregate",
    "paired_test": "stats",
    "compare_factor": "stats",
    "significance_table": "stats",
    "plot_sparsity_curve": "plots",
    "plot_sw_survival": "plots",
    "plot_loss_curves": "plots",
    "plot_fisher_comparison": "plots",
    "save_figure": "plots",
    # lottery tickets and super weights (issue 5)
    "find_super_weights": "superweights",
    "super_weight_effect": "superweights",
    "track_super_weights": "superweights",
    "run_imp": "lottery",
    "IMPConfig": "lottery",
    "robustness_summary": "lottery",
    "train_masked": "train",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'workbench' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
