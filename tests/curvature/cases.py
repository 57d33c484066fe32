"""Small float64 test problems for the curvature tests (each built from a seed)."""

from __future__ import annotations

import torch
from torch import nn


class TinyTransformer(nn.Module):
    """Embedding, one causal single-head attention block, a linear head: [b, T] -> [b, T, V]."""

    def __init__(self, vocab: int = 7, dim: int = 4, flatten: bool = False):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.head = nn.Linear(dim, vocab)
        self.flatten = flatten

    def forward(self, ids):
        h = self.emb(ids)
        q, k, v = self.qkv(h).chunk(3, -1)
        T = ids.shape[1]
        att = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
        mask = torch.ones(T, T, dtype=torch.bool).tril()
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        h = h + self.out(att @ v)
        logits = self.head(torch.tanh(h))
        return logits.reshape(-1, logits.shape[-1]) if self.flatten else logits


def mlp(seed: int = 0, d_in: int = 5, hidden: int = 4, d_out: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, d_out)).double()


def cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(18, 3)
    ).double()


def transformer(seed: int = 0, flatten: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    return TinyTransformer(flatten=flatten).double()


def classification_data(seed: int, n: int, shape=(5,), classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=g)
    return X, y


def sequence_data(seed: int, n: int, T: int = 4, vocab: int = 7, flat_targets: bool = False):
    g = torch.Generator().manual_seed(seed)
    X = torch.randint(0, vocab, (n, T), generator=g)
    y = torch.randint(0, vocab, (n, T), generator=g)
    return X, (y.reshape(-1) if flat_targets else y)


def split(X, y, sizes, per_example_targets: int = 1):
    """Split ``(X, y)`` into consecutive batches of the given sizes."""
    out, i = [], 0
    for s in sizes:
        out.append((X[i:i + s], y[i * per_example_targets:(i + s) * per_example_targets]))
        i += s
    return out


def problems():
    """``(name, model, batches)`` of the three architectures, 2 batch splits each."""
    out = []
    X, y = classification_data(1, 10)
    for sizes in ((10,), (3, 7)):
        out.append((f"mlp-{sizes}", mlp(0), split(X, y, sizes)))
    X, y = classification_data(2, 6, shape=(1, 5, 5))
    for sizes in ((6,), (2, 2, 2)):
        out.append((f"cnn-{sizes}", cnn(0), split(X, y, sizes)))
    X, y = sequence_data(3, 4, flat_targets=True)
    for sizes in ((4,), (1, 3)):
        out.append((f"transformer-{sizes}", transformer(0, flatten=True),
                    split(X, y, sizes, per_example_targets=4)))
    return out
