"""Fisher-weighted damage, PAC-Bayes complexity, sharpness, and one capacity table.

**Fisher-weighted damage** (the curvature design notes' forgetting / pruning-damage
measure). For parameters ``theta_a`` (e.g. the dense model, trained on task A) and
``theta_b`` (e.g. the pruned or fine-tuned model), ``delta = theta_b - theta_a``:

* ``F = F_A``: diagonal Fisher of ``theta_a`` on task-A data (default), or, with
  ``symmetric=True``, ``F = (F_A + F_B) / 2`` with ``F_B`` the diagonal Fisher of
  ``theta_b`` on task-B data;
* ``damage = sum_i F_i delta_i^2`` (twice the quadratic estimate of the loss increase,
  ``L(theta_b) - L(theta_a) ~ 0.5 delta^T F delta``, for a minimum ``theta_a``);
* ``normalized = damage / sum_i F_i theta_a,i^2``: the Fisher-weighted squared norm of
  the change relative to that of the parameters. For pruning (``theta_b,i`` in
  ``{0, theta_a,i}``) it is the Fisher-weighted fraction of the parameters removed, in
  ``[0, 1]``; it is invariant to rescaling ``F``.

**PAC-Bayes complexity** with a Gaussian (Laplace) posterior: ``Q = N(theta, Sigma)``,
``Sigma = (n F + delta I)^{-1}`` with ``F`` the (diagonal or K-FAC) Fisher of the mean
loss and ``n`` the number of training examples/tokens, and the prior
``P = N(0, delta^{-1} I)``. With ``lambda_k`` the eigenvalues of ``F`` (the diagonal
entries, or all products ``g_i a_j`` of the K-FAC factors)::

    KL(Q || P) = 1/2 sum_k [delta / (n lambda_k + delta) - 1 + log(1 + n lambda_k / delta)]
                 + delta / 2 ||theta||^2

and the complexity term of the McAllester bound in Maurer's form (losses in
``[0, 1]``, confidence ``1 - conf``; McAllester 1999, Maurer 2004, as used by Dziugaite
& Roy 2017)::

    E_Q[L] <= E_Q[L_hat] + sqrt((KL(Q || P) + log(2 sqrt(n) / conf)) / (2 n)).

**Sharpness**: the largest eigenvalue ``lambda_max`` of the Hessian or GGN of the mean
loss (Lanczos, :func:`~workbench.curvature.spectrum.lanczos_topk`), and the
trace-normalised sharpness ``lambda_max / trace`` (the share of the total curvature in
the sharpest direction, in ``(0, 1]``; scale-free).
"""

from __future__ import annotations

import contextlib
import inspect
import math
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from workbench.core.checks import check_kwargs, check_range
from workbench.curvature import _problem as P
from workbench.curvature.diagonal import RENAMED, diagonal_fisher
from workbench.curvature.kfac import KFAC, default_modules
from workbench.curvature.products import curvature_matmat, num_params
from workbench.curvature.registry import CURVATURE_MATRICES
from workbench.curvature.spectrum import effective_rank, hutchinson_trace, lanczos_topk


# ----------------------------------------------------------------------------- damage
def fisher_weighted_damage(
    fisher_a: Mapping[str, Tensor],
    theta_a: Mapping[str, Tensor],
    theta_b: Mapping[str, Tensor],
    *,
    fisher_b: Mapping[str, Tensor] | None = None,
    symmetric: bool = False,
) -> dict[str, float]:
    """Fisher-weighted damage of moving from ``theta_a`` to ``theta_b`` (module docstring).

    Args:
        fisher_a: Diagonal Fisher ``{name: tensor}`` of ``theta_a`` on task-A data; its
            names are the parameters compared.
        theta_a, theta_b: Parameter dicts (e.g. ``state_dict()`` s) with those names.
        fisher_b: Diagonal Fisher of ``theta_b`` on task-B data (needed when
            ``symmetric``).
        symmetric: Use ``F = (F_A + F_B) / 2``.

    Returns:
        ``{"damage", "normalized", "fisher_norm_theta_a", "fisher_norm_change"}``
        (``fisher_norm_change`` = ``damage``).

    Raises:
        ValueError: Missing names, mismatched shapes, ``symmetric`` without ``fisher_b``.
    """
    if symmetric and fisher_b is None:
        raise ValueError("fisher_b: needed when symmetric=True (the Fisher of theta_b on "
                         "task-B data)")
    total = norm_a = 0.0
    for name, fa in fisher_a.items():
        if name not in theta_a or name not in theta_b:
            raise ValueError(f"theta_a/theta_b: parameter {name!r} is missing")
        f = fa.detach().double().cpu()
        if symmetric:
            if name not in fisher_b:
                raise ValueError(f"fisher_b: parameter {name!r} is missing")
            f = 0.5 * (f + fisher_b[name].detach().double().cpu())
        a = theta_a[name].detach().double().cpu()
        b = theta_b[name].detach().double().cpu()
        if a.shape != f.shape or b.shape != f.shape:
            raise ValueError(f"{name}: shapes differ (fisher {tuple(f.shape)}, "
                             f"theta_a {tuple(a.shape)}, theta_b {tuple(b.shape)})")
        total += float((f * (b - a).square()).sum())
        norm_a += float((f * a.square()).sum())
    return dict(damage=total, normalized=total / norm_a if norm_a > 0 else float("nan"),
                fisher_norm_theta_a=norm_a, fisher_norm_change=total)


