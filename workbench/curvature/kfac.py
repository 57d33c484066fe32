"""K-FAC (Kronecker-factored approximate curvature) for linear layers, with weight sharing.

Covers ``nn.Linear`` and Hugging Face's transposed ``Conv1D`` (GPT-2) layers whose inputs
are ``[batch, in]`` or ``[batch, *positions, in]`` (e.g. ``[batch, seq, in]`` in a
transformer: the weight is *shared* over the sequence positions). For one layer
``z = W a + b`` with inputs ``a`` ``[in]``, outputs ``z`` ``[out]``, and the empirical
risk ``L = sum_t w_t l_t`` (``w_t = 1/N`` for mean reduction over ``N`` active loss
terms, 1 for sum; see :mod:`workbench.curvature._problem`):

* ``s`` ranges over the layer's positions, ``n`` over the ``N_x`` examples (rows of a
  batch), ``g_{k,n,s} = dL_k / dz_{n,s}`` is the gradient w.r.t. the layer output of the
  *summed* (unweighted) loss ``L_k = sum_t l_t`` backpropagated with output-space vector
  ``k`` (below);
* **expand** (Eschenhagen et al. 2023, "K-FAC-expand": positions are treated as extra
  examples; the natural choice when every position has its own loss term, as in
  causal language modelling)::

      A = 1 / (N_x * S) * sum_{n,s} a_{n,s} a_{n,s}^T
      G = c * sum_k sum_{n,s} g_{k,n,s} g_{k,n,s}^T

* **reduce** ("K-FAC-reduce": the shared dimension is reduced first, inputs averaged and
  output gradients summed over positions)::

      A = 1 / N_x * sum_n abar_n abar_n^T,  abar_n = mean_s a_{n,s}
      G = c * sum_k sum_n gsum_{k,n} gsum_{k,n}^T,  gsum_{k,n} = sum_s g_{k,n,s}

  with ``c = w`` (the term weight; divided by ``n_samples`` for Monte Carlo labels).
  For 2-D inputs (``S = 1``) both flavours are the classic K-FAC of Martens & Grosse
  (2015).

Output-space vectors ``k`` (the Fisher type, :class:`~workbench.curvature.registry.FisherType`):

* ``fisher_type="true"``, ``n_samples=None``: the columns of a square root of each term's
  output Hessian ``H_t`` (exact expectation over labels; for softmax cross-entropy the
  true Fisher = GGN, curvlinops' ``"type-2"``). Costs one backward pass per output
  dimension (the vocabulary for an LM): use it on small models only;
* ``fisher_type="true"``, ``n_samples=S``: ``S`` labels per term sampled from the model's
  predictive distribution (curvlinops' ``"mc"``), one backward pass per sample; the labels
  are those of :func:`~workbench.curvature._problem.sample_labels` (one generator per
  example), the same as :func:`~workbench.curvature.diagonal_fisher` and
  :func:`~workbench.curvature.collect_group_fisher` draw for the same ``seed``;
* ``fisher_type="empirical"``: the data labels, one backward pass.

The weight block (row-major ``vec(W)`` of ``W [out, in]``) is ``G (x) A``; a bias gets its
own block ``G`` (weights and biases are separate blocks, curvlinops' default
``separate_weight_and_bias=True``). The factors equal those of curvlinops'
``KFACLinearOperator`` with the same ``kfac_approx`` and Fisher type (tested on tiny
Llama and GPT-2 models). "expand" is exact (equals the GGN block) e.g. for a deep linear
network applied position-wise with the MSE loss; for one example and one position both
flavours are exact.

Padding is not special-cased in ``A``: every position of the layer input counts (loss
terms at padding are inactive, so they contribute nothing to ``G``).

Damped inverse (natural gradient): ``(G (x) A + lambda I)^{-1}``, i.e. the damping
``lambda`` is added to the **Kronecker product** (``damping_mode="product"``, exact, via
the eigenbases of ``G`` and ``A``: eigenvalues ``g_i a_j + lambda``), or, with
``damping_mode="factors"``, to each factor, ``(G + sqrt(lambda) I) (x) (A + sqrt(lambda) I)``
(Martens & Grosse's factored Tikhonov damping without the pi-rescaling).

References:
    Martens & Grosse (2015), Optimizing neural networks with Kronecker-factored
    approximate curvature, ICML. Eschenhagen, Immer, Turner, Schneider & Hennig (2023),
    Kronecker-factored approximate curvature for modern neural network architectures,
    NeurIPS.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from workbench.core.checks import check_choice, check_kwargs
from workbench.core.models import check_model_tokens, is_conv1d, model_vocab_size
from workbench.curvature import _problem as P
from workbench.curvature.registry import check_fisher_type

FLAVOURS = ("expand", "reduce")
DAMPING_MODES = ("product", "factors")


def is_supported(module: nn.Module) -> bool:
    """``nn.Linear`` or a transposed ``Conv1D`` layer (the layer types K-FAC covers)."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def default_modules(model: nn.Module) -> list[str]:
    """Names of the supported linear layers, without the output head.

    The output head (``model.get_output_embeddings()`` of a Hugging Face model, or any
    linear layer whose weight is an ``nn.Embedding``'s weight) is left out: its output
    factor would be ``[vocab, vocab]``.
    """
    head = None
    if hasattr(model, "get_output_embeddings"):
        try:
            head = model.get_output_embeddings()
        except (AttributeError, NotImplementedError):
            head = None
    emb = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return [n for n, m in model.named_modules()
            if is_supported(m) and m is not head and id(m.weight) not in emb]


