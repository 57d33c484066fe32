"""Run layout and the completion rule (workbench.experiments.running.runs)."""

import ast
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from workbench.experiments.running import runs


def frames(n=3):
    rec = pd.DataFrame({"round": range(n), "val_ppl": [10.0 + r for r in range(n)]})
    losses = pd.DataFrame({"round": [1, 1], "step": [0, 1], "loss": [3.0, 2.9]})
    return {"records": rec, "losses": losses}


def test_write_run_writes_every_file_and_records_last(tmp_path, monkeypatch):
    order = []
    real = runs.io.write_parquet

    def spy(target, frame):
        order.append(target.name)
        return real(target, frame)

    monkeypatch.setattr(runs.io, "write_parquet", spy)
    d = tmp_path / "B2" / "seed1"
    path = runs.write_run(d, frames(), {"winning_ticket_score": 0.9},
                          {"seed": 1, "environment": {"python": "x"}})
    assert path == d / "records.parquet" and order[-1] == "records.parquet"
    assert runs.is_complete(d) and runs.completion_problem(d) is None
    manifest = runs.read_manifest(d)
    assert manifest["tables"]["records"]["rows"] == 3
    assert manifest["tables"]["losses"]["columns"] == ["round", "step", "loss"]
    assert runs.read_summary(d) == {"winning_ticket_score": 0.9}
    pd.testing.assert_frame_equal(runs.read_table(d, "records"), frames()["records"])
    assert runs.read_table(d, "super_weights") is None
    assert runs.parse_run_dir(d) == ("B2", 1) and runs.run_dir(tmp_path, "B2", 1) == d
    assert list(runs.finished_runs(tmp_path)) == [d]


def test_completion_rule_rejects_empty_corrupt_and_mismatched_records(tmp_path):
    d = tmp_path / "X" / "seed0"
    assert runs.completion_problem(d) == "no records.parquet"
    runs.write_run(d, frames(), {}, {"environment": {}})
    rec = d / "records.parquet"
    # empty records (what a crashed writer of an older version left) is not done
    pd.DataFrame({"round": []}).to_parquet(rec)
    assert "empty" in runs.completion_problem(d)
    # truncated bytes do not parse
    runs.write_run(d, frames(), {}, {"environment": {}})
    rec.write_bytes(rec.read_bytes()[:40])
    assert "does not parse" in runs.completion_problem(d)
    # more rows than the manifest declares: records from another write
    frames(5)["records"].to_parquet(rec)
    assert "declares 3" in runs.completion_problem(d)
    # no manifest at all
    runs.write_run(d, frames(), {}, {"environment": {}})
    (d / "manifest.json").unlink()
    assert not runs.is_complete(d)
    assert list(runs.finished_runs(tmp_path)) == []


def test_rewriting_a_run_removes_the_old_records_first(tmp_path, monkeypatch):
    d = tmp_path / "X" / "seed0"
    runs.write_run(d, frames(), {}, {"environment": {}})

    def boom(target, obj):
        raise OSError("disk full")

    monkeypatch.setattr(runs.io, "write_json", boom)
    with pytest.raises(OSError):
        runs.write_run(d, frames(4), {}, {"environment": {}})
    assert not runs.is_complete(d)  # a half-written re-run never looks finished


@pytest.mark.parametrize("tables, words", [
    ({"losses": frames()["losses"]}, ["records", "non-empty"]),
    ({"records": pd.DataFrame({"round": []})}, ["records", "non-empty"]),
    ({"records": frames()["records"], "weights": frames()["losses"]}, ["weights", "allowed"]),
    ({"records": [1, 2]}, ["records", "DataFrame"]),
])
def test_write_run_bad_input(tmp_path, tables, words):
    with pytest.raises(ValueError) as err:
        runs.write_run(tmp_path / "r", tables, {}, {})
    for w in words:
        assert w in str(err.value)
    assert not (tmp_path / "r" / "records.parquet").exists()


def test_names_and_temporary_files(tmp_path):
    with pytest.raises(ValueError, match="allowed"):
        runs.table_path(tmp_path, "weights")
    with pytest.raises(ValueError, match="seed"):
        runs.parse_run_dir(tmp_path / "B2" / "run1")
    d = tmp_path / "r"
    (d / "checkpoints").mkdir(parents=True)
    leftovers = [d / ".records.parquet.abc.tmp", d / ".notebook.src.ipynb",
                 d / "checkpoints" / ".round_001.pt.x.tmp"]
    for p in leftovers:
        p.mkdir() if p.suffix == ".tmp" else p.write_text("{}")
    (d / "params.json").write_text(json.dumps({"seed": 0}))
    assert runs.temporary_files(d) == sorted(leftovers)
    assert runs.read_params(d) == {"seed": 0}


def test_every_file_name_of_a_run_is_spelled_in_runs_only():
    """The other modules of the running layer (cell states, cells, notebooks, SLURM, the
    grid) take every file name of a grid or cell folder from runs: no literal names one."""
    looks_like_a_file = re.compile(r"\.(json|lock|ipynb|parquet|tmp)$|^\.jupyter-runtime$"
                                   r"|^checkpoints$|^_submitit$")
    folder = Path(runs.__file__).parent
    spelled = [(p.name, node.value) for p in sorted(folder.glob("*.py")) if p.name != "runs.py"
               for node in ast.walk(ast.parse(p.read_text()))
               if isinstance(node, ast.Constant) and isinstance(node.value, str)
               and looks_like_a_file.search(node.value)]
    assert spelled == []
    names = [runs.HEARTBEAT, runs.KERNEL_RUNTIME_DIR, runs.LEASE, runs.LOCK, runs.PARAMS,
             runs.STATUS, runs.NOTEBOOK, runs.CHECKPOINTS, runs.SUMMARY, runs.MANIFEST,
             *runs.TABLES.values()]
    assert len(set(names)) == len(names)
    assert runs.source_copy(Path("d") / runs.NOTEBOOK).match(runs.TEMPORARY_PATTERNS[1])