def fisher_damage(
    model_a: nn.Module,
    model_b: nn.Module,
    tokens_a: Any,
    *,
    tokens_b: Any = None,
    symmetric: bool = False,
    fisher_type: str = "empirical",
    params: Any = None,
    **fisher_options: Any,
) -> dict[str, float]:
    """Fisher-weighted damage between two models (same architecture).

    ``F_A`` is the diagonal Fisher (:func:`~workbench.curvature.diagonal_fisher`, of
    ``fisher_type``) of ``model_a`` on ``tokens_a``; with ``symmetric=True`` also
    ``F_B`` of ``model_b`` on ``tokens_b`` (default ``tokens_a``).

    Args:
        params: Parameter names compared (default: the weights of the K-FAC default
            modules, i.e. every linear layer but the output head).
        **fisher_options: Passed to ``diagonal_fisher`` (``n_samples``, ``seed``,
            ``chunk_size``, ``granularity``, ...); unknown names are an error.
    """
    allowed = set(inspect.signature(diagonal_fisher).parameters) - {
        "model", "batches", "fisher_type", "params"}
    check_kwargs("fisher_damage", fisher_options, allowed,
                 renamed=RENAMED)
    names = list(params) if params is not None else [
        f"{n}.weight" for n in default_modules(model_a)]
    fa = diagonal_fisher(model_a, tokens_a, fisher_type=fisher_type, params=names,
                         **fisher_options)
    fb = None
    if symmetric:
        fb = diagonal_fisher(model_b, tokens_a if tokens_b is None else tokens_b,
                             fisher_type=fisher_type, params=names, **fisher_options)
    pa, pb = dict(model_a.named_parameters()), dict(model_b.named_parameters())
    return fisher_weighted_damage(fa, {n: pa[n] for n in names}, {n: pb[n] for n in names},
                                  fisher_b=fb, symmetric=symmetric)


# ----------------------------------------------------------------------------- PAC-Bayes
def _eigenvalues(curvature) -> tuple[np.ndarray, list[str]]:
    """Eigenvalues of a diagonal Fisher dict or a KFAC object, and the parameter names."""
    if isinstance(curvature, KFAC):
        vals = []
        for n, m in curvature.modules.items():
            la, lg = curvature.eigenvalues(n)
            vals.append((lg[:, None] * la[None, :]).reshape(-1).double().cpu().numpy())
            if m.bias is not None:
                vals.append(lg.double().cpu().numpy())
        return np.concatenate(vals), list(curvature.param_names)
    if isinstance(curvature, Mapping):
        vals = [t.detach().double().cpu().reshape(-1).numpy() for t in curvature.values()]
        return np.clip(np.concatenate(vals), 0.0, None), list(curvature)
    raise ValueError("curvature: expected a diagonal Fisher {name: tensor} or a KFAC object, "
                     f"got {type(curvature).__name__}")