def resolve_modules(model: nn.Module, modules: Any = None, *,
                    supported: Callable[[nn.Module], bool] = is_supported,
                    support_note: str = "K-FAC supports nn.Linear and transformers' Conv1D "
                                        "layers only") -> dict[str, nn.Module]:
    """``{name: module}`` of the layers to cover (default :func:`default_modules`).

    ``supported`` / ``support_note``: which module types are accepted and the sentence
    the error adds when one is not (the group Fisher passes ``nn.Linear`` only).

    Raises:
        ValueError: A name that is not a module of the model, or a module of a type
            not ``supported`` (the message names the module and its type).
    """
    named = dict(model.named_modules())
    names = default_modules(model) if modules is None else list(modules)
    out = {}
    for n in names:
        if n not in named:
            raise ValueError(f"modules: {n!r} is not a module of the model")
        m = named[n]
        if not supported(m):
            raise ValueError(f"modules: {n!r} is a {type(m).__name__}; {support_note}")
        out[n] = m
    if not out:
        raise ValueError("model: no nn.Linear / Conv1D layers to build K-FAC factors for")
    return out


def _check_damping(damping: float) -> float:
    if isinstance(damping, bool) or not isinstance(damping, (int, float)) or not damping > 0:
        raise ValueError(f"damping must be a number > 0 (K-FAC is singular in general), "
                         f"got {damping!r}")
    if damping == float("inf"):
        raise ValueError("damping must be a finite number > 0, got inf (the damped inverse "
                         "would be zero: no direction)")
    return float(damping)


def check_batch_tokens(model: nn.Module, batches: list, argument: str = "batches") -> None:
    """Token ids of language-model batches fit ``model``: ids in ``[0, vocab)``, length
    within its positions (a batch is a LongTensor ``[n, seq]``, a mapping with
    ``input_ids``, or an ``(ids, targets)`` pair with integer ids). Other batches (float
    inputs of classifiers) are not token batches and pass.

    Raises:
        TypeError, ValueError: Naming ``argument[i]`` (see
            :func:`workbench.core.models.check_model_tokens`).
    """
    if model_vocab_size(model) is None:
        return
    for i, batch in enumerate(batches):
        ids = batch
        if isinstance(batch, Mapping):
            ids = batch.get("input_ids")
        elif isinstance(batch, (tuple, list)) and batch:
            ids = batch[0]
        if isinstance(ids, Tensor) and not ids.is_floating_point() and ids.dtype != torch.bool:
            check_model_tokens(f"{argument}[{i}]", ids, model, ndim=None)


