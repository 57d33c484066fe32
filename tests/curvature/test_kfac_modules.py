"""modules_of_type: the K-FAC default layers filtered by their last name."""

import pytest
from torch import nn

from workbench.curvature.kfac import modules_of_type


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(5, 4)
        self.block = nn.ModuleDict(dict(q_proj=nn.Linear(4, 4), o_proj=nn.Linear(4, 4)))
        self.head = nn.Linear(4, 5, bias=False)
        self.head.weight = self.emb.weight  # tied head: never a K-FAC layer


def test_modules_of_type_filters_the_default_modules():
    net = _Net()
    assert modules_of_type(net, None) == ["block.q_proj", "block.o_proj"]
    assert modules_of_type(net, ["o_proj"]) == ["block.o_proj"]
    assert modules_of_type(net, ("o_proj", "q_proj")) == ["block.q_proj", "block.o_proj"]
    with pytest.raises(ValueError, match=r"no linear layer named \['head'\]"):
        modules_of_type(net, ["head"])
