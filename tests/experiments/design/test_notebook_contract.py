"""The notebook contract: the parameters cell read from the file's text, the declared
types, the registries' choice sets and the check of given values
(workbench.experiments.design.notebook_contract)."""

import nbformat
import jupytext
import pytest

from workbench.core import paths
from workbench.experiments.design import notebook_contract


@pytest.mark.parametrize("name", sorted(p.stem for p in paths.NOTEBOOKS_DIR.glob("*.py")))
def test_declared_parameters_match_papermill(name, tmp_path):
    """Our fast reader of the parameters cell agrees with papermill's inspect_notebook
    (names, defaults' text aside, declared type and help) on every shipped notebook."""
    import papermill as pm

    ipynb = tmp_path / f"{name}.ipynb"
    nbformat.write(jupytext.read(paths.NOTEBOOKS_DIR / f"{name}.py"), ipynb)
    ref = pm.inspect_notebook(str(ipynb))
    ours = notebook_contract.declared_parameters(name)
    assert list(ours) == list(ref)
    for key, p in ref.items():
        assert str(ours[key].type) == p["inferred_type_name"], key
        assert ours[key].help == p["help"], key


@pytest.mark.parametrize("kind,value,ok", [
    ("int[1:]", 3, True), ("int[1:]", 0, False), ("int[1:]", "abc", False),
    ("int[1:]", True, False), ("int", 2.5, False), ("float[0:1]", 1, True),
    ("float[0:1]", 1.5, False), ("str|None", None, True), ("str|None", 3, False),
    ("list[int[0:]]|None", [0, 2], True), ("list[int[0:]]|None", [0, -1], False),
    ("list[sparsity]", [0.5, "2:4"], True), ("list[sparsity]", [124], False),
    ("list[sparsity]", ["4:2"], False), ("list[sparsity]", [1.0], False),
    ("{fast,slow}", "slow", True), ("{fast,slow}", "medium", False),
    ("list[@method]", ["wanda", "magnitude"], True), ("list[@method]", ["wandaa"], False),
    ("list[@allocation]", ["owl"], True), ("dict", {}, True), ("dict", [], False),
])
def test_value_problem(kind, value, ok):
    assert (notebook_contract.value_problem(kind, value) is None) == ok


def test_choices_are_the_registries():
    from workbench.pruning.registry import METHODS, SCORE_KINDS

    # the same names (a registry's order follows which provider module was imported first)
    assert sorted(notebook_contract.choice_names("method")) == sorted(METHODS.names())
    assert sorted(notebook_contract.choice_names("score_kind")) == sorted(SCORE_KINDS.names())
    assert set(notebook_contract.choice_names("allocation")) == {
        a for e in METHODS for a in e.props["allocations"]}
    with pytest.raises(ValueError, match="@method"):
        notebook_contract.choice_names("nope")
    with pytest.raises(ValueError, match="unknown type"):
        notebook_contract.value_problem("integer", 1)


def test_bad_values_fail_naming_the_parameter_and_what_is_allowed():
    with pytest.raises(ValueError, match=r"n_blocks='abc' must be an integer >= 1"):
        notebook_contract.check_parameters("00_quickstart", {"n_blocks": "abc"})
    with pytest.raises(ValueError, match=r"methods=\['wandaa'\].*must be one of \[.*'wanda'"):
        notebook_contract.check_parameters("03_sparsity_sweep", {"methods": ["wandaa"]})
    with pytest.raises(ValueError, match="not in the parameters cell"):
        notebook_contract.check_parameters("03_sparsity_sweep", {"n_blocks": 2})
    notebook_contract.check_parameters("03_sparsity_sweep", {"methods": ["wanda"],
                                                             "seeds": None,
                                                             "sparsities": [0.5, "2:4"]})


def test_cli_rejects_a_bad_value_before_any_kernel(tmp_path):
    """In a fresh process, before papermill, nbformat or torch is imported (the choice
    names come from the cache that test_choices_are_the_registries filled)."""
    import subprocess
    import sys

    notebook_contract.choice_names("method")
    code = ("import sys; from workbench.cli import main; "
            "rc = main(['notebook', '03_sparsity_sweep', '-p', 'methods', '[wandaa]', "
            f"'-o', {str(tmp_path / 'x.ipynb')!r}]); "
            "heavy = [m for m in ('torch', 'papermill', 'nbformat') if m in sys.modules]; "
            "print('HEAVY', heavy); sys.exit(rc)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**__import__("os").environ, "PYTHONPATH": str(paths.ROOT)})
    assert res.returncode == 2, res.stderr
    assert "parameter methods=['wandaa']" in res.stderr and "'wanda'" in res.stderr
    assert "HEAVY []" in res.stdout
    assert not (tmp_path / "x.ipynb").exists()
