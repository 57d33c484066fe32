"""Notebook ``07_fisher_lm``: Fisher per layer type and head, K-FAC spectra, natural
gradient and capacity of a language model, as tables, figures and sections.

* :func:`fisher_by_layer_type`, :func:`fisher_by_head`: true vs empirical group Fisher
  per (block, layer type) and per attention head; :func:`plot_fisher_lm`.
* :func:`kfac_spectra`: eigenvalue summaries of the K-FAC factors;
  :func:`plot_kfac_spectra`.
* :func:`natural_gradient_check`: one natural-gradient step against one gradient step.
* Sections (:class:`~workbench.notebooks.section.Section`): :func:`fisher_lm_section`,
  :func:`kfac_section`, :func:`natural_gradient_section`, :func:`capacity_section`.

The layers to cover are chosen with :func:`workbench.curvature.kfac.modules_of_type`.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from workbench.core.evaluate import causal_lm_loss
from workbench.core.models import forward_logits
from workbench.curvature.kfac import natural_gradient
from workbench.curvature.spectrum import effective_rank
from workbench.experiments.analysis.plots import style
from workbench.notebooks._common import layer_index, matrix_label
from workbench.notebooks.section import Section


def fisher_by_layer_type(true: Mapping[str, Tensor], empirical: Mapping[str, Tensor]
                         ) -> pd.DataFrame:
    """True vs empirical Fisher per (block, layer type) from two group Fishers.

    Args:
        true, empirical: Outputs of
            :func:`~workbench.curvature.groups.collect_group_fisher` (same keys).

    Returns:
        DataFrame ``layer, type, true, empirical, ratio`` (``type`` = the module's last
        name, e.g. ``q_proj``; values = traces of the diagonal Fisher blocks = sums of
        the ``|channel`` groups; ``ratio`` = empirical / true).
    """
    rows = []
    for key, t in true.items():
        name, _, kind = key.partition("|")
        if kind != "channel":
            continue
        mod = name.rsplit(".", 1)[0]
        rows.append(dict(layer=layer_index(name), type=mod.rsplit(".", 1)[-1],
                         true=float(t.sum()), empirical=float(empirical[key].sum())))
    df = pd.DataFrame(rows)
    df["ratio"] = df.empirical / df.true
    return df


def fisher_by_head(true: Mapping[str, Tensor], empirical: Mapping[str, Tensor]) -> pd.DataFrame:
    """Per attention head (combined q/k/v/o key, GQA-aware): ``layer, head, true,
    empirical`` from two group Fishers (outputs of
    :func:`~workbench.curvature.groups.collect_group_fisher`)."""
    rows = []
    for key, t in true.items():
        name, _, kind = key.partition("|")
        if kind != "head" or name.endswith(".weight"):
            continue
        for h, (a, b) in enumerate(zip(t.tolist(), empirical[key].tolist())):
            rows.append(dict(layer=layer_index(name + "."), head=h, true=a, empirical=b))
    return pd.DataFrame(rows)


def kfac_spectra(kfac) -> pd.DataFrame:
    """Per covered layer: largest eigenvalue, trace and effective rank of both K-FAC
    factors (``A``: input covariance, ``G``: output-gradient covariance).

    Args:
        kfac: A :class:`~workbench.curvature.kfac.KFAC` (``modules``, ``eigenvalues``).

    Returns:
        DataFrame ``module, layer, type, A_max, A_trace, A_erank, G_max, G_trace, G_erank``.
    """
    rows = []
    for n in kfac.modules:
        la, lg = kfac.eigenvalues(n)
        row = dict(module=n, layer=layer_index(n + "."), type=n.rsplit(".", 1)[-1])
        for f, ev in (("A", la), ("G", lg)):
            ev = ev.double().cpu().numpy()
            row.update({f"{f}_max": float(ev.max()), f"{f}_trace": float(ev.sum()),
                        f"{f}_erank": effective_rank(ev)})
        rows.append(row)
    return pd.DataFrame(rows)


def plot_fisher_lm(by_type: pd.DataFrame, by_head: pd.DataFrame):
    """Two panels: trace of the true and empirical Fisher per layer type (summed over
    blocks, log scale; colours: :func:`~workbench.experiments.analysis.plots.style` of
    ``true_fisher`` / ``empirical_fisher``), and the per-head ratio empirical / true
    across blocks."""
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9.0, 3.3))
    per = by_type.groupby("type")[["true", "empirical"]].sum()
    x = np.arange(len(per))
    for i, (col, key) in enumerate((("true", "true_fisher"), ("empirical", "empirical_fisher"))):
        a1.bar(x + (i - 0.5) * 0.4, per[col], width=0.4, color=style(key).color,
               label=matrix_label(key))
    a1.set_xticks(x, per.index, rotation=30, fontsize=8)
    a1.set_yscale("log")
    a1.set_ylabel("trace of diagonal Fisher")
    a1.legend(fontsize=7, frameon=False)
    if len(by_head):
        piv = by_head.assign(r=by_head.empirical / by_head.true).pivot(
            index="head", columns="layer", values="r")
        im = a2.imshow(np.log10(piv.to_numpy()), aspect="auto", cmap="RdBu_r",
                       vmin=-1, vmax=1)
        a2.set_xlabel("transformer block")
        a2.set_ylabel("attention head")
        a2.grid(False)
        fig.colorbar(im, ax=a2, label="log10 empirical / true")
    return fig, (a1, a2)


def plot_kfac_spectra(kfac, module_type: str = "o_proj"):
    """Sorted eigenvalues of ``A`` (left) and ``G`` (right) of every block's
    ``module_type`` layer, coloured by depth (viridis, a sequential colour-blind-safe
    map: depth is an order, not a name; log scale)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.3))
    names = [n for n in kfac.modules if n.rsplit(".", 1)[-1] == module_type]
    cmap = plt.get_cmap("viridis")
    for i, n in enumerate(names):
        la, lg = kfac.eigenvalues(n)
        for ax, ev in zip(axes, (la, lg)):
            ev = ev.flip(0).double().cpu().numpy()
            ev = ev[ev > ev[0] * 1e-12]
            ax.plot(np.arange(1, ev.size + 1), ev, color=cmap(i / max(len(names) - 1, 1)),
                    lw=1, label=f"block {layer_index(n + '.')}" if i in (0, len(names) - 1)
                    else None)
    for ax, f in zip(axes, ("A (inputs)", "G (output gradients)")):
        ax.set_yscale("log")
        ax.set_xscale("log")
        ax.set_xlabel("eigenvalue index")
        ax.set_title(f"{module_type}: K-FAC factor {f}", fontsize=9)
    axes[0].set_ylabel("eigenvalue")
    axes[0].legend(fontsize=7, frameon=False)
    return fig, axes


