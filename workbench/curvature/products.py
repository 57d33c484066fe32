"""Matrix-free curvature products over an iterable of batches, and dense matrices.

All products are taken of the empirical risk ``L(theta) = sum_t w_t l_t(f_t(theta))``
over *all* batches (see :mod:`workbench.curvature._problem`): with ``reduction="mean"``
every term weighs ``1 / N`` where ``N`` counts the active terms of all batches together
(examples, or non-padding tokens for LMs), so the product over several batches equals
the product on the concatenated data; with ``reduction="sum"`` the batches just add up.

Matrices (``J_t`` is the Jacobian of term ``t``'s outputs w.r.t. the parameters):

Matrices are registered once in :data:`workbench.curvature.registry.CURVATURE_MATRICES`
(names below); an unknown name is an error listing them.

* ``"ggn"``: ``G = sum_t w_t J_t^T H_t J_t`` with ``H_t`` the Hessian of ``l_t`` w.r.t.
  the outputs (computed by autograd).
* ``"hessian"``: ``H = d^2 L / d theta^2``.
* ``"empirical_fisher"``: ``sum_t w_t g_t g_t^T``, ``g_t = grad l_t`` at the *data*
  labels.
* ``"true_fisher"``: ``sum_t w_t E_{y ~ p_t}[g_t(y) g_t(y)^T]`` with ``p_t`` the
  model's predictive distribution implied by the loss (softmax of logits for
  ``CrossEntropyLoss``, ``exp`` of log-probabilities for ``NLLLoss``, ``N(f, I/2)`` for
  ``MSELoss``). With ``n_samples=None`` the expectation is exact (a sum over all classes;
  ``2 I`` in output space for MSE); with ``n_samples=S`` it is a Monte Carlo average over
  ``S`` labels per term, drawn with a generator seeded by ``seed`` and the batch index so
  every column of a dense matrix uses the same labels. (This per-batch generator is not
  the per-example rule :func:`~workbench.curvature._problem.sample_labels` of the
  diagonal, group and K-FAC Fishers: the same ``seed`` gives other labels here.)

Products use double backward (``J v`` by the double-backward trick, Hessians by
differentiating the gradient): Hugging Face models need ``attn_implementation="eager"``
when attention parameters are involved, because PyTorch's CPU SDPA kernel has no double
backward.

For softmax cross-entropy the true Fisher equals the GGN exactly (canonical link); for
``NLLLoss`` on log-probabilities the GGN is zero (the loss is linear in its input) while
the true Fisher is not.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from torch.func import jacrev, vmap

from workbench.curvature import _problem as P
from workbench.curvature.registry import (
    CURVATURE_MATRICES,
    BatchMatrix,
    FisherType,
    OutputSpaceMatrix,
    output_space_matrices,
    register_matrix,
)


def _batch_seed(seed: int, batch: int) -> int:
    """Seed of the Monte Carlo labels of batch ``batch`` (one generator per batch here,
    unlike the per-example rule of :func:`~workbench.curvature._problem.sample_labels`)."""
    return int(seed) * P.LABEL_SEED_STRIDE + int(batch)


def _default_loss(loss_fn: nn.Module | None) -> nn.Module:
    return nn.CrossEntropyLoss() if loss_fn is None else loss_fn


def _grad(outputs, inputs, grad_outputs, batched: bool, retain_graph=True, create_graph=False):
    return torch.autograd.grad(
        outputs, inputs, grad_outputs=grad_outputs, retain_graph=retain_graph,
        create_graph=create_graph, allow_unused=True, materialize_grads=True,
        is_grads_batched=batched,
    )


# ----------------------------------------------------------------------------- matrices
# Each output-space matrix M = sum_t w_t J_t^T M_t J_t is one OutputSpaceMatrix with two
# views of M_t: ``apply`` multiplies it onto J V ([K, n, C] -> [K, n, C], matrix-free) and
# ``matrices`` returns the [n, C, C] matrices (dense Jacobian path). The Hessian is not
# of this form: a BatchMatrix with its own batch product.
def _residuals(lkind, z, tgt):
    zr = z.clone().requires_grad_(True)
    return _grad(P.term_losses(lkind, zr, tgt).sum(), zr, None, False)[0]  # [n, C]


def _all_label_residuals(lkind, z):
    C = z.shape[1]
    zc = z.unsqueeze(0).expand(C, *z.shape).clone().requires_grad_(True)
    yc = torch.arange(C, device=z.device)[:, None].expand(C, z.shape[0])
    return _grad(P.term_losses(lkind, zc.reshape(-1, C), yc.reshape(-1)).sum(), zc, None,
                 False)[0]  # [label, n, C]


def _sampled_residuals(lkind, z, S, generator):
    Y = P.sample_targets(lkind, z, S, generator)
    zs = z.unsqueeze(0).expand(S, *z.shape).clone().requires_grad_(True)
    ls = P.term_losses(lkind, zs.reshape(-1, z.shape[1]), Y.reshape(S * z.shape[0], *Y.shape[2:]))
    return _grad(ls.sum(), zs, None, False)[0]  # [S, n, C]


def _ggn_apply(z, tgt, w, lkind, JV, n_samples, gen):
    zr = z.clone().requires_grad_(True)
    gz = _grad((w * P.term_losses(lkind, zr, tgt)).sum(), zr, None, False, create_graph=True)[0]
    return _grad(gz, zr, JV, True, retain_graph=False)[0]


def _ggn_matrices(z, tgt, lkind, n_samples, gen):
    def per_term(zt, yt):
        return P.term_losses(lkind, zt[None], yt[None]).sum()

    return torch.func.vmap(torch.func.hessian(per_term))(z, tgt)


def _ef_apply(z, tgt, w, lkind, JV, n_samples, gen):
    R = _residuals(lkind, z, tgt)
    return (w * (JV * R).sum(-1)).unsqueeze(-1) * R


def _ef_matrices(z, tgt, lkind, n_samples, gen):
    R = _residuals(lkind, z, tgt)
    return R[:, :, None] * R[:, None, :]


def _fisher_apply(z, tgt, w, lkind, JV, n_samples, gen):
    if n_samples is None and lkind == "mse":
        return 2.0 * w[:, None] * JV
    if n_samples is None:
        probs = P.predictive_probs(lkind, z)  # [n, C]
        R = _all_label_residuals(lkind, z)
        coef = torch.einsum("knc,jnc->kjn", JV, R)
        return torch.einsum("n,nj,kjn,jnc->knc", w, probs, coef, R)
    R = _sampled_residuals(lkind, z, int(n_samples), gen)
    coef = torch.einsum("knc,snc->ksn", JV, R)
    return torch.einsum("n,ksn,snc->knc", w, coef, R) / int(n_samples)


def _fisher_matrices(z, tgt, lkind, n_samples, gen):
    if n_samples is None and lkind == "mse":
        C = z.shape[1]
        return 2.0 * torch.eye(C, dtype=z.dtype).expand(z.shape[0], C, C)
    if n_samples is None:
        probs = P.predictive_probs(lkind, z)
        R = _all_label_residuals(lkind, z)
        return torch.einsum("nj,jnc,jnd->ncd", probs, R, R)
    R = _sampled_residuals(lkind, z, int(n_samples), gen)
    return torch.einsum("snc,snd->ncd", R, R) / int(n_samples)


def _hessian_batch(model, loss_fn, lkind, params, batch, V, scale):
    terms = P.batch_terms(model, batch, lkind, loss_fn)
    w = terms.active.to(terms.outputs.dtype) * scale
    loss = (w * P.term_losses(lkind, terms.outputs, terms.targets)).sum()
    g = P.flat(_grad(loss, params, None, False, create_graph=True))
    res = _grad(g, params, V, True, retain_graph=False)
    return torch.cat([r.reshape(V.shape[0], -1) for r in res], 1)


register_matrix(
    "hessian", BatchMatrix(_hessian_batch), label="Hessian", psd=False,
    description="d^2 L / d theta^2 (double backward)")
register_matrix(
    "ggn", OutputSpaceMatrix(_ggn_apply, _ggn_matrices), label="GGN", psd=True,
    description="sum_t w_t J_t^T H_t J_t, H_t the loss Hessian w.r.t. the outputs")
register_matrix(
    "empirical_fisher", OutputSpaceMatrix(_ef_apply, _ef_matrices), label="Empirical Fisher",
    psd=True, fisher_type=FisherType.EMPIRICAL.value,
    description="sum_t w_t g_t g_t^T at the data labels")
register_matrix(
    "true_fisher", OutputSpaceMatrix(_fisher_apply, _fisher_matrices), label="True Fisher",
    psd=True, fisher_type=FisherType.TRUE.value,
    description="sum_t w_t E_{y ~ p_t}[g_t(y) g_t(y)^T], exact or n_samples labels")


def _batch_matmat(
    matrix: str, model: nn.Module, loss_fn: nn.Module, lkind: str, params: list[Tensor],
    batch: Any, V: Tensor, scale: float, n_samples: int | None, generator: torch.Generator | None,
) -> Tensor:
    """One batch's contribution ``M_batch @ V^T`` as ``[K, D]`` (``V`` is ``[K, D]``)."""
    entry = CURVATURE_MATRICES.get(matrix).fn
    if isinstance(entry, BatchMatrix):
        return entry.product(model, loss_fn, lkind, params, batch, V, scale)
    terms = P.batch_terms(model, batch, lkind, loss_fn)
    out, tgt = terms.outputs, terms.targets
    w = terms.active.to(out.dtype) * scale  # [n]
    # J V via the double-backward trick: J^T u is linear in u, d/du <J^T u, v> = J v.
    u = torch.zeros_like(out, requires_grad=True)
    jtu = _grad(out, params, u, False, create_graph=True)
    JV = _grad(jtu, u, P.unflat(V, params), True)[0]  # [K, n, C]
    M = entry.apply(out.detach(), tgt, w, lkind, JV, n_samples, generator)
    res = _grad(out, params, M, True, retain_graph=False)
    return torch.cat([r.reshape(V.shape[0], -1) for r in res], 1)


