"""Notebook ``01_fisher_ggn``: the digits problem, its tables, figures and sections.

* :func:`digits_classifier`: scikit-learn's 8x8 digits (shipped offline), an MLP trained
  briefly with Adam, and the batches on which the curvature is measured.
* :func:`precision_table`: the checks of :func:`~workbench.curvature.verify_fisher_ggn` in
  float32 and float64 side by side.
* :func:`diagonal_by_layer`: empirical vs true diagonal Fisher of a language model,
  summed per parameter and per transformer block.
* Figures (colours: :func:`~workbench.experiments.analysis.plots.style` of the curvature
  matrix names): :func:`plot_matrices_and_spectra`, :func:`plot_mc_convergence`,
  :func:`plot_layer_diagonals`.
* Sections (:class:`~workbench.notebooks.section.Section`): :func:`fisher_ggn_section`,
  :func:`mc_section`, :func:`hvp_section`, :func:`lm_diagonal_section`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from workbench.experiments.analysis.plots import style
from workbench.notebooks._common import layer_index, matrix_label
from workbench.notebooks.section import Section


@dataclass
class DigitsProblem:
    """A trained digits classifier and its curvature batches.

    Attributes:
        model: ``nn.Sequential`` MLP ``64 -> hidden -> 10`` in ``dtype``.
        batches: ``(x [b, 64], y [b])`` batches of held-out examples (curvature data).
        train_accuracy, test_accuracy: Accuracies of the trained model (fractions).
    """

    model: nn.Module
    batches: list
    train_accuracy: float
    test_accuracy: float


def digits_classifier(
    *,
    hidden: int = 8,
    n_train: int = 1000,
    n_curvature: int = 64,
    batch_size: int = 16,
    epochs: int = 30,
    lr: float = 1e-2,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> DigitsProblem:
    """Train a small tanh MLP on scikit-learn's digits (full-batch Adam, ``epochs`` steps).

    Pixels are scaled to ``[0, 1]``; the examples are shuffled with ``seed``, the first
    ``n_train`` train the model, the next ``n_curvature`` (not seen in training) form
    the curvature batches of ``batch_size``.

    Raises:
        ValueError: If the sizes do not fit the 1797 examples or are not positive.
    """
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    for name, v in (("hidden", hidden), ("n_train", n_train), ("n_curvature", n_curvature),
                    ("batch_size", batch_size)):
        if int(v) < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    if n_train + n_curvature > len(X):
        raise ValueError(f"n_train + n_curvature must be <= {len(X)}, got "
                         f"{n_train} + {n_curvature}")
    perm = np.random.default_rng(seed).permutation(len(X))
    X = torch.tensor(X[perm] / 16.0, dtype=dtype)
    y = torch.tensor(y[perm], dtype=torch.long)
    Xtr, ytr = X[:n_train], y[:n_train]
    Xc, yc = X[n_train:n_train + n_curvature], y[n_train:n_train + n_curvature]
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, 10)).to(dtype)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(int(epochs)):
        opt.zero_grad()
        loss_fn(model(Xtr), ytr).backward()
        opt.step()
    with torch.no_grad():
        acc_tr = float((model(Xtr).argmax(1) == ytr).double().mean())
        acc_c = float((model(Xc).argmax(1) == yc).double().mean())
    batches = [(Xc[i:i + batch_size], yc[i:i + batch_size])
               for i in range(0, n_curvature, batch_size)]
    return DigitsProblem(model, batches, acc_tr, acc_c)


def precision_table(verify: pd.DataFrame) -> pd.DataFrame:
    """Pivot a :func:`~workbench.curvature.verify_fisher_ggn` table to ``check x dtype``."""
    return verify.pivot_table(index="check", columns="dtype", values="value", aggfunc="first")


def diagonal_by_layer(empirical: Mapping[str, Tensor], true: Mapping[str, Tensor]) -> pd.DataFrame:
    """Compare two diagonal Fishers parameter by parameter.

    Args:
        empirical, true: ``{param name: tensor}`` with the same names and shapes.

    Returns:
        DataFrame, one row per parameter: ``name``, ``layer`` (transformer block index,
        -1 outside the blocks), ``numel``, ``empirical`` and ``true`` (sums of the
        diagonal = traces of the diagonal blocks), ``ratio`` (empirical / true),
        ``rel_diff`` (``||e - f|| / ||f||``) and ``spearman`` (rank correlation of the
        entries, the quantity that matters for importance rankings).

    Raises:
        ValueError: If the names or shapes differ.
    """
    from scipy.stats import spearmanr

    if set(empirical) != set(true):
        raise ValueError("empirical and true must have the same parameter names")
    rows = []
    for name in empirical:
        e = empirical[name].detach().double().cpu().reshape(-1)
        f = true[name].detach().double().cpu().reshape(-1)
        if e.shape != f.shape:
            raise ValueError(f"{name}: shapes differ ({tuple(e.shape)} vs {tuple(f.shape)})")
        rho = spearmanr(e.numpy(), f.numpy()).statistic if e.numel() > 1 else float("nan")
        rows.append(dict(name=name, layer=layer_index(name), numel=e.numel(),
                         empirical=float(e.sum()), true=float(f.sum()),
                         ratio=float(e.sum() / f.sum().clamp_min(1e-300)),
                         rel_diff=float((e - f).norm() / f.norm().clamp_min(1e-300)),
                         spearman=float(rho)))
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- figures
def plot_matrices_and_spectra(matrices: Mapping[str, Tensor], *, max_dim: int = 200):
    """Heatmaps (symmetric log colour scale, top-left ``max_dim`` block) and spectra.

    Args:
        matrices: ``{curvature matrix name: [D, D] matrix}``, e.g. ``{"true_fisher": F,
            "empirical_fisher": EF}`` (labels: the registry's ``label``; colours:
            :func:`~workbench.experiments.analysis.plots.style` of the name).
        max_dim: Size of the block shown in the heatmaps.

    Returns:
        ``(fig, axes)``: one heatmap per matrix and a last panel with the sorted
        eigenvalues of all of them (log scale, positive part).
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import SymLogNorm

    k = len(matrices)
    fig, axes = plt.subplots(1, k + 1, figsize=(3.3 * (k + 1), 3.2))
    mats = {n: m.detach().double().cpu() for n, m in matrices.items()}
    vmax = max(float(m.abs().max()) for m in mats.values())
    for ax, (name, m) in zip(axes, mats.items()):
        block = m[:max_dim, :max_dim].numpy()
        im = ax.imshow(block, cmap="RdBu_r", norm=SymLogNorm(vmax * 1e-4, vmin=-vmax, vmax=vmax))
        ax.set_title(matrix_label(name), fontsize=9)
        ax.grid(False)
    fig.colorbar(im, ax=axes[:k].tolist(), shrink=0.8)
    ax = axes[-1]
    for name, m in mats.items():
        ev = torch.linalg.eigvalsh((m + m.T) / 2).flip(0).numpy()
        ev = ev[ev > ev[0] * 1e-12]
        ax.plot(np.arange(1, ev.size + 1), ev, color=style(name).color,
                label=matrix_label(name))
    ax.set_yscale("log")
    ax.set_xlabel("eigenvalue index")
    ax.set_ylabel("eigenvalue")
    ax.legend(fontsize=7, frameon=False)
    return fig, axes


