"""Run the py:percent notebooks under ``notebooks/`` through papermill.

Notebooks are kept in git as jupytext py:percent files (``notebooks/NAME.py``) so they
diff cleanly; JupyterLab opens them as notebooks through jupytext. For a batch run the
``.py`` file is converted to ``.ipynb`` in memory and executed by papermill with the
``workbench`` kernel that ``make`` registers inside ``.venv``.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Any, Mapping

from workbench.core import io

from workbench.core import paths


def notebook_source(name: str | os.PathLike) -> Path:
    """Resolve ``name`` (``"00_quickstart"``, a ``.py`` or ``.ipynb`` path) to a file.

    Raises:
        FileNotFoundError: Listing the available notebooks.
    """
    p = Path(name)
    candidates = [p, paths.NOTEBOOKS_DIR / p, paths.NOTEBOOKS_DIR / f"{p}.py"]
    for c in candidates:
        if c.is_file() and c.suffix in (".py", ".ipynb"):
            return c
    known = sorted(x.stem for x in paths.NOTEBOOKS_DIR.glob("*.py"))
    raise FileNotFoundError(f"notebook {str(name)!r} not found; available: {', '.join(known)}")


def load_notebook(name: str | os.PathLike):
    """Read a notebook (``.py`` percent or ``.ipynb``) as an ``nbformat`` node."""
    import jupytext

    return jupytext.read(notebook_source(name))


def notebook_parameters(name: str | os.PathLike) -> dict[str, Any]:
    """The names and default values assigned in the notebook's ``parameters`` cell.

    Raises:
        ValueError: If the notebook has no cell tagged ``parameters``.
    """
    nb = load_notebook(name)
    for cell in nb.cells:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            out: dict[str, Any] = {}
            for node in ast.parse(cell.source).body:
                if isinstance(node, (ast.Assign, ast.AnnAssign)):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    for t in targets:
                        if isinstance(t, ast.Name):
                            try:
                                out[t.id] = ast.literal_eval(node.value)
                            except ValueError:
                                out[t.id] = ast.unparse(node.value)
            return out
    raise ValueError(f"notebook {name!r} has no cell tagged 'parameters'")


def check_parameters(name: str | os.PathLike, parameters: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming any parameter the notebook does not declare."""
    declared = notebook_parameters(name)
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        raise ValueError(
            f"parameters {unknown} are not in the parameters cell of {name}; "
            f"allowed: {sorted(declared)}"
        )


def run_notebook(
    name: str | os.PathLike,
    output: str | os.PathLike,
    parameters: Mapping[str, Any] | None = None,
    *,
    kernel_name: str = paths.KERNEL_NAME,
    cwd: str | os.PathLike | None = None,
    progress: bool = False,
    timeout: int | None = None,
) -> Path:
    """Execute a notebook with papermill and write the executed ``.ipynb`` to ``output``.

    Parameter names are checked against the ``parameters`` cell first (papermill itself
    only warns). The executed notebook is written even when a cell fails; papermill's
    ``PapermillExecutionError`` is then re-raised.

    Args:
        name: Notebook name under ``notebooks/`` or a path.
        output: Path of the executed notebook.
        parameters: Values injected after the ``parameters`` cell.
        kernel_name: Jupyter kernel (default ``workbench``, registered by ``make``).
        cwd: Working directory of the kernel (default: the repository root).
        progress: Show papermill's cell progress bar.
        timeout: Per-cell timeout in seconds.

    Returns:
        The output path.
    """
    import nbformat
    import papermill as pm

    parameters = dict(parameters or {})
    check_parameters(name, parameters)
    nb = load_notebook(name)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    src = output.with_name(f".{output.stem}.src.ipynb")
    io.write_text(src, nbformat.writes(nb))
    try:
        pm.execute_notebook(
            str(src),
            str(output),
            parameters=parameters,
            kernel_name=kernel_name,
            cwd=str(cwd or paths.ROOT),
            progress_bar=progress,
            execution_timeout=timeout,
        )
    finally:
        src.unlink(missing_ok=True)
    return output
