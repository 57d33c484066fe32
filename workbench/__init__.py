"""workbench: prune language models and study their curvature.

The top-level names are imported lazily, so ``import workbench`` is cheap and a
notebook can write ``workbench.load_model(...)``, ``workbench.perplexity(...)``, ...
Each concept has one public name; ``docs/GLOSSARY.md`` lists the names (token-id tensors
are ``tokens``, Fisher types ``empirical``/``true``, score kinds vs pruning methods, ...).
"""

from __future__ import annotations

import importlib
from typing import Any

from workbench.core.version import __version__ as __version__

#: public name -> module that defines it
_EXPORTS = {
    # foundation
    "load_model": "core.models",
    "forward_logits": "core.models",
    "load_corpus": "core.data",
    "token_blocks": "core.data",
    "calibration_windows": "core.data",
    "perplexity": "core.evaluate",
    "evaluate_zeroshot": "core.zeroshot",
    "seed_everything": "core.repro",
    "write_manifest": "core.repro",
    "environment_record": "core.repro",
    "run_notebook": "experiments.running.notebooks",
    # pruning (issue 4)
    "importance": "pruning.scores",
    "select_masks": "pruning.masks",
    "apply_masks": "pruning.masks",
    "prune": "pruning.methods",
    "sweep": "pruning.sweeps",
    "compare_methods": "pruning.sweeps",
    "gradprobe": "pruning.gradient_probe",
    "sparsity_report": "pruning.masks",
    "mask_overlap": "pruning.masks",
    "save_masks": "pruning.masks",
    "load_masks": "pruning.masks",
    "save_pruned": "pruning.checkpoint",
    "load_pruned": "pruning.checkpoint",
    "restore": "pruning.masks",
    "global_threshold": "pruning.threshold",
    # experiment grids, statistics, figures (issue 6)
    "load_spec": "experiments.design.specs",
    "run_grid": "experiments.running.grid",
    "load_runs": "experiments.analysis.aggregate",
    "load_summaries": "experiments.analysis.aggregate",
    "write_run": "experiments.running.runs",
    "summarize": "experiments.analysis.aggregate",
    "paired_test": "experiments.analysis.stats",
    "compare_factor": "experiments.analysis.factors",
    "significance_table": "experiments.analysis.factors",
    "plot_sparsity_curve": "experiments.analysis.plots",
    "plot_sw_survival": "experiments.analysis.plots",
    "plot_loss_curves": "experiments.analysis.plots",
    "plot_fisher_comparison": "experiments.analysis.plots",
    "save_figure": "experiments.analysis.plots",
    # lottery tickets and super weights (issue 5)
    "find_super_weights": "lottery.superweights",
    "super_weight_effect": "lottery.superweights",
    "track_super_weights": "lottery.superweights",
    "run_imp": "lottery.imp",
    "IMPConfig": "lottery.imp",
    "robustness_summary": "lottery.imp",
    "train_masked": "lottery.train",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'workbench' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
