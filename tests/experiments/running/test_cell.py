"""One cell of a grid (workbench.experiments.running.cell): a lost attempt recorded, and
the module shared by the grid and SLURM without a circle."""

import ast
import json
from pathlib import Path

from workbench.experiments.running import cell as grid_cell
from workbench.experiments.running import slurm


def _imported_modules(module) -> set[str]:
    """Every module a source file imports, function-local imports included."""
    tree = ast.parse(Path(module.__file__).read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def test_slurm_runs_cells_through_the_cell_module_never_the_grid():
    imported = _imported_modules(slurm)
    assert "workbench.experiments.running.cell" in imported
    assert not any(m.startswith("workbench.experiments.running.grid") for m in imported)


def test_a_lost_attempt_is_recorded_failed_keeping_the_status_fields(tmp_path):
    d = tmp_path / "X" / "seed3"
    d.mkdir(parents=True)
    (d / "status.json").write_text(json.dumps({"status": "running", "host": "node7",
                                               "started": "2026-01-01T00:00:00Z"}))
    c = grid_cell.Cell("X", 3, "nb", {"seed": 3}, d)
    record = grid_cell.record_failure(c, RuntimeError("worker died"))
    on_disk = json.loads((d / "status.json").read_text())
    assert on_disk == record == {"status": "failed", "host": "node7",
                                 "started": "2026-01-01T00:00:00Z",
                                 "error": "RuntimeError: worker died", "experiment": "X",
                                 "seed": 3, "notebook": str(d / "notebook.ipynb")}
    assert c.state == "failed"


def test_a_lost_attempt_of_a_cell_without_folder_creates_none(tmp_path):
    d = tmp_path / "X" / "seed0"
    record = grid_cell.record_failure(grid_cell.Cell("X", 0, "nb", {}, d), OSError("lost"))
    assert record["status"] == "failed" and record["error"] == "OSError: lost"
    assert not d.exists()
