"""Shared fixtures of the experiment-layer tests: figures go to the test's folder."""

import pytest


@pytest.fixture(autouse=True)
def figures_in_tmp(tmp_path, monkeypatch):
    """Figures saved without a folder go to the test's temporary folder, never to the
    project's ``figures/`` (``save_figure`` reads ``paths.FIGURES_DIR`` when called)."""
    from workbench.core import paths

    folder = tmp_path / "figures"
    monkeypatch.setattr(paths, "FIGURES_DIR", folder)
    return folder