def plot_mc_convergence(df: pd.DataFrame, slope: float, ax=None):
    """Log-log relative error of the Monte Carlo Fisher against the number of labels.

    Args:
        df: Output of :func:`~workbench.curvature.mc_fisher_convergence`.
        slope: Fitted slope (shown in the legend next to the ``S^{-1/2}`` reference).
        ax: Axes to draw into (a new figure when ``None``). Colour: the true Fisher's.
    """
    import matplotlib.pyplot as plt

    color = style("true_fisher").color
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.2, 3.2))
    g = df.groupby("n_samples").rel_error
    x, m, s = g.mean().index.to_numpy(float), g.mean().to_numpy(), g.std().fillna(0).to_numpy()
    ax.scatter(df.n_samples, df.rel_error, s=8, alpha=0.4, color=color, lw=0)
    ax.errorbar(x, m, yerr=s, color=color, marker="o", ms=3,
                label=f"mean ± sd over {df.seed.nunique()} seeds (slope {slope:.2f})")
    ax.plot(x, m[0] * (x / x[0]) ** -0.5, ls="--", color="0.4", label=r"$\propto S^{-1/2}$")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sampled labels per example S")
    ax.set_ylabel(r"$\|F_S - F\|_F / \|F\|_F$")
    ax.legend(fontsize=7, frameon=False)
    return ax.figure, ax