def natural_gradient_check(model: nn.Module, tokens, kfac, *, damping: float = 1e-3,
                           lrs=(1e-4, 1e-3, 1e-2), eval_tokens=None) -> pd.DataFrame:
    """Loss after one natural-gradient step ``theta - lr (K + damping I)^{-1} g`` and one
    plain gradient step ``theta - lr g`` of the block linears, per learning rate.

    The weights are restored afterwards. ``g`` is the mean-token-loss gradient on
    ``tokens``; the loss is measured on ``eval_tokens`` (default ``tokens``).

    Returns:
        DataFrame ``step, lr, loss_before, loss_after, change`` (``change < 0``: lower
        loss) plus the cosine between ``g`` and the natural direction in ``cosine``.
    """
    evals = tokens if eval_tokens is None else eval_tokens
    if not isinstance(evals, Tensor):  # a list of [b, seq] blocks
        evals = torch.cat(list(evals))

    def loss() -> float:
        with torch.no_grad():
            return float(causal_lm_loss(forward_logits(model, evals), evals))

    direction, grad, _ = natural_gradient(model, tokens, kfac=kfac, damping=damping)
    named = dict(model.named_parameters())
    saved = {n: named[n].detach().clone() for n in grad}
    dot = sum(float((grad[n].double() * direction[n].double()).sum()) for n in grad)
    nd = sum(float(direction[n].double().square().sum()) for n in grad) ** 0.5
    ng = sum(float(grad[n].double().square().sum()) for n in grad) ** 0.5
    before = loss()
    rows = []
    try:
        for step, d in (("natural", direction), ("gradient", grad)):
            for lr in lrs:
                with torch.no_grad():
                    for n in grad:
                        named[n].copy_(saved[n] - lr * d[n].to(saved[n].dtype))
                after = loss()
                rows.append(dict(step=step, lr=float(lr), loss_before=before, loss_after=after,
                                 change=after - before, cosine=dot / (nd * ng)))
    finally:
        with torch.no_grad():
            for n in grad:
                named[n].copy_(saved[n])
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- sections
def fisher_lm_section(by_type: pd.DataFrame, by_head: pd.DataFrame) -> Section:
    """True vs empirical Fisher per layer type and per attention head.

    Args:
        by_type, by_head: Outputs of :func:`fisher_by_layer_type` / :func:`fisher_by_head`.

    Returns:
        Per layer type: summed traces and their ratio; :func:`plot_fisher_lm`; a
        sentence with the overall trace ratio.
    """
    table = by_type.groupby("type")[["true", "empirical"]].sum().assign(
        ratio=lambda d: d.empirical / d.true)
    fig, _ = plot_fisher_lm(by_type, by_head)
    lo, hi = table.ratio.idxmin(), table.ratio.idxmax()
    return Section(table, fig, f"Empirical / true Fisher trace "
                               f"{float(by_type.empirical.sum() / by_type.true.sum()):.2f} "
                               f"over all layers, from {table.ratio[lo]:.2f} ({lo}) to "
                               f"{table.ratio[hi]:.2f} ({hi}).")