def _check_matrix(matrix: str, n_samples) -> None:
    CURVATURE_MATRICES.check(matrix)
    if n_samples is not None and (matrix != "true_fisher" or isinstance(n_samples, bool)
                                  or int(n_samples) < 1):
        raise ValueError(f"n_samples: only for matrix='true_fisher', an integer >= 1 (or "
                         f"None), got {n_samples!r} with matrix={matrix!r}")


def curvature_matmat(
    matrix: str,
    model: nn.Module,
    batches: Any,
    V: Tensor,
    *,
    loss_fn: nn.Module | None = None,
    params: Any = None,
    n_samples: int | None = None,
    seed: int = 0,
    chunk_size: int = 128,
) -> Tensor:
    """Multiply a curvature matrix onto several flat vectors at once.

    Args:
        matrix: A registered curvature matrix
            (:data:`~workbench.curvature.registry.CURVATURE_MATRICES`: ``"hessian"``,
            ``"ggn"``, ``"empirical_fisher"``, ``"true_fisher"``; see the module doc).
        model: Any ``nn.Module``; HF causal LMs take token batches.
        batches: Iterable of batches: ``(x, y)`` pairs, LongTensor ``[b, seq]`` token
            blocks, or dicts with ``input_ids`` / ``attention_mask``. Materialised once.
        V: ``[K, D]`` or ``[D]`` vectors in the flat parameter space (``D`` = number of
            selected parameter entries, in the order of ``params``).
        loss_fn: ``nn.CrossEntropyLoss`` (default), ``nn.NLLLoss`` or ``nn.MSELoss``
            with reduction ``mean`` or ``sum``.
        params: Parameters to differentiate (names, parameters or a dict); default all
            trainable ones.
        n_samples: Only for ``"true_fisher"``: ``None`` = exact expectation over labels,
            an int = Monte Carlo labels per term.
        seed: Seed of the Monte Carlo labels.
        chunk_size: Vectors processed together in one batched backward pass.

    Returns:
        ``[K, D]`` (or ``[D]``) products, in the dtype of the model.

    Raises:
        ValueError: Unknown ``matrix`` (lists the registered ones), unsupported loss,
            empty data, mismatched shapes,
            non-finite results, ``n_samples < 1``.
    """
    _check_matrix(matrix, n_samples)
    loss_fn = _default_loss(loss_fn)
    lkind = P.loss_kind_of(loss_fn)
    batches = P.as_batch_list(batches)
    _, plist = P.resolve_params(model, params)
    D = sum(p.numel() for p in plist)
    squeeze = V.ndim == 1
    V = V.reshape(1, -1) if squeeze else V
    if V.ndim != 2 or V.shape[1] != D:
        raise ValueError(f"V: expected shape [K, {D}] or [{D}], got {tuple(V.shape)}")
    ref = plist[0]
    V = V.to(device=ref.device, dtype=ref.dtype)
    n_total = sum(P.count_terms(b, lkind, loss_fn) for b in batches)
    result = torch.zeros_like(V)
    for bi, batch in enumerate(batches):
        gen = None
        if n_samples is not None:
            gen = torch.Generator().manual_seed(_batch_seed(seed, bi))
        for start in range(0, V.shape[0], chunk_size):
            block = V[start:start + chunk_size]
            if gen is not None:  # the same labels for every chunk of columns
                gen.manual_seed(_batch_seed(seed, bi))
            n_out = _n_outputs(model, batch, lkind, loss_fn) if lkind == "mse" else 1
            scale = P.term_scale(lkind, loss_fn, n_total, n_out)
            result[start:start + chunk_size] += _batch_matmat(
                matrix, model, loss_fn, lkind, plist, batch, block, scale, n_samples, gen
            )
    P.check_finite(f"{matrix} product", result)
    return result[0] if squeeze else result


