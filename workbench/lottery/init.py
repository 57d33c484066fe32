"""The lottery ticket's θ0: the weights a run starts from *and* rewinds to.

``init="pretrained"`` keeps the model as loaded. The random schemes (``xavier``,
``kaiming``, ``normal``) replace **every** parameter of the model in place, as the study
behind the experiment table does when it trains its Xavier arms from scratch (and as
Frankle & Carbin 2019 define θ0: the initialisation the network is trained from).
Per-tensor rule of :func:`init_model` (parameters in ``model.named_parameters()`` order,
which lists a tied tensor, e.g. a head tied to the token embedding, once, so tied weights
get one draw and stay tied):

* **Every parameter with >= 2 dimensions** (attention/MLP projections, token and
  position embeddings, the LM head): drawn from the scheme, float32 on the CPU from one
  ``torch.Generator`` seeded with ``seed + INIT_SEED_OFFSET``, then cast to the
  parameter's dtype. Fans: ``fan_in = shape[1]``, ``fan_out = shape[0]`` (PyTorch's
  convention for a ``[out, in]`` weight; for an embedding ``[vocab, d]`` this gives
  ``fan_in = d``, ``fan_out = vocab``, exactly what ``nn.init.*_(embedding.weight)``
  uses); a GPT-2 ``Conv1D`` weight is stored ``[in, out]``, so its fans are swapped to
  follow the layer's meaning.

  - ``xavier``: ``N(0, 2 / (fan_in + fan_out))`` (Glorot & Bengio 2010, normal form).
  - ``kaiming``: ``N(0, 2 / fan_in)`` (He et al. 2015, fan-in mode, ReLU gain).
  - ``normal``: ``N(0, 0.02^2)``, the ``initializer_range`` default of GPT-2 and Llama
    configs (without GPT-2's extra ``1/sqrt(2 n_layer)`` scaling of residual
    projections).

* **1-D parameters**: names ending in ``bias`` -> 0; every other one (RMSNorm /
  LayerNorm scales) -> 1.
* Buffers (rotary frequencies, causal masks) are left as they are.

:func:`reinit_weights` is the *control* draw of ``rewind_to="reinit"`` (Frankle & Carbin's
random re-initialisation): the ranked tensors only, from a differently seeded generator
(``seed + REINIT_SEED_OFFSET``), the same rule for each tensor.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from workbench.core.checks import check_choice
from workbench.pruning.params import transposed_names

SCHEMES = ("xavier", "kaiming", "normal")
NORMAL_STD = 0.02
INIT_SEED_OFFSET = 104729
REINIT_SEED_OFFSET = 7919


def _fans(shape: Sequence[int], transposed: bool) -> tuple[int, int]:
    fan_out, fan_in = int(shape[0]), int(shape[1])
    for d in shape[2:]:
        fan_out, fan_in = fan_out * int(d), fan_in * int(d)
    return (fan_out, fan_in) if transposed else (fan_in, fan_out)


def scheme_std(scheme: str, shape: Sequence[int], *, transposed: bool = False) -> float:
    """Standard deviation of ``scheme`` for a weight of ``shape`` (see the module rule)."""
    check_choice("scheme", scheme, SCHEMES)
    fan_in, fan_out = _fans(shape, transposed)
    if scheme == "xavier":
        return (2.0 / (fan_in + fan_out)) ** 0.5
    if scheme == "kaiming":
        return (2.0 / fan_in) ** 0.5
    return NORMAL_STD


def _draw(shape, scheme: str, transposed: bool, gen: torch.Generator) -> torch.Tensor:
    w = torch.empty(tuple(shape), dtype=torch.float32)
    return w.normal_(0.0, scheme_std(scheme, shape, transposed=transposed), generator=gen)


@torch.no_grad()
def init_model(model: nn.Module, scheme: str, *, seed: int) -> nn.Module:
    """Replace every parameter of ``model`` in place by a fresh θ0 (rule: module docstring).

    Args:
        model: Any model (tied parameters are drawn once).
        scheme: ``"xavier"``, ``"kaiming"`` or ``"normal"``.
        seed: The run's seed.

    Returns:
        ``model``.
    """
    check_choice("scheme", scheme, SCHEMES)
    gen = torch.Generator().manual_seed(int(seed) + INIT_SEED_OFFSET)
    transposed = transposed_names(model)
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            p.copy_(_draw(p.shape, scheme, name in transposed, gen).to(p.dtype))
        elif name.endswith("bias"):
            p.zero_()
        else:
            p.fill_(1.0)
    return model


def reinit_weights(reference: Mapping[str, torch.Tensor], names: Sequence[str], scheme: str,
                   *, seed: int, transposed: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """Fresh draws for ``names`` (the ``rewind_to="reinit"`` control).

    Args:
        reference: ``{name: tensor}`` giving shapes/dtypes (e.g. a state dict).
        names: Which tensors to draw, in this order (the order is part of the seed).
        scheme: One of :data:`SCHEMES`.
        seed: The run's seed (the generator uses ``seed + REINIT_SEED_OFFSET``).
        transposed: Names stored ``[in, out]`` (GPT-2 ``Conv1D``).

    Returns:
        ``{name: new CPU tensor}`` in the reference's dtypes.
    """
    check_choice("scheme", scheme, SCHEMES)
    gen = torch.Generator().manual_seed(int(seed) + REINIT_SEED_OFFSET)
    transposed = set(transposed)
    return {n: _draw(reference[n].shape, scheme, n in transposed, gen).to(reference[n].dtype)
            for n in names}
