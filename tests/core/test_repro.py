"""Tests for seeding, manifests and atomic writes."""

import json
import os

import numpy as np
import pytest
import torch

from workbench.core import io
from workbench.core.repro import seed_everything, write_manifest


def test_seed_everything_reproduces_all_generators():
    seed_everything(7)
    a = (torch.rand(3), np.random.rand(3))
    seed_everything(7)
    b = (torch.rand(3), np.random.rand(3))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    with pytest.raises(ValueError, match="seed"):
        seed_everything(-1)


def test_manifest_records_environment_and_parameters(tmp_path):
    path = write_manifest(tmp_path / "m.json", seed=3, parameters={"sparsity": 0.5}, note="x")
    rec = json.loads(path.read_text())
    env = rec["environment"]
    for key in ("python", "torch", "transformers", "device", "git_commit", "git_dirty", "cuda"):
        assert key in env
    assert env["torch"] == torch.__version__
    assert rec["seed"] == 3 and rec["parameters"] == {"sparsity": 0.5} and rec["note"] == "x"


def test_atomic_write_leaves_nothing_behind_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    io.write_text(target, "old")
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]