def _n_outputs(model, batch, lkind, loss_fn) -> int:
    y = batch[1]
    return int(y[0].numel())


def _vector_product(matrix, model, batches, v, loss_fn, params, **kw):
    names, plist = P.resolve_params(model, params)
    if isinstance(v, Tensor):
        return curvature_matmat(matrix, model, batches, v.reshape(-1), loss_fn=loss_fn,
                                params=params, **kw).reshape(v.shape)
    if isinstance(v, dict):
        vec = P.flat([v[n] for n in names])
        res = curvature_matmat(matrix, model, batches, vec, loss_fn=loss_fn, params=params, **kw)
        return dict(zip(names, P.unflat(res, plist)))
    vec = P.flat(list(v))
    res = curvature_matmat(matrix, model, batches, vec, loss_fn=loss_fn, params=params, **kw)
    return P.unflat(res, plist)


_VDOC = """

    Args:
        model: The model.
        batches: Iterable of batches (``(x, y)`` pairs or LM token blocks).
        v: A flat ``[D]`` tensor, a list of tensors shaped like ``params``, or a
            ``{name: tensor}`` dict; the result has the same format.
        loss_fn: ``nn.CrossEntropyLoss`` (default), ``nn.NLLLoss`` or ``nn.MSELoss``.
        params: Parameters to differentiate; default all trainable ones.

    Returns:
        The product, normalised as described in :mod:`workbench.curvature.products`.
"""


