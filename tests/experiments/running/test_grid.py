"""Grid runner: resumability, failures, parameter checks, executors
(workbench.experiments.running.grid).

Uses the fixture notebook tests/fixtures/nb_grid.py (a few seconds per cell, mostly
kernel start), never the real experiment notebook.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from workbench import cli

from workbench.experiments.running import grid

from workbench.experiments.design import specs

FIXTURE = Path(__file__).parents[2] / "fixtures" / "nb_grid.py"


def write_spec(folder: Path, experiments: dict, seeds=(0, 1), **top) -> Path:
    raw = {"name": "fixture", "notebook": str(FIXTURE), "seeds": list(seeds),
           "experiments": experiments, **top}
    path = folder / "fixture.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def log_counts(log: Path) -> dict:
    lines = log.read_text().split("\n") if log.exists() else []
    counts: dict = {}
    for line in filter(None, lines):
        if "round" in line:
            continue
        exp, seed, _ = line.split()
        counts[(exp, int(seed))] = counts.get((exp, int(seed)), 0) + 1
    return counts


def test_failing_cell_is_recorded_and_the_grid_goes_on(tmp_path):
    log = tmp_path / "log.txt"
    spec = write_spec(tmp_path, {"X": {"log_file": str(log), "seeds": [0]},
                                 "Y": {"log_file": str(log), "fail_seed": 1}})
    runs = tmp_path / "runs"
    table = grid.run_grid(spec, None, runs_dir=runs, progress=False)
    states = {(r.experiment, r.seed): r.state for r in table.itertuples()}
    assert states == {("X", 0): "done", ("Y", 0): "done", ("Y", 1): "failed"}
    failed = table[table.state == "failed"].iloc[0]
    assert "fixture failure for seed 1" in failed.error
    assert Path(failed.notebook).is_file()  # the executed notebook is kept for debugging
    status = json.loads((Path(failed.directory) / "status.json").read_text())
    assert status["status"] == "failed" and "RuntimeError" in status["error"]
    params = json.loads((Path(failed.directory) / "params.json").read_text())
    assert params["seed"] == 1 and params["output_dir"] == failed.directory
    assert log_counts(log) == {("X", 0): 1, ("Y", 0): 1}

    done = {d: (Path(d) / "records.parquet").stat().st_mtime_ns
            for d in table[table.state == "done"].directory}
    failed_status = Path(failed.directory) / "status.json"
    before = failed_status.stat().st_mtime_ns
    again = grid.run_grid(spec, None, runs_dir=runs, progress=False, rerun_failed=False)
    assert failed_status.stat().st_mtime_ns == before  # kept as it was
    again = grid.run_grid(spec, None, runs_dir=runs, progress=False)
    assert failed_status.stat().st_mtime_ns != before  # re-run (and fails again)
    assert list(again.state) == list(table.state)
    assert log_counts(log) == {("X", 0): 1, ("Y", 0): 1}  # done cells skipped
    assert {d: (Path(d) / "records.parquet").stat().st_mtime_ns for d in done} == done


def test_unknown_parameter_is_rejected_before_dispatch(tmp_path):
    spec_file = write_spec(tmp_path, {"X": {"effect": 1.0, "bogus_param": 3}})
    with pytest.raises(ValueError, match="bogus_param"):
        specs.load_spec(spec_file)
    # A Spec built without the notebook check is still stopped by the runner.
    raw = yaml.safe_load(spec_file.read_text())
    spec = specs.parse_spec(raw)
    runs = tmp_path / "runs"
    with pytest.raises(ValueError, match="bogus_param"):
        grid.run_grid(spec, None, runs_dir=runs, progress=False)
    assert not runs.exists()


def test_bad_runner_arguments(tmp_path):
    spec = write_spec(tmp_path, {"X": {}})
    with pytest.raises(ValueError, match="submitit-local"):
        grid.run_grid(spec, None, executor="mpi", runs_dir=tmp_path / "r")
    with pytest.raises(ValueError, match="jobs"):
        grid.run_grid(spec, None, jobs=0, runs_dir=tmp_path / "r")


def test_killed_grid_resumes_every_cell_exactly_once(tmp_path, capsys):
    """Kill a 2-worker grid part-way (SIGKILL), then resume it."""
    log = tmp_path / "log.txt"
    exps = {name: {"log_file": str(log), "sleep": 1.0} for name in ("X", "Y")}
    spec = write_spec(tmp_path, exps)
    runs = tmp_path / "runs"
    cells = grid.plan(spec, None, runs)
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench.cli", "grid", "run", str(spec), "--profile", "none",
         "--runs-dir", str(runs), "--jobs", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if sum(c.state == "done" for c in cells) >= 1:
                break
            if proc.poll() is not None:
                pytest.fail(f"the grid process exited early with code {proc.returncode}")
            time.sleep(0.2)
        else:
            pytest.fail("no cell finished within 120 s")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the group of the process this test started
        proc.wait()
    time.sleep(1.5)  # orphaned kernels notice their parent is gone and exit
    finished = {c.directory: (c.directory / "records.parquet").read_bytes()
                for c in cells if c.state == "done"}
    states = [c.state for c in cells]
    assert 1 <= len(finished) < len(cells), states
    # cells from the 2-worker pool ran with cpu_count // 2 threads in their kernels
    threads = max(1, (os.cpu_count() or 1) // 2)
    for d in finished:
        assert pd.read_parquet(d / "records.parquet")["omp_threads"].iloc[0] == str(threads)

    table = grid.run_grid(spec, None, runs_dir=runs, progress=False)
    assert (table.state == "done").all(), table
    assert log_counts(log) == {(c.experiment, c.seed): 1 for c in cells}
    for d, content in finished.items():  # finished cells were not touched
        assert (d / "records.parquet").read_bytes() == content
    assert cli.main(["grid", "status", str(spec), "--profile", "none", "--runs-dir",
                     str(runs)]) == 0
    out = capsys.readouterr().out
    assert "done 4 of 4 cells" in out


def test_submitit_local_executor(tmp_path):
    """The same grid through submitit's LocalExecutor (what SLURM runs use)."""
    spec = write_spec(tmp_path, {"X": {"effect": 2.0}})
    runs = tmp_path / "runs"
    table = grid.run_grid(spec, None, runs_dir=runs, executor="submitit-local", jobs=2,
                          progress=False)
    assert (table.state == "done").all(), table
    root = specs.load_spec(spec).runs_dir(None, runs)
    assert len(list((root / "_submitit").glob("*/*_result.pkl"))) == 2
    rec = pd.read_parquet(root / "X" / "seed1" / "records.parquet")
    assert (rec.seed == 1).all() and (rec.experiment == "X").all()


