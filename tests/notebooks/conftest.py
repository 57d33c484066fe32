"""Notebook-helper tests run single-threaded on tiny problems; figures use the Agg backend."""

import matplotlib
import pytest

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _on_one_thread(one_thread):
    yield