def ggn_vector_product(model, batches, v, *, loss_fn=None, params=None):
    return _vector_product("ggn", model, batches, v, loss_fn, params)


def hessian_vector_product(model, batches, v, *, loss_fn=None, params=None):
    return _vector_product("hessian", model, batches, v, loss_fn, params)


def empirical_fisher_vector_product(model, batches, v, *, loss_fn=None, params=None):
    return _vector_product("empirical_fisher", model, batches, v, loss_fn, params)


def true_fisher_vector_product(model, batches, v, *, loss_fn=None, params=None,
                               n_samples: int | None = None, seed: int = 0):
    return _vector_product("true_fisher", model, batches, v, loss_fn, params,
                           n_samples=n_samples, seed=seed)


ggn_vector_product.__doc__ = "GGN-vector product ``G v = sum_t w_t J_t^T H_t J_t v``." + _VDOC
hessian_vector_product.__doc__ = "Hessian-vector product of the empirical risk." + _VDOC
empirical_fisher_vector_product.__doc__ = (
    "Empirical-Fisher-vector product ``sum_t w_t g_t (g_t . v)`` at the data labels." + _VDOC
)
true_fisher_vector_product.__doc__ = (
    "True-Fisher-vector product, exact over labels (``n_samples=None``) or Monte Carlo "
    "with ``n_samples`` labels per term (seeded by ``seed``)." + _VDOC
)


def dense_matrix(
    matrix: str,
    model: nn.Module,
    batches: Any,
    *,
    loss_fn: nn.Module | None = None,
    params: Any = None,
    n_samples: int | None = None,
    seed: int = 0,
    chunk_size: int = 128,
) -> Tensor:
    """The full ``[D, D]`` curvature matrix, built from products with unit vectors.

    Only for small models (``D`` up to a few thousand). Same arguments as
    :func:`curvature_matmat`; the result is not symmetrised.
    """
    _, plist = P.resolve_params(model, params)
    D = sum(p.numel() for p in plist)
    eye = torch.eye(D, dtype=plist[0].dtype, device=plist[0].device)
    return curvature_matmat(matrix, model, batches, eye, loss_fn=loss_fn, params=params,
                            n_samples=n_samples, seed=seed, chunk_size=chunk_size).T