def pac_bayes(curvature, theta: Mapping[str, Tensor], *, n: int,
              prior_precision: float = 1.0, confidence: float = 0.05) -> dict[str, float]:
    """PAC-Bayes KL and complexity term of a Laplace posterior (see the module docstring).

    Args:
        curvature: Diagonal Fisher ``{name: tensor}`` or a
            :class:`~workbench.curvature.kfac.KFAC` (Fisher of the *mean* loss).
        theta: Parameters ``{name: tensor}`` (the posterior mean), at least the names
            the curvature covers.
        n: Number of training examples (tokens) the posterior is built from (> 0).
        prior_precision: ``delta`` of the prior ``N(0, I / delta)`` (> 0).
        confidence: ``conf`` of the bound, in ``(0, 1)``.

    Returns:
        ``{"kl", "complexity", "kl_curvature", "kl_norm", "n", "prior_precision"}``
        (``kl = kl_curvature + kl_norm``, ``kl_norm = delta / 2 ||theta||^2``).
    """
    check_range("n", n, 1, integer=True)
    check_range("prior_precision", prior_precision, 0, lo_open=True)
    check_range("confidence", confidence, 0, 1, lo_open=True, hi_open=True)
    lam, names = _eigenvalues(curvature)
    missing = [k for k in names if k not in theta]
    if missing:
        raise ValueError(f"theta: parameters {missing[:3]} are missing")
    d = float(prior_precision)
    r = n * lam / d
    kl_curv = 0.5 * float(np.sum(1.0 / (1.0 + r) - 1.0 + np.log1p(r)))
    sq = sum(float(theta[k].detach().double().square().sum()) for k in names)
    kl = kl_curv + 0.5 * d * sq
    complexity = math.sqrt((kl + math.log(2.0 * math.sqrt(n) / confidence)) / (2.0 * n))
    return dict(kl=kl, complexity=complexity, kl_curvature=kl_curv, kl_norm=0.5 * d * sq,
                n=int(n), prior_precision=d)


# ----------------------------------------------------------------------------- sharpness
@contextlib.contextmanager
def eager_attention(model: nn.Module):
    """Temporarily switch a Hugging Face model to eager attention (PyTorch's CPU SDPA
    kernel has no double backward, which Hessian / GGN products need)."""
    cfg = getattr(model, "config", None)
    old = getattr(cfg, "_attn_implementation", None)
    if cfg is None or old in (None, "eager"):
        yield model
        return
    model.set_attn_implementation("eager")
    try:
        yield model
    finally:
        model.set_attn_implementation(old)


def sharpness(model: nn.Module, batches: Any, *, matrix: str = "ggn", params: Any = None,
              trace: float | None = None, hutchinson_samples: int = 10, seed: int = 0,
              tol: float = 1e-3, ncv: int = 8, maxiter: int | None = None) -> dict[str, float]:
    """Largest eigenvalue of the Hessian / GGN of the mean loss and its trace-normalised
    variant ``lambda_max / trace`` (see the module docstring).

    Args:
        matrix: ``"ggn"`` (default), ``"hessian"``, ``"true_fisher"`` or
            ``"empirical_fisher"`` (:data:`~workbench.curvature.registry.CURVATURE_MATRICES`).
        params: Parameters (names); default all trainable ones.
        trace: The trace if known (e.g. from a diagonal Fisher); else a Hutchinson
            estimate with ``hutchinson_samples`` Rademacher probes.
        tol, ncv, maxiter: Lanczos accuracy / cost (``eigsh``).

    Returns:
        ``{"lambda_max", "trace", "normalized"}``.
    """
    CURVATURE_MATRICES.check(matrix)
    batches = P.as_batch_list(batches)
    D = num_params(model, params)
    dtype = P.resolve_params(model, params)[1][0].dtype
    with eager_attention(model):
        def mv(v):
            return curvature_matmat(matrix, model, batches, v.to(dtype), params=params)

        lam = float(lanczos_topk(mv, 1, D, tol=tol, seed=seed, ncv=ncv, maxiter=maxiter)[0])
        if trace is None:
            trace = hutchinson_trace(mv, D, n_samples=hutchinson_samples, seed=seed,
                                     dtype=dtype)
    return dict(lambda_max=lam, trace=float(trace),
                normalized=lam / trace if trace > 0 else float("nan"))


# ----------------------------------------------------------------------------- summary
_DEFINITIONS = {
    "tokens": "predicted tokens the curvature is measured on",
    "fisher_trace": "trace of the diagonal Fisher of the mean token loss",
    "fisher_effective_rank": "exp(entropy) of the normalised diagonal Fisher entries",
    "lambda_max": "largest eigenvalue of the curvature matrix (Lanczos)",
    "sharpness_normalized": "lambda_max / trace of the same parameters",
    "pac_bayes_kl": "KL(Q||P), Q = N(theta, (nF + delta I)^-1), P = N(0, I/delta)",
    "pac_bayes_complexity": "sqrt((KL + log(2 sqrt(n)/conf)) / (2n))",
}


