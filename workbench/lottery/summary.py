"""Robustness of an IMP run from its records.

The design notes ask for a sparsity-performance curve and a "sweet spot". With
``retained_r = ppl_0 / ppl_r`` (quality retained vs the dense round-0 model; 1 = as
good as dense, > 1 better):

* ``curve``: (sparsity, val_ppl, retained) per round;
* ``winning_ticket_score``: ``retained`` at the sparsest round (> 1: the ticket beats the
  dense model trained with the same budget); ``is_winning_ticket``: score >=
  ``1 - max_quality_loss``;
* ``optimal_sparsity``: the highest achieved sparsity with ``retained >= 1 -
  max_quality_loss`` (default 5% quality loss, i.e. perplexity at most ~5.3% higher);
* ``critical_sparsity``: the sparsity where ``retained`` first falls to 0.5 (perplexity
  doubles), linearly interpolated between rounds; ``None`` if it never does.
"""

from __future__ import annotations

import math
from typing import Any


def robustness_summary(records, *, max_quality_loss: float = 0.05,
                       metric: str = "val_ppl") -> dict[str, Any]:
    """Sparsity-performance curve, winning-ticket score, optimal and critical sparsity.

    Args:
        records: IMP records (DataFrame or list of dicts) with ``round``, ``sparsity``
            and ``metric``; round 0 is the dense reference.
        max_quality_loss: Allowed quality loss for ``optimal_sparsity`` (fraction, in
            ``[0, 1)``).
        metric: A lower-is-better column (perplexity).

    Returns:
        Dict with ``dense_<metric>``, ``curve`` (list of ``round, sparsity, <metric>,
        retained``), ``winning_ticket_score``, ``is_winning_ticket``,
        ``optimal_sparsity``, ``critical_sparsity`` (``None`` when never reached) and
        ``max_quality_loss``. See the module docstring for the definitions.
    """
    import pandas as pd

    if not 0.0 <= max_quality_loss < 1.0:
        raise ValueError(f"max_quality_loss must be in [0, 1), got {max_quality_loss!r}")
    df = pd.DataFrame(records).sort_values("round")
    if df.empty or metric not in df:
        raise ValueError(f"records must be non-empty and have a {metric!r} column")
    dense = float(df[metric].iloc[0])
    curve = []
    for _, row in df.iterrows():
        value = float(row[metric])
        retained = dense / value if value > 0 and math.isfinite(value) else 0.0
        curve.append(dict(round=int(row["round"]), sparsity=float(row["sparsity"]),
                          **{metric: value}, retained=retained))
    ok = [c["sparsity"] for c in curve if c["retained"] >= 1.0 - max_quality_loss]
    critical = None
    for a, b in zip(curve, curve[1:]):
        if a["retained"] > 0.5 >= b["retained"]:
            span = a["retained"] - b["retained"]
            frac = (a["retained"] - 0.5) / span if span > 0 else 0.0
            critical = a["sparsity"] + frac * (b["sparsity"] - a["sparsity"])
            break
    if critical is None and curve and curve[0]["retained"] <= 0.5:
        critical = curve[0]["sparsity"]
    sparsest = max(curve, key=lambda c: (c["sparsity"], c["round"]))
    score = sparsest["retained"]
    return {
        f"dense_{metric}": dense,
        "curve": curve,
        "winning_ticket_score": score,
        "is_winning_ticket": bool(score >= 1.0 - max_quality_loss),
        "optimal_sparsity": max(ok) if ok else 0.0,
        "critical_sparsity": critical,
        "max_quality_loss": max_quality_loss,
    }