def num_params(model: nn.Module, params: Any = None) -> int:
    """Number of entries ``D`` of the selected parameters."""
    return sum(p.numel() for p in P.resolve_params(model, params)[1])


def flat_params(model: nn.Module, params: Any = None) -> Tensor:
    """The selected parameters as one detached flat vector (order of ``params``)."""
    return P.flat([p.detach() for p in P.resolve_params(model, params)[1]])


def param_names(model: nn.Module, params: Any = None) -> Sequence[str]:
    """Names of the selected parameters, in the flat order."""
    return P.resolve_params(model, params)[0]


def per_term_jacobian(model: nn.Module, batch: Any, *, loss_fn: nn.Module | None = None,
                      params: Any = None, chunk_size: int | None = None):
    """Per-term Jacobians of one batch's outputs w.r.t. the flat parameters.

    Computed with ``torch.func.vmap(jacrev(...))`` over the examples of the batch
    (examples must not interact, e.g. no BatchNorm in training mode).

    Returns:
        ``(J, terms)``: ``J`` is ``[n, C, D]`` (``n`` terms, ``C`` outputs per term) and
        ``terms`` the detached :class:`~workbench.curvature._problem.Terms` of the batch.
    """
    loss_fn = _default_loss(loss_fn)
    lkind = P.loss_kind_of(loss_fn)
    names, plist = P.resolve_params(model, params)
    f = P.example_outputs_fn(model, names, lkind, loss_fn)
    detached = {n: p.detach() for n, p in zip(names, plist)}
    ex_batch = batch
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        ex_batch = (batch[0], torch.zeros(batch[0].shape[0]))  # targets unused here
    jac = vmap(jacrev(f), in_dims=(None, 0), chunk_size=chunk_size)(detached, ex_batch)
    # jac[name]: [b, T, C, *shape]
    first = jac[names[0]]
    b, T, C = first.shape[:3]
    J = torch.cat([jac[n].reshape(b * T, C, -1) for n in names], -1)
    with torch.no_grad():
        terms = P.batch_terms(model, batch, lkind, loss_fn)
    return J, terms


def dense_matrix_jacobian(
    matrix: str,
    model: nn.Module,
    batches: Any,
    *,
    loss_fn: nn.Module | None = None,
    params: Any = None,
    n_samples: int | None = None,
    seed: int = 0,
) -> Tensor:
    """Dense GGN / empirical / true Fisher from per-term Jacobians (fast for small ``D``).

    ``sum_t w_t J_t^T M_t J_t`` with ``M_t`` the output-space matrix of ``matrix`` (loss
    Hessian, ``r r^T``, exact or Monte Carlo label expectation). An implementation
    independent of the matrix-free products (same labels for the same ``seed``).
    Only the output-space matrices
    (:func:`~workbench.curvature.registry.output_space_matrices`).
    """
    _check_matrix(matrix, n_samples)
    entry = CURVATURE_MATRICES.get(matrix).fn
    if not isinstance(entry, OutputSpaceMatrix):
        raise ValueError(f"matrix must be one of {output_space_matrices()}"
                         f" for dense_matrix_jacobian, got {matrix!r}")
    loss_fn = _default_loss(loss_fn)
    lkind = P.loss_kind_of(loss_fn)
    batches = P.as_batch_list(batches)
    n_total = sum(P.count_terms(b, lkind, loss_fn) for b in batches)
    out = None
    for bi, batch in enumerate(batches):
        J, terms = per_term_jacobian(model, batch, loss_fn=loss_fn, params=params)
        gen = torch.Generator().manual_seed(_batch_seed(seed, bi))
        M = entry.matrices(terms.outputs.detach(), terms.targets, lkind, n_samples, gen)
        scale = P.term_scale(lkind, loss_fn, n_total, terms.outputs.shape[1])
        w = terms.active.to(J.dtype) * scale
        MJ = torch.einsum("ncd,nde->nce", M * w[:, None, None], J)
        part = J.reshape(-1, J.shape[-1]).T @ MJ.reshape(-1, J.shape[-1])
        out = part if out is None else out + part
    P.check_finite(f"{matrix} matrix", out)
    return out