class KFAC:
    """K-FAC factors of the linear layers of a model (see the module docstring).

    Args:
        model: The model (a classifier on ``(x, y)`` batches or a causal LM on token
            batches).
        batches: Iterable of batches (``(x, y)`` pairs, LongTensor ``[b, seq]`` token
            blocks, dicts with ``input_ids``); a single ``[n, seq]`` LongTensor is split
            into blocks of 8.
        loss_fn: ``nn.CrossEntropyLoss`` (default), ``nn.NLLLoss`` or ``nn.MSELoss``.
        fisher_type: ``"true"`` (default) or ``"empirical"``.
        n_samples: For ``"true"``: ``None`` = exact expectation over labels (one backward
            pass per output dimension), an int = Monte Carlo labels per term.
        flavour: ``"expand"`` (default) or ``"reduce"`` for layers with positions.
        seed: Seed of the Monte Carlo labels
            (:func:`~workbench.curvature._problem.sample_labels`).
        modules: Names of the layers to cover (default :func:`default_modules`: all
            ``nn.Linear`` / ``Conv1D`` layers except the output head).

    Attributes:
        factors: ``{module name: (A [in, in], G [out, out])}``.
        loss_kind: ``"ce"``, ``"nll"`` or ``"mse"`` (of ``loss_fn``).
        param_names: Covered parameter names in flat order (per module: weight, bias).
    """

    def __init__(self, model: nn.Module, batches: Any, *, loss_fn: nn.Module | None = None,
                 fisher_type: str = "true", n_samples: int | None = None,
                 flavour: str = "expand", seed: int = 0, modules: Any = None):
        self.fisher_type = check_fisher_type(fisher_type).value
        self.flavour = check_choice("flavour", flavour, FLAVOURS)
        if n_samples is not None:
            if self.fisher_type != "true" or isinstance(n_samples, bool) or int(n_samples) < 1:
                raise ValueError(f"n_samples: only for fisher_type='true', an integer >= 1 "
                                 f"or None, got {n_samples!r}")
            n_samples = int(n_samples)
        self.n_samples = n_samples
        self.loss_fn = nn.CrossEntropyLoss() if loss_fn is None else loss_fn
        self.loss_kind = P.loss_kind_of(self.loss_fn)
        self.modules = resolve_modules(model, modules)
        self.param_names = []
        self._shapes = []
        for n, m in self.modules.items():
            self.param_names.append(f"{n}.weight")
            self._shapes.append(m.weight.shape)
            if m.bias is not None:
                self.param_names.append(f"{n}.bias")
                self._shapes.append(m.bias.shape)
        batch_list = P.as_batch_list(batches)
        check_batch_tokens(model, batch_list)
        self.factors = self._compute(model, batch_list, seed)
        self._eig: dict[str, tuple] = {}

    # ------------------------------------------------------------------ factors
    def _compute(self, model, batches, seed):
        kind, loss_fn = self.loss_kind, self.loss_fn
        n_total = sum(P.count_terms(b, kind, loss_fn) for b in batches)
        A: dict[str, Any] = {n: 0.0 for n in self.modules}
        G: dict[str, Any] = {n: 0.0 for n in self.modules}
        rows = {n: 0 for n in self.modules}
        names = list(self.modules)
        first = 0  # global index of the batch's first example (for the sampled labels)
        for batch in batches:
            terms, inputs, outputs = P.batch_terms_with_io(
                model, batch, kind, loss_fn, self.modules,
                purpose="; K-FAC needs one call per layer")
            missing = [n for n in names if n not in outputs]
            if missing:
                raise ValueError(f"modules: {missing[:3]} are not called by the model's "
                                 "forward pass")
            for n in names:  # input factors
                a = inputs[n]
                a = a.reshape(a.shape[0], -1, a.shape[-1]).to(_acc_dtype(a))
                if self.flavour == "expand":
                    a = a.reshape(-1, a.shape[-1])
                else:
                    a = a.mean(1)
                A[n] = A[n] + a.T @ a
                rows[n] += a.shape[0]
            z = terms.outputs.detach()
            scale = P.term_scale(kind, loss_fn, n_total, z.shape[1])
            b = P.n_examples(batch)
            vectors, weight = self._output_vectors(z, terms.targets, terms.active, b,
                                                   first, seed)
            first += b
            outs = [outputs[n] for n in names]
            for k, q in enumerate(vectors):
                gs = torch.autograd.grad(terms.outputs, outs, q, allow_unused=True,
                                         materialize_grads=True,
                                         retain_graph=k < len(vectors) - 1)
                for n, g in zip(names, gs):
                    g = g.reshape(g.shape[0], -1, g.shape[-1]).to(_acc_dtype(g))
                    g = g.reshape(-1, g.shape[-1]) if self.flavour == "expand" else g.sum(1)
                    G[n] = G[n] + (scale * weight) * (g.T @ g)
        out = {}
        for n, m in self.modules.items():
            a_n, g_n = A[n] / rows[n], G[n]
            if not isinstance(g_n, Tensor):  # no backward pass reached the layer
                d_out = m.weight.shape[1] if is_conv1d(m) else m.weight.shape[0]
                g_n = torch.zeros(d_out, d_out, dtype=a_n.dtype, device=a_n.device)
            P.check_finite(f"K-FAC factors of {n}", a_n)
            P.check_finite(f"K-FAC factors of {n}", g_n)
            out[n] = (a_n.contiguous(), g_n.contiguous())
        return out

    def _output_vectors(self, z, targets, active, b, first, seed
                        ) -> tuple[list[Tensor], float]:
        """Output-space vectors ``[n, C]`` to backpropagate, and their common weight
        (``b`` examples, the first of global index ``first``, for the sampled labels)."""
        kind = self.loss_kind
        mask = active.to(z.dtype)[:, None]
        if self.fisher_type == "empirical":
            zr = z.clone().requires_grad_(True)
            R = torch.autograd.grad(P.term_losses(kind, zr, targets).sum(), zr)[0]
            return [R * mask], 1.0
        if self.n_samples is not None:
            S = self.n_samples
            Y = P.sample_labels(kind, z, b, S, seed, first).reshape(S, *targets.shape)
            zs = z.unsqueeze(0).expand(S, *z.shape).clone().requires_grad_(True)
            ls = P.term_losses(kind, zs.reshape(-1, z.shape[1]),
                               Y.reshape(S * z.shape[0], *Y.shape[2:])).sum()
            R = torch.autograd.grad(ls, zs)[0]
            return [R[s] * mask for s in range(S)], 1.0 / S

        # exact: columns of a square root S_t (S_t S_t^T = H_t) of each term's output
        # Hessian. With weight sharing the cross-term products S_t S_t'^T enter G, so the
        # root matters; the closed forms below are curvlinops' (``loss_hessian_matrix_sqrt``).
        if kind == "ce":
            p = z.softmax(-1)
            sp = p.sqrt()
            # S_ij = delta_ij sqrt(p_i) - p_i sqrt(p_j)
            root = torch.diag_embed(sp) - p[:, :, None] * sp[:, None, :]
        elif kind == "mse":
            C = z.shape[1]
            root = (2.0 ** 0.5) * torch.eye(C, dtype=z.dtype, device=z.device).expand(
                z.shape[0], C, C)
        else:  # nll: the loss is linear in its input, its Hessian is zero
            root = torch.zeros(z.shape[0], z.shape[1], 1, dtype=z.dtype, device=z.device)
        return [root[:, :, c] * mask for c in range(root.shape[-1])], 1.0

    # ------------------------------------------------------------------ products
    def _split(self, v) -> tuple[list[Tensor], str]:
        if isinstance(v, dict):
            missing = [n for n in self.param_names if n not in v]
            if missing:
                raise ValueError(f"v: missing parameters {missing[:3]}")
            return [v[n] for n in self.param_names], "dict"
        if isinstance(v, Tensor):
            D = sum(s.numel() for s in self._shapes)
            if v.ndim != 1 or v.numel() != D:
                raise ValueError(f"v: expected a flat tensor of {D} entries, got {tuple(v.shape)}")
            return P.unflat(v, [torch.empty(s) for s in self._shapes]), "flat"
        return list(v), "list"

    def _join(self, parts, fmt):
        if fmt == "dict":
            return dict(zip(self.param_names, parts))
        if fmt == "flat":
            return P.flat(parts)
        return parts

    def _blocks(self):
        i = 0
        for n, m in self.modules.items():
            has_bias = m.bias is not None
            yield n, i, has_bias, is_conv1d(m)
            i += 2 if has_bias else 1

    @property
    def num_params(self) -> int:
        """Number of covered parameter entries ``D``."""
        return sum(s.numel() for s in self._shapes)

    def matvec(self, v):
        """``K v`` for ``v`` given flat, as a list, or as ``{param name: tensor}``."""
        parts, fmt = self._split(v)
        out = list(parts)
        for n, i, has_bias, tr in self._blocks():
            A, G = self.factors[n]
            W = parts[i].T if tr else parts[i]
            R = G @ W.to(G.dtype) @ A
            out[i] = (R.T if tr else R).to(parts[i].dtype)
            if has_bias:
                out[i + 1] = (G @ parts[i + 1].to(G.dtype)).to(parts[i + 1].dtype)
        return self._join(out, fmt)

    def eigenvalues(self, module: str) -> tuple[Tensor, Tensor]:
        """Eigenvalues (ascending, clipped at 0) of the factors ``(A, G)`` of ``module``;
        the weight block's eigenvalues are all products ``g_i a_j``."""
        la, _, lg, _ = self._eigh(module)
        return la, lg

    def _eigh(self, n):
        if n not in self._eig:
            A, G = self.factors[n]
            la, qa = torch.linalg.eigh(A)
            lg, qg = torch.linalg.eigh(G)
            self._eig[n] = (la.clamp_min(0), qa, lg.clamp_min(0), qg)
        return self._eig[n]

    def inverse_matvec(self, v, damping: float = 1e-3, *, damping_mode: str = "product"):
        """``(K + damping I)^{-1} v`` (``damping_mode="product"``, exact for the
        Kronecker-factored blocks) or ``((G + sqrt(d) I) (x) (A + sqrt(d) I))^{-1} v``
        (``"factors"``); biases use ``G + damping I`` (resp. ``G + sqrt(d) I``).

        Raises:
            ValueError: If ``damping <= 0`` (K-FAC is singular in general) or an unknown
                ``damping_mode``.
        """
        damping = _check_damping(damping)
        check_choice("damping_mode", damping_mode, DAMPING_MODES)
        root = damping ** 0.5
        parts, fmt = self._split(v)
        out = list(parts)
        for n, i, has_bias, tr in self._blocks():
            la, qa, lg, qg = self._eigh(n)
            W = (parts[i].T if tr else parts[i]).to(qg.dtype)
            V = qg.T @ W @ qa
            if damping_mode == "product":
                denom = lg[:, None] * la[None, :] + damping
            else:
                denom = (lg[:, None] + root) * (la[None, :] + root)
            R = qg @ (V / denom) @ qa.T
            out[i] = (R.T if tr else R).to(parts[i].dtype)
            if has_bias:
                b = parts[i + 1].to(qg.dtype)
                d = damping if damping_mode == "product" else root
                out[i + 1] = (qg @ ((qg.T @ b) / (lg + d))).to(parts[i + 1].dtype)
        return self._join(out, fmt)

    def natural_gradient(self, gradient, damping: float = 1e-3, *,
                         damping_mode: str = "product"):
        """Natural-gradient direction ``(K + damping I)^{-1} gradient`` (see
        :meth:`inverse_matvec` for ``damping_mode``)."""
        return self.inverse_matvec(gradient, damping, damping_mode=damping_mode)

    def to_dense(self) -> Tensor:
        """Block-diagonal dense matrix ``[D, D]`` in the order of :attr:`param_names`
        (row-major ``vec`` of each parameter: ``G (x) A`` for ``[out, in]`` weights,
        ``A (x) G`` for transposed ``Conv1D`` weights ``[in, out]``)."""
        blocks = []
        for n, i, has_bias, tr in self._blocks():
            A, G = self.factors[n]
            blocks.append(torch.kron(A, G) if tr else torch.kron(G, A))
            if has_bias:
                blocks.append(G)
        return torch.block_diag(*blocks)

    def inverse_diagonal(self, module: str, damping: float = 1e-3) -> Tensor:
        """Diagonal of ``(G (x) A + damping I)^{-1}`` for the weight of ``module``,
        shaped like the weight: ``[F^-1]_{(o,j),(o,j)} = sum_{k,l} QG_{ok}^2 QA_{jl}^2 /
        (g_k a_l + damping)`` (the OBS denominator)."""
        damping = _check_damping(damping)
        la, qa, lg, qg = self._eigh(module)
        d = (qg.square() @ (1.0 / (lg[:, None] * la[None, :] + damping)) @ qa.square().T)
        return d.T if is_conv1d(self.modules[module]) else d