def capacity_summary(
    model: nn.Module,
    tokens: Any,
    *,
    fisher_type: str = "true",
    params: Any = None,
    sharpness_params: Any = None,
    sharpness_tokens: Any = None,
    matrix: str = "ggn",
    n: int | None = None,
    prior_precision: float = 1.0,
    confidence: float = 0.05,
    seed: int = 0,
    chunk_size: int = 2,
    lanczos_tol: float = 1e-3,
    fisher: Mapping[str, Tensor] | None = None,
) -> pd.DataFrame:
    """One capacity table of a model on ``tokens``.

    Args:
        model: The model.
        tokens: Token ids ``LongTensor[n, seq]`` (or a list of batches).
        fisher_type: Fisher type of the diagonal Fisher (trace, effective rank,
            PAC-Bayes posterior).
        params: Parameters of the Fisher metrics (default: weights of every linear layer
            but the output head).
        sharpness_params: Parameters of ``lambda_max`` (default: the weights of the
            last linear layer of ``params``: a full-model Lanczos is expensive).
        sharpness_tokens: Tokens of ``lambda_max`` (default ``tokens``; every Lanczos
            step is a forward and a double backward pass). When they differ from
            ``tokens``, the normalised sharpness uses a Hutchinson trace on them.
        matrix: Curvature matrix of the sharpness (``"ggn"`` or ``"hessian"``, ...).
        n: Training-set size of the PAC-Bayes bound (default: the tokens measured on).
        prior_precision, confidence: Of the PAC-Bayes bound.
        seed, chunk_size: Sampled labels / memory of the diagonal Fisher.
        lanczos_tol: Relative accuracy of ``lambda_max``.
        fisher: A diagonal Fisher of ``fisher_type`` on ``tokens`` already computed (its
            names replace ``params``); default: computed here.

    Returns:
        DataFrame indexed by ``metric`` with columns ``value`` and ``definition``:
        ``tokens``, ``fisher_trace``, ``fisher_effective_rank``, ``lambda_max``,
        ``sharpness_normalized``, ``pac_bayes_kl``, ``pac_bayes_complexity``.
    """
    if fisher is not None:
        names = list(fisher)
    else:
        names = list(params) if params is not None else [
            f"{m}.weight" for m in default_modules(model)]
    sharp = list(sharpness_params) if sharpness_params is not None else names[-1:]
    batches = P.as_batch_list(tokens)
    loss_fn = nn.CrossEntropyLoss()
    n_tok = sum(P.count_terms(b, "ce", loss_fn) for b in batches)
    diag = fisher if fisher is not None else diagonal_fisher(
        model, batches, fisher_type=fisher_type, params=names, seed=seed, chunk_size=chunk_size)
    values = torch.cat([t.double().reshape(-1) for t in diag.values()])
    sharp_trace = None  # the diagonal true Fisher's trace is the GGN's (softmax CE)
    if (sharpness_tokens is None and fisher_type == "true" and matrix in ("ggn", "true_fisher")
            and set(sharp) <= set(diag)):
        sharp_trace = float(sum(diag[k].double().sum() for k in sharp))
    s_batches = batches if sharpness_tokens is None else P.as_batch_list(sharpness_tokens)
    s = sharpness(model, s_batches, matrix=matrix, params=sharp, trace=sharp_trace,
                  seed=seed, tol=lanczos_tol)
    named = dict(model.named_parameters())
    pb = pac_bayes(diag, {k: named[k] for k in names}, n=n or n_tok,
                   prior_precision=prior_precision, confidence=confidence)
    rows = dict(tokens=float(n_tok), fisher_trace=float(values.sum()),
                fisher_effective_rank=effective_rank(values.numpy()),
                lambda_max=s["lambda_max"], sharpness_normalized=s["normalized"],
                pac_bayes_kl=pb["kl"], pac_bayes_complexity=pb["complexity"])
    df = pd.DataFrame({"value": rows, "definition": {k: _DEFINITIONS[k] for k in rows}})
    df.index.name = "metric"
    return df
