"""Relative output paths mean the project root, whatever the working directory."""

import os
from pathlib import Path

import pytest

from workbench.core import paths


def test_resolve_reads_relative_paths_against_the_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a different working directory must not matter
    assert paths.resolve("data/runs/x") == paths.ROOT / "data" / "runs" / "x"
    assert paths.resolve(Path("figures")) == paths.ROOT / "figures"
    assert paths.resolve(tmp_path / "abs") == tmp_path / "abs"
    assert paths.resolve("~/out") == Path(os.path.expanduser("~")) / "out"
    assert not (tmp_path / "data").exists()  # nothing created


@pytest.mark.parametrize("bad, error", [(None, TypeError), (3, TypeError), ("", ValueError),
                                        ("  ", ValueError)])
def test_resolve_bad_input(bad, error):
    with pytest.raises(error, match="path"):
        paths.resolve(bad)