def _acc_dtype(t: Tensor) -> torch.dtype:
    """float32, or float64 for float64 models."""
    return torch.promote_types(t.dtype, torch.float32)


def lm_gradient(model: nn.Module, batches: Any, names: list[str], *,
                loss_fn: nn.Module | None = None) -> dict[str, Tensor]:
    """Gradient ``{param name: tensor}`` of the mean loss over all active terms of all
    ``batches`` w.r.t. the parameters ``names`` (the normalisation of
    :mod:`workbench.curvature._problem`)."""
    loss_fn = nn.CrossEntropyLoss() if loss_fn is None else loss_fn
    kind = P.loss_kind_of(loss_fn)
    batches = P.as_batch_list(batches)
    named = dict(model.named_parameters())
    params = [named[n] for n in names]
    n_total = sum(P.count_terms(b, kind, loss_fn) for b in batches)
    total = [torch.zeros_like(p) for p in params]
    for batch in batches:
        terms = P.batch_terms(model, batch, kind, loss_fn)
        w = terms.active.to(terms.outputs.dtype) * P.term_scale(kind, loss_fn, n_total,
                                                                 terms.outputs.shape[1])
        loss = (w * P.term_losses(kind, terms.outputs, terms.targets)).sum()
        for t, g in zip(total, torch.autograd.grad(loss, params, allow_unused=True,
                                                   materialize_grads=True)):
            t += g
    return dict(zip(names, total))


