"""Notebook ``08_fisher_uses``: uses of the Fisher (percolation, forgetting) as tables,
probes, figures and sections.

* :func:`percolation_table`: perplexity after :func:`~workbench.curvature.perturb_groups`
  at each concentration ``C`` for top / random / bottom groups and several noise seeds
  (the model is restored after every evaluation), next to the predicted increase (sum of
  risk scores); :func:`plot_percolation` draws mean perplexity vs ``C`` with error bars of
  one standard deviation over the seeds (colours:
  :func:`~workbench.experiments.analysis.plots.style` of ``top`` / ``random`` /
  ``bottom``).
* Forgetting (train on corpus A, then on corpus B): :class:`FisherProbe` is a
  ``train_masked(callback=...)`` callback that folds the diagonal Fisher of a batch of
  A-tokens into a :class:`~workbench.curvature.accumulator.FisherAccumulator` every ``every`` steps;
  :class:`DamageProbe` is the callback during training on B that records, every
  ``every`` steps, the Fisher-weighted damage ``sum_i F_A,i (theta_i - theta_A,i)^2``
  (:func:`~workbench.curvature.capacity.fisher_weighted_damage`) and the measured loss
  increase on held-out A-tokens; :func:`forgetting_correlation` gives Pearson and
  Spearman correlations (``scipy.stats``) and :func:`plot_forgetting` the scatter.
* Sections (:class:`~workbench.notebooks.section.Section`): :func:`percolation_section`,
  :func:`forgetting_section`.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from workbench.core.evaluate import evaluate_perplexity
from workbench.curvature.capacity import fisher_weighted_damage
from workbench.curvature.perturb import perturb_groups
from workbench.experiments.analysis.plots import style
from workbench.notebooks.section import Section


def mean_loss(model: nn.Module, tokens: Tensor, *, batch_size: int = 8) -> float:
    """Mean next-token NLL (nats/token) of ``model`` on ``tokens [n, seq]`` (no grad)."""
    was = model.training
    try:
        return math.log(evaluate_perplexity(model, tokens, batch_size=batch_size,
                                            progress=False).perplexity)
    finally:
        model.train(was)


def percolation_table(model: nn.Module, group_fisher: Mapping[str, Tensor], tokens: Tensor, *,
                      key: str = "channel", concentrations: Iterable[float] = (0.05,),
                      ranks: Iterable[str] = ("top", "random", "bottom"),
                      seeds: Iterable[int] = (0,), eps: float = 4.0,
                      batch_size: int = 8) -> pd.DataFrame:
    """Perplexity on ``tokens`` after perturbing each (rank, C, seed), model restored after each.

    Returns:
        One row per (rank, concentration, seed) plus a ``rank="none"`` row of the
        unperturbed model: ``rank, concentration, seed, n_groups, ppl, loss, increase``
        (measured loss increase, nats/token) and ``predicted`` (sum of the selected
        groups' risk scores, nats/token).
    """
    base = mean_loss(model, tokens, batch_size=batch_size)
    rows = [dict(rank="none", concentration=0.0, seed=-1, n_groups=0, ppl=math.exp(base),
                 loss=base, increase=0.0, predicted=0.0)]
    for rank in ranks:
        for c in concentrations:
            for s in seeds:
                with perturb_groups(model, group_fisher, key, float(c), eps, seed=int(s),
                                    rank=rank) as p:
                    loss = mean_loss(model, tokens, batch_size=batch_size)
                rows.append(dict(rank=rank, concentration=float(c), seed=int(s),
                                 n_groups=len(p.groups), ppl=math.exp(loss), loss=loss,
                                 increase=loss - base, predicted=p.predicted_increase))
    return pd.DataFrame(rows)


def plot_percolation(table: pd.DataFrame, title: str):
    """Mean perplexity vs concentration per rank, error bars = 1 sd over the seeds."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    base = table[table["rank"] == "none"].ppl
    pert = table[table["rank"] != "none"]
    n_seeds = pert.groupby(["rank", "concentration"]).seed.nunique().max()
    for rank, d in pert.groupby("rank", sort=False):
        g = d.groupby("concentration").ppl
        m, sd = g.mean(), g.std(ddof=1).fillna(0.0)
        ax.errorbar(m.index * 100, m.values, yerr=sd.values, marker="o", capsize=3,
                    color=style(rank).color, label=f"{rank} groups (mean ± 1 sd, "
                                                        f"{n_seeds} noise seeds)")
    if len(base):
        ax.axhline(float(base.iloc[0]), color="k", ls=":", lw=1, label="unperturbed")
    ax.set_xscale("log")
    ax.set_yscale("log")
    cs = sorted(pert.concentration.unique() * 100)
    ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.set_xticks(cs, [f"{c:g}" for c in cs])
    ax.set_xlabel("concentration C (% of groups perturbed, by group Fisher)")
    ax.set_ylabel("perplexity")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig, ax


class FisherProbe:
    """``train_masked`` callback: every ``every`` steps (and at the last step ``steps-1``
    when given), fold the diagonal empirical Fisher of the next ``batch`` rows of
    ``tokens`` (cycled) into ``accumulator``
    (:meth:`~workbench.curvature.accumulator.FisherAccumulator.update`)."""

    def __init__(self, accumulator, model: nn.Module, tokens: Tensor, *, every: int,
                 batch: int = 2, params: Any = None, task: str = "A",
                 last_step: int | None = None):
        if int(every) < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.acc, self.model, self.tokens = accumulator, model, tokens
        self.every, self.batch, self.params, self.task = int(every), int(batch), params, task
        self.last_step = last_step
        self.steps: list[int] = []
        self._next = 0

    def __call__(self, step: int) -> None:
        if (step + 1) % self.every and step != self.last_step:
            return
        n = self.tokens.shape[0]
        idx = [(self._next + i) % n for i in range(self.batch)]
        self._next = (self._next + self.batch) % n
        self.acc.update(self.model, [self.tokens[idx]], task=self.task, params=self.params,
                        chunk_size=self.batch)
        self.steps.append(step)


class DamageProbe:
    """``train_masked`` callback during training on B: every ``every`` steps record the
    Fisher-weighted damage w.r.t. ``theta_a`` under ``fisher_a`` and the loss on
    ``tokens_a`` minus ``loss_a`` (the loss of ``theta_a``)."""

    def __init__(self, model: nn.Module, fisher_a: Mapping[str, Tensor],
                 theta_a: Mapping[str, Tensor], tokens_a: Tensor, loss_a: float, *,
                 every: int, label: str = ""):
        if int(every) < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.model, self.fisher_a, self.theta_a = model, fisher_a, theta_a
        self.tokens_a, self.loss_a, self.every, self.label = tokens_a, loss_a, int(every), label
        self.rows: list[dict] = []

    def __call__(self, step: int) -> None:
        if (step + 1) % self.every:
            return
        named = {n: p.detach() for n, p in self.model.named_parameters() if n in self.fisher_a}
        d = fisher_weighted_damage(self.fisher_a, self.theta_a, named)
        loss = mean_loss(self.model, self.tokens_a)
        self.rows.append(dict(run=self.label, step=step + 1, damage=d["damage"],
                              predicted=0.5 * d["damage"], normalized=d["normalized"],
                              loss_a=loss, increase=loss - self.loss_a))


def forgetting_correlation(table: pd.DataFrame) -> dict[str, float]:
    """Pearson and Spearman correlation of the damage with the measured increase on A.

    Returns:
        ``{"n", "pearson_r", "pearson_p", "spearman_rho", "spearman_p",
        "predicted_over_measured"}`` (the last: median of ``0.5 * damage / increase``
        over points with a positive increase; NaN when none).
    """
    from scipy import stats

    x, y = table.damage.to_numpy(float), table.increase.to_numpy(float)
    out = dict(n=int(len(x)))
    if len(x) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
        pr, sr = stats.pearsonr(x, y), stats.spearmanr(x, y)
        out.update(pearson_r=float(pr[0]), pearson_p=float(pr[1]),
                   spearman_rho=float(sr[0]), spearman_p=float(sr[1]))
    else:
        out.update(pearson_r=float("nan"), pearson_p=float("nan"),
                   spearman_rho=float("nan"), spearman_p=float("nan"))
    pos = y > 0
    out["predicted_over_measured"] = (float(np.median(0.5 * x[pos] / y[pos])) if pos.any()
                                      else float("nan"))
    return out


def correlation_text(corr: Mapping[str, float]) -> str:
    """``"Pearson r = 0.93, Spearman ρ = 0.90, n = 12"``, or why there is no correlation
    (fewer than 3 points, or no spread in one of the two)."""
    if corr["pearson_r"] != corr["pearson_r"]:  # NaN
        return (f"no correlation: n = {corr['n']} points (needs >= 3 with spread in both "
                f"damage and increase)")
    return (f"Pearson r = {corr['pearson_r']:.2f}, Spearman ρ = {corr['spearman_rho']:.2f}, "
            f"n = {corr['n']}")


def plot_forgetting(table: pd.DataFrame, corr: Mapping[str, float], title: str):
    """Scatter of the Fisher-weighted damage vs the measured loss increase on A, per run."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for run, d in table.groupby("run", sort=False):
        ax.plot(d.damage, d.increase, marker="o", color=style(run).color,
                label=f"{run} (points: every probe step)")
    ax.set_xlabel("Fisher-weighted damage  Σ F_A (θ − θ_A)²  (F_A: EMA during training on A)")
    ax.set_ylabel("measured loss increase on A (nats/token)")
    ax.set_title(f"{title}\n{correlation_text(corr)}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig, ax


@torch.no_grad()
def restore_parameters(model: nn.Module, saved: Mapping[str, Tensor]) -> None:
    """Copy ``saved`` ``{name: tensor}`` back into the model's parameters (in place)."""
    named = dict(model.named_parameters())
    missing = [n for n in saved if n not in named]
    if missing:
        raise ValueError(f"saved: names not in the model: {missing[:3]}")
    for n, t in saved.items():
        named[n].copy_(t)


# ----------------------------------------------------------------------------- sections
def percolation_section(table: pd.DataFrame, title: str) -> Section:
    """Perplexity vs concentration for top / random / bottom groups.

    Args:
        table: Output of :func:`percolation_table`.
        title: Figure title (model, corpus, noise).

    Returns:
        Perplexity and predicted increase per concentration and rank (pivot);
        :func:`plot_percolation`; a sentence with the mean perplexities at the largest
        concentration.
    """
    pivot = table.pivot_table(index="concentration", columns="rank",
                              values=["ppl", "predicted"])
    fig, _ = plot_percolation(table, title)
    pert = table[table["rank"] != "none"]
    c = pert.concentration.max()
    at = pert[pert.concentration == c].groupby("rank", sort=False).ppl.mean()
    base = table[table["rank"] == "none"].ppl
    parts = ", ".join(f"{at[r]:.1f} ({r})" for r in at.index)
    unperturbed = f" (unperturbed {float(base.iloc[0]):.1f})" if len(base) else ""
    return Section(pivot, fig, f"At C = {c:.1%} of the groups, mean perplexity {parts}"
                               f"{unperturbed}.")


def forgetting_section(table: pd.DataFrame, corr: Mapping[str, float], title: str) -> Section:
    """Fisher-weighted damage vs measured loss increase on A during training on B.

    Args:
        table: The :attr:`DamageProbe.rows` of all runs as a DataFrame.
        corr: Its :func:`forgetting_correlation`.
        title: Figure title (first line; the correlations are added).

    Returns:
        ``table`` itself, :func:`plot_forgetting` and a sentence with the correlations.
    """
    fig, _ = plot_forgetting(table, corr, title)
    return Section(table, fig, f"Fisher-weighted damage vs measured loss increase on A: "
                               f"{correlation_text(corr)}.")
