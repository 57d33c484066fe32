"""Curvature tests run single-threaded: the problems are tiny, and on a shared 2-core
machine intra-op threads only add contention (restored after each test)."""

import pytest


@pytest.fixture(autouse=True)
def _curvature_on_one_thread(one_thread):
    yield
