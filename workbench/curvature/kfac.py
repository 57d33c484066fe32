"""K-FAC (Kronecker-factored approximate curvature) for ``nn.Linear`` layers.

For a linear layer ``z = W a + b`` (inputs ``a`` ``[in]``, outputs ``z`` ``[out]``) and
the empirical risk ``L = sum_n w_n l_n`` (``w_n = 1/N`` for mean reduction, 1 for sum):

* input factor ``A = (1/N) sum_n a_n a_n^T`` (``[in, in]``),
* output-gradient factor ``G = sum_n w_n E[s_n s_n^T]`` (``[out, out]``), where ``s_n``
  is the gradient of ``l_n`` w.r.t. ``z_n`` for

  - ``fisher_type="type-2"``: exact, ``E[s s^T] = B_n^T H_n B_n`` with ``H_n`` the
    loss Hessian w.r.t. the model outputs and ``B_n = dz_out/dz_n`` (back-propagating
    the columns of ``H_n^{1/2}``) -- the K-FAC of the GGN = true Fisher for CE;
  - ``"mc"``: ``n_samples`` labels sampled from the model's predictive distribution;
  - ``"empirical"``: the data labels.

The weight block (row-major ``vec(W)``) is ``G (x) A``, the bias block is ``G`` (weights
and biases are separate blocks, as in curvlinops' default). This is exact for a single
example (``N = 1``), and for deep linear networks with MSE and ``"type-2"`` (``B_n``
does not depend on ``n``). Only 2-D layer inputs ``[batch, in]`` (one term per example)
are supported.

Damped inverse: ``(G (x) A + lambda I)^{-1}`` is applied exactly with the eigenbases
of ``G`` and ``A``; the natural gradient is that inverse applied to the gradient.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from workbench.curvature import _problem as P

FISHER_TYPES = ("type-2", "mc", "empirical")


class KFAC:
    """K-FAC factors of all (or some) ``nn.Linear`` layers of a model.

    Args:
        model: The model; its ``nn.Linear`` modules are covered.
        batches: Iterable of ``(x, y)`` batches.
        loss_fn: ``nn.CrossEntropyLoss`` (default), ``nn.NLLLoss`` or ``nn.MSELoss``.
        fisher_type: ``"type-2"`` (exact), ``"mc"`` or ``"empirical"``.
        n_samples: Monte Carlo labels per example for ``"mc"``.
        seed: Seed of the Monte Carlo labels.
        modules: Names of the linear modules to cover (default all).

    Attributes:
        factors: ``{module name: (A, G)}``.
        param_names: Covered parameter names in flat order (per module: weight, bias).
    """

    def __init__(self, model: nn.Module, batches: Any, *, loss_fn: nn.Module | None = None,
                 fisher_type: str = "type-2", n_samples: int = 1, seed: int = 0,
                 modules: list[str] | None = None):
        if fisher_type not in FISHER_TYPES:
            raise ValueError(f"fisher_type must be one of {FISHER_TYPES}, got {fisher_type!r}")
        if int(n_samples) < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        self.loss_fn = nn.CrossEntropyLoss() if loss_fn is None else loss_fn
        self.kind = P.loss_kind(self.loss_fn)
        self.fisher_type = fisher_type
        self.n_samples = int(n_samples)
        linear = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        if modules is not None:
            missing = sorted(set(modules) - set(linear))
            if missing:
                raise ValueError(f"modules: {missing} are not nn.Linear modules of the model")
            linear = {n: linear[n] for n in modules}
        if not linear:
            raise ValueError("model: no nn.Linear layers to build K-FAC factors for")
        self.modules = linear
        self.param_names = []
        self._shapes = []
        for n, m in linear.items():
            self.param_names.append(f"{n}.weight")
            self._shapes.append(m.weight.shape)
            if m.bias is not None:
                self.param_names.append(f"{n}.bias")
                self._shapes.append(m.bias.shape)
        self.factors = self._compute(model, P.as_batch_list(batches), seed)
        self._eig: dict[str, tuple] = {}

    # ------------------------------------------------------------------ factors
    def _compute(self, model, batches, seed):
        kind, loss_fn = self.kind, self.loss_fn
        n_total = sum(P.count_terms(b, kind, loss_fn) for b in batches)
        A = {n: 0.0 for n in self.modules}
        G = {n: 0.0 for n in self.modules}
        gen = torch.Generator().manual_seed(int(seed))
        for batch in batches:
            inputs, outputs = {}, {}

            def hook(name):
                def f(mod, args, out):
                    if args[0].ndim != 2:
                        raise ValueError(f"{name}: K-FAC supports 2-D layer inputs only, "
                                         f"got shape {tuple(args[0].shape)}")
                    inputs[name] = args[0].detach()
                    outputs[name] = out
                return f

            handles = [m.register_forward_hook(hook(n)) for n, m in self.modules.items()]
            try:
                terms = P.batch_terms(model, batch, kind, loss_fn)
            finally:
                for h in handles:
                    h.remove()
            z = terms.outputs.detach()
            n_out = z.shape[1]
            w = terms.active.to(z.dtype) * P.term_scale(kind, loss_fn, n_total, n_out)
            Q, omega = self._output_vectors(z, terms.targets, w, gen)  # [K, n, C], [K, n]
            names = list(self.modules)
            grads = torch.autograd.grad(terms.outputs, [outputs[n] for n in names], Q,
                                        is_grads_batched=True, allow_unused=True,
                                        materialize_grads=True)
            for n, g in zip(names, grads):
                a = inputs[n]
                A[n] = A[n] + a.T @ a / n_total
                G[n] = G[n] + torch.einsum("kn,kni,knj->ij", omega, g, g)
        return {n: (A[n].contiguous(), G[n].contiguous()) for n in self.modules}

    def _output_vectors(self, z, targets, w, gen):
        kind = self.kind
        if self.fisher_type == "empirical":
            zr = z.clone().requires_grad_(True)
            R = torch.autograd.grad(P.term_losses(kind, zr, targets).sum(), zr)[0]
            return R[None], w[None]
        if self.fisher_type == "mc":
            S = self.n_samples
            Y = P.sample_targets(kind, z, S, gen)
            zs = z.unsqueeze(0).expand(S, *z.shape).clone().requires_grad_(True)
            ls = P.term_losses(kind, zs.reshape(-1, z.shape[1]),
                               Y.reshape(S * z.shape[0], *Y.shape[2:])).sum()
            R = torch.autograd.grad(ls, zs)[0]
            return R, (w / S)[None].expand(S, -1)
        # type-2: columns of the symmetric square root of each term's output Hessian
        def per_term(zt, yt):
            return P.term_losses(kind, zt[None], yt[None]).sum()

        H = torch.func.vmap(torch.func.hessian(per_term))(z, targets)  # [n, C, C]
        evals, evecs = torch.linalg.eigh(H)
        root = evecs * evals.clamp_min(0).sqrt().unsqueeze(-2)  # H = root root^T
        Q = root.permute(2, 0, 1)  # [C(column), n, C]
        return Q, w[None].expand(Q.shape[0], -1)

    # ------------------------------------------------------------------ products
    def _split(self, v) -> tuple[list[Tensor], str]:
        if isinstance(v, dict):
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
            yield n, i, has_bias
            i += 2 if has_bias else 1

    def matvec(self, v):
        """``K v`` for ``v`` given flat, as a list, or as ``{param name: tensor}``."""
        parts, fmt = self._split(v)
        out = list(parts)
        for n, i, has_bias in self._blocks():
            A, G = self.factors[n]
            out[i] = G @ parts[i] @ A
            if has_bias:
                out[i + 1] = G @ parts[i + 1]
        return self._join(out, fmt)

    def _eigh(self, n):
        if n not in self._eig:
            A, G = self.factors[n]
            la, qa = torch.linalg.eigh(A)
            lg, qg = torch.linalg.eigh(G)
            self._eig[n] = (la.clamp_min(0), qa, lg.clamp_min(0), qg)
        return self._eig[n]

    def inverse_matvec(self, v, damping: float = 1e-3):
        """``(K + damping I)^{-1} v``, exact for the Kronecker-factored blocks.

        Raises:
            ValueError: If ``damping <= 0`` (K-FAC is singular in general).
        """
        if not damping > 0:
            raise ValueError(f"damping must be > 0, got {damping}")
        parts, fmt = self._split(v)
        out = list(parts)
        for n, i, has_bias in self._blocks():
            la, qa, lg, qg = self._eigh(n)
            V = qg.T @ parts[i] @ qa
            out[i] = qg @ (V / (lg[:, None] * la[None, :] + damping)) @ qa.T
            if has_bias:
                out[i + 1] = qg @ ((qg.T @ parts[i + 1]) / (lg + damping))
        return self._join(out, fmt)

    def natural_gradient(self, gradient, damping: float = 1e-3):
        """Natural-gradient direction ``(K + damping I)^{-1} gradient``."""
        return self.inverse_matvec(gradient, damping)

    def to_dense(self) -> Tensor:
        """Block-diagonal dense matrix ``[D, D]`` in the order of :attr:`param_names`."""
        blocks = []
        for n, i, has_bias in self._blocks():
            A, G = self.factors[n]
            blocks.append(torch.kron(G, A))
            if has_bias:
                blocks.append(G)
        return torch.block_diag(*blocks)