def test_killed_cell_resumes_from_its_last_finished_round(tmp_path):
    """SIGKILL a cell after round 1 is checkpointed: it reads as interrupted, its
    leftovers go, and the re-run computes only the missing rounds, giving the records of
    an uninterrupted run."""
    log = tmp_path / "log.txt"
    spec = write_spec(tmp_path, {"X": {"log_file": str(log), "round_sleep": 2.0}}, seeds=(0,))
    runs_dir = tmp_path / "runs"
    (cell,) = grid.plan(spec, None, runs_dir)
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench.cli", "grid", "run", str(spec), "--profile", "none",
         "--runs-dir", str(runs_dir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not (cell.directory / "checkpoints" / "round_001.json").is_file():
            if proc.poll() is not None:
                pytest.fail(f"the grid process exited early with code {proc.returncode}")
            if time.time() > deadline:
                pytest.fail("round 1 was not checkpointed within 120 s")
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    time.sleep(1.5)  # the orphaned kernel notices its parent is gone and exits
    assert json.loads((cell.directory / "status.json").read_text())["status"] == "running"
    table = grid.status(spec, None, runs_dir)
    assert list(table.state) == ["interrupted"]
    st = json.loads((cell.directory / "status.json").read_text())
    assert st["status"] == "interrupted" and st["interrupted_found"]
    leftover = cell.directory / ".losses.parquet.abc.tmp"  # a killed atomic write
    leftover.mkdir()
    (cell.directory / "records.parquet").write_bytes(b"")  # an empty records file is not done
    assert cell.state == "interrupted"

    table = grid.run_grid(spec, None, runs_dir=runs_dir, progress=False)
    assert list(table.state) == ["done"] and bool(table.resumed.iloc[0])
    assert not leftover.exists() and not (cell.directory / ".jupyter-runtime").exists()
    computed = [line.split()[-1] for line in log.read_text().split("\n") if "round" in line]
    assert sorted(computed) == ["0", "1", "2", "3"]  # every round exactly once
    (tmp_path / "ref").mkdir()
    ref_spec = write_spec(tmp_path / "ref", {"X": {}}, seeds=(0,))
    ref = grid.run_grid(ref_spec, None, runs_dir=tmp_path / "ref_runs", progress=False)
    drop = ["omp_threads", "experiment"]
    pd.testing.assert_frame_equal(
        pd.read_parquet(cell.directory / "records.parquet").drop(columns=drop),
        pd.read_parquet(Path(ref.directory.iloc[0]) / "records.parquet").drop(columns=drop))


# ----------------------------------------------------------------------------- budgets
def test_origin_spec_dry_run_names_the_missing_shard_folder():
    from workbench.lottery.schema import IMPConfig

    spec = specs.load_spec("seed002-gpt2")
    params = spec.resolve(None)
    cfg = IMPConfig.from_params(params["B2"])
    assert cfg.tokens_per_step(4) == 12 * 1024 * 20 * 4 == 983_040
    assert (cfg.beta1, cfg.beta2, cfg.weight_decay, cfg.grad_clip, cfg.lr) == (
        0.9, 0.95, 0.1, 1.0, 6e-4)
    assert spec.slurm["tasks_per_node"] * spec.slurm.get("nodes", 1) == 4
    assert params["B2"]["init"] == "normal" and params["C1"]["init"] == "xavier"
    assert params["E1"]["init"] == "kaiming"
    with pytest.raises(FileNotFoundError, match=r"openwebtext-gpt2.*workbench data prepare"):
        grid.status(spec, None)


def test_plan_over_max_epochs_is_refused_with_the_numbers(tmp_path):
    from workbench.lottery.budget import BudgetExceeded

    raw = {"name": "big", "notebook": "04_lottery_run", "seeds": [0],
           "defaults": dict(model="tiny-llama", corpus="lee", n_rounds=1, seq_len=32,
                            batch_size=4),
           "experiments": {"X": {"steps_per_round": 100000}, "Y": {"steps_per_round": 1}}}
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(raw))
    runs = tmp_path / "runs"
    with pytest.raises(BudgetExceeded) as err:
        grid.run_grid(path, None, runs_dir=runs, progress=False)
    msg = str(err.value)
    assert "1 of 2 cells refused" in msg and "X seed 0: 100000 steps x 128 tokens" in msg
    assert "more than max_epochs=1" in msg and "--allow-repeats" in msg
    assert not any(runs.glob("*/X"))  # nothing ran
    rows = grid.check_budgets(grid.plan(path, None, runs), 2, allow_repeats=True)
    x = next(r for r in rows if r["experiment"] == "X")
    assert x["tokens_per_step"] == 4 * 32 * 2
    assert x["epochs_per_round"] == pytest.approx(100000 * 256 / x["train_tokens"])
