"""Global pruning thresholds over many score tensors, without concatenating them.

Three ways to find the value below which ``k`` of ``n`` scores lie:

* :func:`exact_kth` (the default everywhere): the exact k-th smallest value and the number
  of scores strictly below it, streaming over the tensors one at a time. Extra memory is
  about one tensor (plus a small sample and a narrow bracket of candidates), counts are
  Python integers, so it works far beyond the ``2**31`` elements where
  ``torch.kthvalue`` on a concatenation refuses. Algorithm: a seeded random sample
  (about 2**20 values) brackets the target quantile; one pass counts the scores below the
  bracket and gathers those inside it; ``kthvalue`` on the (small) bracket gives the exact
  answer. When the bracket misses (it is checked, never trusted) a radix select on the
  order-preserving integer keys of the float32 bits (two 16-bit histogram passes) gives
  it instead. Either way the result is exact.
* :func:`statistical_threshold`: the seed's method (streamed mean/std, a normal-quantile
  first guess, then bisection on the count). Not exact with ties or a capped iteration
  count; kept for comparison.
* :func:`histogram_threshold`: a streamed fixed-bin histogram between the global min and
  max, interpolated inside the crossing bin. Approximate; kept for comparison.

A *source* of scores is either a mapping ``name -> Tensor`` or a zero-argument callable
that returns a fresh iterable of tensors (or of ``(name, tensor)`` pairs) each time it is
called, so scores can be generated layer by layer and never be held together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping, Union

import torch

Source = Union[Mapping[str, torch.Tensor], Callable[[], Iterable]]

THRESHOLD_METHODS = ("exact", "statistical", "histogram")

_SAMPLE = 1 << 20  # values drawn to bracket the quantile
_BRACKET_BUDGET = 1 << 26  # max candidates gathered inside the bracket
_CHUNK = 1 << 18  # elements per piece in the bracket pass


@dataclass(frozen=True)
class Threshold:
    """A global threshold.

    Attributes:
        value: The threshold score. Exact method: the k-th smallest score.
        k: Number of scores to prune (the target).
        n_total: Number of scores in the source.
        n_below: Scores strictly below ``value`` (exact method) or ``<= value``
            (approximate methods: what a ``score > value`` keep rule prunes).
        method: ``"exact"``, ``"statistical"`` or ``"histogram"``.
        iterations: Passes / bisection steps used.
    """

    value: float
    k: int
    n_total: int
    n_below: int
    method: str
    iterations: int = 0


def iter_tensors(source: Source) -> Iterator[torch.Tensor]:
    """Yield the score tensors of ``source`` (mapping or callable), flattened, float32."""
    items = source.values() if isinstance(source, Mapping) else source()
    for item in items:
        t = item[1] if isinstance(item, tuple) else item
        t = t.detach().reshape(-1)
        yield t if t.dtype == torch.float32 else t.float()


def _check(t: torch.Tensor) -> None:
    if torch.isnan(t).any():
        raise ValueError("scores must not contain NaN")


def _check_fast(t: torch.Tensor) -> None:
    """NaN check at the cost of one reduction (a NaN makes the sum NaN)."""
    if math.isnan(float(t.sum())):
        _check(t)


def count_total(source: Source) -> int:
    """Number of scores in ``source`` (one pass over a callable source)."""
    if isinstance(source, Mapping):
        return sum(int(t.numel()) for t in source.values())
    return sum(int(t.numel()) for t in iter_raw(source))


# ----------------------------------------------------------------------------- exact
def _sortable_keys(t: torch.Tensor) -> torch.Tensor:
    """Order-preserving int32 keys of float32 values (-0.0 mapped to +0.0)."""
    bits = (t + 0.0).view(torch.int32)
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def _key_to_float(key: int) -> float:
    bits = key ^ 0x7FFFFFFF if key < 0 else key
    return float(torch.tensor([bits], dtype=torch.int32).view(torch.float32)[0])


def _radix_kth(source: Source, k: int) -> tuple[float, int]:
    """Exact k-th smallest (1-based) by a two-level 16-bit radix select on float keys."""
    hist = None
    for t in iter_tensors(source):
        _check_fast(t)
        high = (_sortable_keys(t) >> 16) + 32768
        h = torch.bincount(high, minlength=65536).cpu()
        hist = h if hist is None else hist + h
    cum = torch.cumsum(hist, 0)
    b = int(torch.searchsorted(cum, torch.tensor([k]), right=False)[0])
    below_bin = int(cum[b - 1]) if b > 0 else 0
    hist2 = torch.zeros(65536, dtype=torch.long)
    for t in iter_tensors(source):
        keys = _sortable_keys(t)
        sel = keys[((keys >> 16) + 32768) == b]
        if sel.numel():
            hist2 += torch.bincount(sel & 0xFFFF, minlength=65536).cpu()
    cum2 = torch.cumsum(hist2, 0)
    low = int(torch.searchsorted(cum2, torch.tensor([k - below_bin]), right=False)[0])
    n_less = below_bin + (int(cum2[low - 1]) if low > 0 else 0)
    key = ((b - 32768) << 16) | low
    return _key_to_float(key), n_less


def iter_raw(source: Source) -> Iterator[torch.Tensor]:
    """Yield the score tensors of ``source`` flattened, in their own dtype (no copy)."""
    items = source.values() if isinstance(source, Mapping) else source()
    for item in items:
        t = item[1] if isinstance(item, tuple) else item
        yield t.detach().reshape(-1)


def _sample(source: Source, n_total: int, size: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    parts = []
    for t in iter_raw(source):
        m = max(1, math.ceil(size * t.numel() / n_total)) if t.numel() else 0
        if m:
            idx = torch.randint(0, t.numel(), (m,), generator=gen).to(t.device)
            parts.append(t[idx].float().cpu())  # index first: no full-size float copy
    return torch.cat(parts)


def _bound_for(t: torch.Tensor, value: float) -> float | None:
    """``value`` if it is exactly representable in ``t``'s dtype (so comparing ``t`` with
    it in that dtype is exact), else ``None``."""
    if t.dtype == torch.float32 or t.dtype == torch.float64 or math.isinf(value):
        return value
    return value if float(torch.tensor(value, dtype=t.dtype)) == value else None


def exact_kth(source: Source, k: int, *, n_total: int | None = None, seed: int = 0) -> Threshold:
    """The exact k-th smallest score over all tensors of ``source`` (1-based ``k``).

    Args:
        source: Mapping ``name -> Tensor`` or a callable returning a fresh iterable of
            tensors; any float dtype, any device (counts go to the CPU).
        k: Rank in ``[1, n_total]``.
        n_total: Total number of scores if known (saves a pass over a callable source).
        seed: Seed of the bracketing sample (the result does not depend on it).

    Returns:
        A :class:`Threshold` with ``value`` = the k-th smallest score and ``n_below`` =
        the number of scores strictly smaller (so ``k - n_below`` of the scores equal to
        ``value`` complete the k smallest).

    Raises:
        ValueError: ``k`` out of range or NaN scores.
    """
    n = count_total(source) if n_total is None else int(n_total)
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    sample = torch.sort(_sample(source, n, min(_SAMPLE, n), seed)).values
    m = sample.numel()
    q = k / n
    delta = 6.0 * math.sqrt(max(q * (1 - q), 1.0 / m) / m) + 2.0 / m
    lo_i, hi_i = math.floor((q - delta) * m), math.ceil((q + delta) * m)
    lo = float(sample[lo_i]) if lo_i >= 0 else -math.inf
    hi = float(sample[hi_i]) if hi_i < m else math.inf
    n_lt, gathered, n_in, passes = 0, [], 0, 1
    for t in iter_raw(source):
        # compare in the tensor's own dtype when the bracket is exact there (bf16 scores:
        # no float32 copy); temporaries: two bool masks of one tensor
        if not t.is_floating_point() or _bound_for(t, lo) is None or _bound_for(t, hi) is None:
            t = t.float()
        if math.isnan(float(t.sum(dtype=torch.float32))):
            _check(t)
        for c in t.split(_CHUNK):  # cache-sized pieces: temporaries stay small
            band = c <= hi
            n_le = int(torch.count_nonzero(band))
            band &= c >= lo
            sel = c[band].float()
            n_in += sel.numel()
            n_lt += n_le - sel.numel()
            gathered.append(sel)
        if n_in > _BRACKET_BUDGET:
            gathered = None
            break
    passes += 1
    if gathered is not None and n_lt < k <= n_lt + n_in:
        cand = torch.cat([g.cpu() for g in gathered])
        value = float(torch.kthvalue(cand, k - n_lt).values)
        n_below = n_lt + int((cand < value).sum())
        return Threshold(value, k, n, n_below, "exact", passes)
    value, n_below = _radix_kth(source, k)
    return Threshold(value, k, n, n_below, "exact", passes + 2)


# ----------------------------------------------------------------------------- approximate
def _count_le(source: Source, value: float) -> int:
    return sum(int((t <= value).sum()) for t in iter_tensors(source))


def statistical_threshold(
    source: Source, k: int, *, max_iter: int = 50, tolerance: int = 0
) -> Threshold:
    """The seed's statistical estimate + bisection (approximate, kept for comparison).

    Pass 1 streams count, mean, std, min and max; the first guess is
    ``mean + std * Phi^-1(k / n)``; then bisection on the threshold until the number of
    scores ``<= threshold`` is within ``tolerance`` of ``k`` or ``max_iter`` steps.

    Returns:
        A :class:`Threshold` whose ``n_below`` is the count ``<= value`` actually pruned
        by a ``score > value`` keep rule (may differ from ``k`` with ties).
    """
    from scipy.stats import norm

    n, s1, s2, lo, hi = 0, 0.0, 0.0, math.inf, -math.inf
    for t in iter_tensors(source):
        _check(t)
        td = t.double()
        n += t.numel()
        s1 += float(td.sum())
        s2 += float((td * td).sum())
        lo, hi = min(lo, float(t.min())), max(hi, float(t.max()))
    mean = s1 / n
    std = math.sqrt(max(s2 / n - mean * mean, 0.0))
    q = min(max(k / n, 1e-9), 1 - 1e-9)
    guess = min(max(mean + std * float(norm.ppf(q)), lo), hi)
    left, right = lo, hi
    value, count, it = guess, _count_le(source, guess), 1
    while abs(count - k) > tolerance and it < max_iter:
        if count > k:
            right = value
        else:
            left = value
        new = 0.5 * (left + right)
        if new == value:
            break
        value = new
        count = _count_le(source, value)
        it += 1
    return Threshold(value, k, n, count, "statistical", it)


def histogram_threshold(source: Source, k: int, *, bins: int = 4096) -> Threshold:
    """Streamed fixed-bin histogram between min and max, interpolated (approximate).

    Returns:
        A :class:`Threshold` whose ``n_below`` is the exact count ``<= value``.
    """
    lo, hi, n = math.inf, -math.inf, 0
    for t in iter_tensors(source):
        _check(t)
        n += t.numel()
        lo, hi = min(lo, float(t.min())), max(hi, float(t.max()))
    finite_hi = hi if math.isfinite(hi) else lo + 1.0
    hist = torch.zeros(bins, dtype=torch.float64)
    for t in iter_tensors(source):
        hist += torch.histc(t.clamp(max=finite_hi), bins=bins, min=lo, max=finite_hi).double().cpu()
    cum = torch.cumsum(hist, 0)
    b = int(torch.searchsorted(cum, torch.tensor([float(k)], dtype=torch.float64)))
    b = min(b, bins - 1)
    before = float(cum[b - 1]) if b > 0 else 0.0
    width = (finite_hi - lo) / bins
    frac = (k - before) / max(float(hist[b]), 1.0)
    value = lo + width * (b + frac)
    return Threshold(value, k, n, _count_le(source, value), "histogram", 3)


def global_threshold(source: Source, k: int, *, method: str = "exact", **options) -> Threshold:
    """Dispatch to :func:`exact_kth`, :func:`statistical_threshold` or
    :func:`histogram_threshold`.

    Raises:
        ValueError: Unknown ``method`` (lists the allowed ones).
    """
    if method == "exact":
        return exact_kth(source, k, **options)
    if method == "statistical":
        return statistical_threshold(source, k, **options)
    if method == "histogram":
        return histogram_threshold(source, k, **options)
    raise ValueError(f"method must be one of {THRESHOLD_METHODS}, got {method!r}")
