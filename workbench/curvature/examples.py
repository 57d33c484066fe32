"""Ready-made problems and tables for the curvature notebook (``01_fisher_ggn``).

* :func:`digits_classifier`: scikit-learn's 8x8 digits (shipped offline), an MLP trained
  briefly with Adam, and the batches on which the curvature is measured.
* :func:`precision_table`: the same quantities in float32 and float64 side by side.
* :func:`diagonal_by_layer`: empirical vs true diagonal Fisher of a language model,
  summed per parameter and per transformer block.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn


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


_LAYER = re.compile(r"\.layers\.(\d+)\.|\.h\.(\d+)\.")


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
        m = _LAYER.search(name)
        layer = int(m.group(1) or m.group(2)) if m else -1
        rho = spearmanr(e.numpy(), f.numpy()).statistic if e.numel() > 1 else float("nan")
        rows.append(dict(name=name, layer=layer, numel=e.numel(), empirical=float(e.sum()),
                         true=float(f.sum()), ratio=float(e.sum() / f.sum().clamp_min(1e-300)),
                         rel_diff=float((e - f).norm() / f.norm().clamp_min(1e-300)),
                         spearman=float(rho)))
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- figures
# The curvature layer does not import the experiments layer: colours and labels come
# from the curvature-matrix registry (``color`` / ``label`` properties) unless given.
def _label(key: str, labels: Mapping[str, str] | None) -> str:
    from workbench.curvature.registry import CURVATURE_MATRICES

    if labels and key in labels:
        return labels[key]
    return CURVATURE_MATRICES.get(key).props["label"] if key in CURVATURE_MATRICES else key


def _color(key: str, colors: Mapping[str, str] | None, i: int = 0) -> str:
    from workbench.curvature.registry import CURVATURE_MATRICES

    if colors and key in colors:
        return colors[key]
    if key in CURVATURE_MATRICES and CURVATURE_MATRICES.get(key).props["color"]:
        return CURVATURE_MATRICES.get(key).props["color"]
    return f"C{i}"


def plot_matrices_and_spectra(matrices: Mapping[str, Tensor], *, max_dim: int = 200,
                              colors: Mapping[str, str] | None = None,
                              labels: Mapping[str, str] | None = None):
    """Heatmaps (symmetric log colour scale, top-left ``max_dim`` block) and spectra.

    Args:
        matrices: ``{curvature matrix name: [D, D] matrix}``, e.g. ``{"true_fisher": F,
            "empirical_fisher": EF}``.
        max_dim: Size of the block shown in the heatmaps.
        colors, labels: ``{name: colour}`` / ``{name: label}`` (defaults: the
            registry's ``color`` / ``label``).

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
        ax.set_title(_label(name, labels), fontsize=9)
        ax.grid(False)
    fig.colorbar(im, ax=axes[:k].tolist(), shrink=0.8)
    ax = axes[-1]
    for i, (name, m) in enumerate(mats.items()):
        ev = torch.linalg.eigvalsh((m + m.T) / 2).flip(0).numpy()
        ev = ev[ev > ev[0] * 1e-12]
        ax.plot(np.arange(1, ev.size + 1), ev, color=_color(name, colors, i),
                label=_label(name, labels))
    ax.set_yscale("log")
    ax.set_xlabel("eigenvalue index")
    ax.set_ylabel("eigenvalue")
    ax.legend(fontsize=7, frameon=False)
    return fig, axes


def plot_mc_convergence(df: pd.DataFrame, slope: float, ax=None, *, color: str | None = None):
    """Log-log relative error of the Monte Carlo Fisher against the number of labels.

    Args:
        df: Output of :func:`~workbench.curvature.mc_fisher_convergence`.
        slope: Fitted slope (shown in the legend next to the ``S^{-1/2}`` reference).
        color: Colour of the points and the mean curve (default: the true Fisher's).
    """
    import matplotlib.pyplot as plt

    color = color or _color("true_fisher", None)
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


def plot_layer_diagonals(df: pd.DataFrame, ax=None, *,
                         colors: Mapping[str, str] | None = None):
    """Per transformer block: trace of the empirical and the true diagonal Fisher.

    Args:
        df: Output of :func:`diagonal_by_layer` (rows outside blocks, ``layer = -1``,
            are left out).
        colors: ``{"true_fisher": colour, "empirical_fisher": colour}`` (default: the
            registry's colours).
    """
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(4.6, 3.2))
    per = df[df.layer >= 0].groupby("layer")[["empirical", "true"]].sum()
    for i, (col, key) in enumerate((("true", "true_fisher"), ("empirical", "empirical_fisher"))):
        ax.plot(per.index, per[col], marker="o", ms=3, color=_color(key, colors, i),
                label=_label(key, None))
    ax.set_yscale("log")
    ax.set_xlabel("transformer block")
    ax.set_ylabel("trace of diagonal Fisher")
    ax.legend(fontsize=7, frameon=False)
    return ax.figure, ax


