"""JupyterLab in a real browser: double-click a ``.py`` notebook, run all, screenshot.

Runs ``tests/browser/check_lab.py`` (Chrome DevTools Protocol over ``websocket-client``);
skipped where no Chromium is installed (CI has none). Screenshots land in
``build/browser/`` (ignored by git).
"""

import importlib.util
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _check_module():
    spec = importlib.util.spec_from_file_location("check_lab", HERE / "check_lab.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check_lab = _check_module()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(check_lab.find_browser() is None, reason="no Chromium installed"),
    pytest.mark.skipif(importlib.util.find_spec("websocket") is None,
                       reason="websocket-client not installed"),
]


def test_double_click_opens_a_notebook_and_run_all_writes_under_the_root():
    out = HERE.parents[1] / "build" / "browser"
    findings = check_lab.run_check(out, "00_quickstart", timeout=240)
    assert findings["default_viewers"]["python"] == "Jupytext Notebook"
    assert findings["opened_as"] == "notebook"
    assert findings["kernel"] == "workbench"
    import jupytext

    nb = jupytext.read(HERE.parents[1] / "notebooks" / "00_quickstart.py")
    n_code = sum(cell.cell_type == "code" for cell in nb.cells)
    assert findings["prompts"] == [f"[{i}]:" for i in range(1, n_code + 1)]  # all ran, in order
    assert "data/runs/quickstart/results.parquet" in findings["outputs"]
    assert findings["files_under_notebooks"] == []
    assert (out / "opened.png").stat().st_size > 10_000
    assert (out / "ran.png").stat().st_size > 10_000