def natural_gradient(model: nn.Module, batches: Any, *, kfac: KFAC | None = None,
                     damping: float = 1e-3, damping_mode: str = "product",
                     loss_fn: nn.Module | None = None, **kfac_options: Any
                     ) -> tuple[dict[str, Tensor], dict[str, Tensor], KFAC]:
    """Natural-gradient direction of the mean loss for all covered linear layers.

    Args:
        model: The model.
        batches: Data (see :class:`KFAC`); the gradient and (unless ``kfac`` is given) the
            factors are computed on it.
        kfac: Precomputed factors (else ``KFAC(model, batches, **kfac_options)``).
        damping, damping_mode: See :meth:`KFAC.inverse_matvec`.

    Returns:
        ``(direction, gradient, kfac)``: ``{param name: (K + damping I)^{-1} g}``, the
        gradient ``g`` itself, and the K-FAC object. A step is ``theta -= lr * direction``.
    """
    _check_damping(damping)
    check_kwargs("natural_gradient", kfac_options,
                 ("fisher_type", "n_samples", "flavour", "seed", "modules"))
    if kfac is None:
        kfac = KFAC(model, batches, loss_fn=loss_fn, **kfac_options)
    grad = lm_gradient(model, batches, kfac.param_names, loss_fn=loss_fn)
    return kfac.natural_gradient(grad, damping, damping_mode=damping_mode), grad, kfac


def modules_of_type(model: nn.Module, types: list[str] | tuple[str, ...] | None) -> list[str]:
    """The :func:`default_modules` (linear layers but the head) whose last name is in
    ``types``.

    Args:
        model: The network.
        types: Last components of module names, e.g. ``["q_proj", "o_proj"]``; ``None``
            for all default modules.

    Returns:
        Module names in :meth:`~torch.nn.Module.named_modules` order.

    Raises:
        ValueError: If no default module has one of the ``types``.
    """
    names = default_modules(model)
    if types is None:
        return names
    wanted = list(types)
    kept = set(wanted)
    out = [n for n in names if n.rsplit(".", 1)[-1] in kept]
    if not out:
        raise ValueError(f"types: no linear layer named {wanted} in the model")
    return out
