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
    for key in ("python", "torch", "transformers", "device", "git_commit", "git_dirty", "cuda",
                "cuda_available", "cudnn", "workbench", "workbench_path"):
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


# ----------------------------------------------------------------------------- code state
def _run_git(cwd, *args):
    import subprocess

    return subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args],
                          cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def _fake_checkout(root):
    pkg = root / "workbench"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("__version__ = '9.9'\n")
    _run_git(root, "init", "-q")
    _run_git(root, "add", "workbench/__init__.py")
    _run_git(root, "commit", "-qm", "x")
    return pkg


def test_code_version_is_resolved_from_the_package_folder(tmp_path):
    import shutil

    from workbench.core.repro import code_version

    if shutil.which("git") is None:
        pytest.skip("git not installed")
    pkg = _fake_checkout(tmp_path / "repo")
    head = _run_git(tmp_path / "repo", "rev-parse", "HEAD")
    got = code_version(pkg)
    assert got["git_commit"] == head and got["git_dirty"] is False
    (pkg / "__init__.py").write_text("__version__ = '10'\n")  # a tracked file modified
    assert code_version(pkg)["git_dirty"] is True
    # a copy that is not in a git checkout (site-packages): no commit, no dirty flag
    plain = tmp_path / "site-packages" / "workbench"
    shutil.copytree(pkg, plain)
    assert code_version(plain) == {"git_commit": None, "git_dirty": None, "git_root": None}
    # a copy inside some other repository that does not track it (a venv in a project)
    other = tmp_path / "project"
    other.mkdir()
    _run_git(other, "init", "-q")
    (other / "README").write_text("x")
    _run_git(other, "add", "README")
    _run_git(other, "commit", "-qm", "y")
    inside = other / ".venv" / "lib" / "workbench"
    shutil.copytree(pkg, inside)
    assert code_version(inside)["git_commit"] is None


def test_manifest_records_the_real_checkout_from_any_folder(tmp_path):
    """A run started elsewhere (other cwd, WORKBENCH_HOME outside the repo) still records
    the commit of the checkout the package was imported from, and the versions."""
    import subprocess
    import sys
    from pathlib import Path

    import workbench
    from workbench.core.repro import code_version

    expected = code_version()
    root = str(Path(workbench.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=root, WORKBENCH_HOME=str(tmp_path))
    code = ("import json, sys; from workbench.core.repro import write_manifest; "
            "p = write_manifest(sys.argv[1], seed=1); print(p)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.json")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    env_rec = json.loads((tmp_path / "m.json").read_text())["environment"]
    assert env_rec["git_commit"] == expected["git_commit"]
    assert env_rec["git_dirty"] == expected["git_dirty"]
    if expected["git_commit"] is not None:  # this test runs from a checkout
        assert len(env_rec["git_commit"]) == 40
    assert env_rec["workbench"] == workbench.__version__
    assert env_rec["workbench_path"] == str(Path(workbench.__file__).resolve().parent)
    assert env_rec["cuda"] == torch.version.cuda
    assert env_rec["cuda_available"] == torch.cuda.is_available()
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    assert env_rec["cudnn"] == cudnn