def kfac_section(kfac, spectra: pd.DataFrame, module_type: str = "o_proj") -> Section:
    """K-FAC factor spectra per block.

    Args:
        kfac: The :class:`~workbench.curvature.kfac.KFAC` of the spectra.
        spectra: Its :func:`kfac_spectra`.
        module_type: Layer type drawn in the figure.

    Returns:
        Medians per layer type of the largest eigenvalue and effective rank of ``A`` and
        ``G``; :func:`plot_kfac_spectra`; a sentence on the effective ranks.
    """
    table = spectra.groupby("type")[["A_max", "G_max", "A_erank", "G_erank"]].median()
    fig, _ = plot_kfac_spectra(kfac, module_type)
    return Section(table, fig, f"K-FAC over {len(spectra)} layers: median effective rank "
                               f"{float(spectra.A_erank.median()):.1f} of the input factor A, "
                               f"{float(spectra.G_erank.median()):.1f} of the output-gradient "
                               "factor G.")


def natural_gradient_section(natgrad: pd.DataFrame) -> Section:
    """One natural-gradient step against one gradient step (no figure).

    Args:
        natgrad: Output of :func:`natural_gradient_check`.

    Returns:
        ``natgrad`` itself, ``None`` and a sentence with the best loss changes.
    """
    nat = float(natgrad[natgrad.step == "natural"].change.min())
    grad = float(natgrad[natgrad.step == "gradient"].change.min())
    return Section(natgrad, None, f"Best loss change of one natural step {nat:+.4f} nats, "
                                  f"of one gradient step {grad:+.4f} nats (cosine of the "
                                  f"two directions {float(natgrad.cosine.iloc[0]):.3f}).")


def capacity_section(capacity: pd.DataFrame, damage: Mapping[str, float]) -> Section:
    """Capacity of the dense and the pruned model, and the Fisher damage of the pruning.

    Args:
        capacity: ``metric x model`` values of
            :func:`~workbench.curvature.capacity_summary` (dense model first).
        damage: Output of :func:`~workbench.curvature.fisher_weighted_damage`.

    Returns:
        ``capacity`` itself, ``None`` and a sentence comparing the two models.
    """
    cols = list(capacity.columns)
    ratio = capacity.loc["fisher_trace", cols[-1]] / capacity.loc["fisher_trace", cols[0]]
    return Section(capacity, None, f"{cols[-1]} vs {cols[0]}: Fisher trace {ratio:.2f}x; "
                                   f"the Fisher damage removes {damage['normalized']:.1%} of "
                                   "the Fisher-weighted parameter norm.")