def plot_layer_diagonals(df: pd.DataFrame, ax=None):
    """Per transformer block: trace of the empirical and the true diagonal Fisher.

    Args:
        df: Output of :func:`diagonal_by_layer` (rows outside blocks, ``layer = -1``,
            are left out).
        ax: Axes to draw into (a new figure when ``None``).
    """
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(4.6, 3.2))
    per = df[df.layer >= 0].groupby("layer")[["empirical", "true"]].sum()
    for col, key in (("true", "true_fisher"), ("empirical", "empirical_fisher")):
        ax.plot(per.index, per[col], marker="o", ms=3, color=style(key).color,
                label=matrix_label(key))
    ax.set_yscale("log")
    ax.set_xlabel("transformer block")
    ax.set_ylabel("trace of diagonal Fisher")
    ax.legend(fontsize=7, frameon=False)
    return ax.figure, ax


# ----------------------------------------------------------------------------- sections
def fisher_ggn_section(checks: pd.DataFrame, matrices: Mapping[str, Tensor]) -> Section:
    """True Fisher = GGN, and how far the empirical Fisher is (float64 and float32).

    Args:
        checks: Output of :func:`~workbench.curvature.verify_fisher_ggn` (both dtypes).
        matrices: ``{curvature matrix name: [D, D] dense matrix}`` for the figure.

    Returns:
        :func:`precision_table`, :func:`plot_matrices_and_spectra` and a sentence with
        the relative errors.
    """
    row = checks.set_index(["check", "dtype"]).value
    fig, _ = plot_matrices_and_spectra(matrices)
    sentence = (f"GGN vs true Fisher: relative error "
                f"{float(row[('fisher_vs_ggn_rel_error', 'float64')]):.1e} (float64), "
                f"{float(row[('fisher_vs_ggn_rel_error', 'float32')]):.1e} (float32); the "
                f"empirical Fisher is {float(row[('ef_vs_fisher_rel_fro', 'float64')]):.2f} "
                f"away (relative Frobenius), trace ratio empirical / true "
                f"{float(row[('ef_over_fisher_trace_ratio', 'float64')]):.2f}.")
    return Section(precision_table(checks), fig, sentence)


def mc_section(mc: pd.DataFrame, slope: float) -> Section:
    """Monte Carlo Fisher error against the number of sampled labels.

    Args:
        mc: Output of :func:`~workbench.curvature.mc_fisher_convergence`.
        slope: Its :func:`~workbench.curvature.convergence_slope`.

    Returns:
        Mean and sd of the relative error per ``n_samples``, :func:`plot_mc_convergence`
        and the slope sentence.
    """
    fig, _ = plot_mc_convergence(mc, slope)
    table = mc.groupby("n_samples").rel_error.agg(["mean", "std"])
    return Section(table, fig, f"log-log slope of the MC Fisher error: {slope:.3f} "
                               "(theory -0.5)")


def hvp_section(hvp: pd.DataFrame) -> Section:
    """Error of ``Hv`` on ``k`` batches against ``Hv`` on all of them (no figure).

    Args:
        hvp: Output of :func:`~workbench.curvature.hvp_variance_reduction`.

    Returns:
        Mean and sd of the relative error per ``k``, ``None`` and a sentence.
    """
    table = hvp.groupby("k").rel_error.agg(["mean", "std"])
    ks = table.index
    return Section(table, None, f"Hessian-vector products: relative error "
                                f"{table['mean'].iloc[0]:.3g} on k = {ks[0]} batch(es), "
                                f"{table['mean'].iloc[-1]:.3g} on k = {ks[-1]}.")


def lm_diagonal_section(layers: pd.DataFrame) -> Section:
    """Diagonal empirical vs true Fisher of a language model per transformer block.

    Args:
        layers: Output of :func:`diagonal_by_layer`.

    Returns:
        Per block: summed traces, median ratio and median Spearman correlation;
        :func:`plot_layer_diagonals`; a sentence with the overall trace ratio.
    """
    table = layers.groupby("layer")[["empirical", "true", "ratio", "spearman"]].agg(
        {"empirical": "sum", "true": "sum", "ratio": "median", "spearman": "median"})
    fig, _ = plot_layer_diagonals(layers)
    return Section(table, fig, f"Language model: empirical / true diagonal Fisher trace "
                               f"{float(layers.empirical.sum() / layers.true.sum()):.2f}, "
                               f"median Spearman correlation per parameter "
                               f"{float(layers.spearman.median()):.2f}.")