# ----------------------------------------------------------------------------- notebook 07
def _layer_of(name: str) -> int:
    m = _LAYER.search(name)
    return int(m.group(1) or m.group(2)) if m else -1


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
        rows.append(dict(layer=_layer_of(name), type=mod.rsplit(".", 1)[-1],
                         true=float(t.sum()), empirical=float(empirical[key].sum())))
    df = pd.DataFrame(rows)
    df["ratio"] = df.empirical / df.true
    return df


def fisher_by_head(true: Mapping[str, Tensor], empirical: Mapping[str, Tensor]) -> pd.DataFrame:
    """Per attention head (combined q/k/v/o key, GQA-aware): ``layer, head, true,
    empirical`` from two group Fishers."""
    rows = []
    for key, t in true.items():
        name, _, kind = key.partition("|")
        if kind != "head" or name.endswith(".weight"):
            continue
        for h, (a, b) in enumerate(zip(t.tolist(), empirical[key].tolist())):
            rows.append(dict(layer=_layer_of(name + "."), head=h, true=a, empirical=b))
    return pd.DataFrame(rows)


def modules_of_type(model: nn.Module, types) -> list[str]:
    """K-FAC default modules (linear layers but the head) whose last name is in ``types``
    (e.g. ``["q_proj", "o_proj"]``); ``types=None``: all of them."""
    from workbench.curvature.kfac import default_modules

    names = default_modules(model)
    if types is None:
        return names
    out = [n for n in names if n.rsplit(".", 1)[-1] in set(types)]
    if not out:
        raise ValueError(f"types: no linear layer named {list(types)} in the model")
    return out


def kfac_spectra(kfac) -> pd.DataFrame:
    """Per covered layer: largest eigenvalue, trace and effective rank of both K-FAC
    factors (``A``: input covariance, ``G``: output-gradient covariance).

    Returns:
        DataFrame ``module, layer, type, A_max, A_trace, A_erank, G_max, G_trace, G_erank``.
    """
    from workbench.curvature.spectrum import effective_rank

    rows = []
    for n in kfac.modules:
        la, lg = kfac.eigenvalues(n)
        row = dict(module=n, layer=_layer_of(n + "."), type=n.rsplit(".", 1)[-1])
        for f, ev in (("A", la), ("G", lg)):
            ev = ev.double().cpu().numpy()
            row.update({f"{f}_max": float(ev.max()), f"{f}_trace": float(ev.sum()),
                        f"{f}_erank": effective_rank(ev)})
        rows.append(row)
    return pd.DataFrame(rows)


def plot_fisher_lm(by_type: pd.DataFrame, by_head: pd.DataFrame, *,
                   colors: Mapping[str, str] | None = None):
    """Two panels: trace of the true and empirical Fisher per layer type (summed over
    blocks, log scale), and the per-head ratio empirical / true across blocks."""
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9.0, 3.3))
    per = by_type.groupby("type")[["true", "empirical"]].sum()
    x = np.arange(len(per))
    for i, (col, key) in enumerate((("true", "true_fisher"), ("empirical", "empirical_fisher"))):
        a1.bar(x + (i - 0.5) * 0.4, per[col], width=0.4, color=_color(key, colors, i),
               label=_label(key, None))
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
    ``module_type`` layer, coloured by depth (log scale)."""
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
                    lw=1, label=f"block {_layer_of(n + '.')}" if i in (0, len(names) - 1) else None)
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
    from workbench.core.evaluate import causal_lm_loss
    from workbench.core.models import forward_logits
    from workbench.curvature.kfac import natural_gradient

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
