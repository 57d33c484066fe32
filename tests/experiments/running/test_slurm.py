"""SLURM exactly once (workbench.experiments.running.slurm, .scheduler): leases, scheduler queries,
threads.

The unit tests use a fake scheduler (job states in a dict) and always run. The
integration tests need a SLURM cluster with accounting (``scripts/slurm_up.sh`` brings up
one on this machine) and skip where ``sinfo`` is absent or the controller does not
answer; they run the fixture notebook tests/fixtures/nb_grid.py.
"""

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from workbench.experiments.running import cell as grid_cell
from workbench.experiments.running import cell_state, grid, scheduler, slurm
from workbench.experiments.running import runs as runs_mod

FIXTURE = Path(__file__).parents[2] / "fixtures" / "nb_grid.py"
DEAD = ["COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
        "PREEMPTED", "BOOT_FAIL", "UNKNOWN"]


class FakeScheduler:
    """Job states in a dict; ``active_jobs`` by name from ``names``; counts calls."""

    def __init__(self, states=None, names=None):
        self.states = dict(states or {})
        self.names = dict(names or {})  # job id -> job name
        self.calls = 0
        self.lock = threading.Lock()

    def state(self, job_id):
        self.calls += 1
        return self.states.get(str(job_id), "UNKNOWN")

    def active_jobs(self, name):
        return sorted(j for j, n in self.names.items()
                      if n == name and scheduler.is_active(self.state(j)))


class FakeJob:
    def __init__(self, job_id, record=None):
        self.job_id = str(job_id)
        self.record = record

    def done(self):
        return True

    def result(self):
        if isinstance(self.record, BaseException):
            raise self.record
        return self.record


class Submitter:
    """``submit(name)`` that records each submission as a RUNNING job of the scheduler."""

    def __init__(self, scheduler, first_id=100):
        self.scheduler = scheduler
        self.next_id = first_id
        self.submitted = []

    def __call__(self, name):
        with self.scheduler.lock:
            job_id = str(self.next_id)
            self.next_id += 1
        time.sleep(0.01)  # widen the window a race would need
        self.scheduler.states[job_id] = "RUNNING"
        self.scheduler.names[job_id] = name
        self.submitted.append((job_id, name))
        return FakeJob(job_id)


def write_lease(d: Path, job_id, **extra):
    d.mkdir(parents=True, exist_ok=True)
    (d / runs_mod.LEASE).write_text(json.dumps({"job_id": job_id, **extra}))


def snapshot(d: Path) -> dict:
    """Every file under ``d`` (lock file excluded) -> bytes."""
    return {p.relative_to(d): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and p.name != runs_mod.LOCK}


def make_cell(d: Path, experiment="X", seed=0) -> grid_cell.Cell:
    return grid_cell.Cell(experiment, seed, str(FIXTURE), {"seed": seed}, d)


def fake_complete_run(d: Path) -> None:
    runs_mod.write_run(d, {"records": pd.DataFrame({"round": [0, 1]})}, {}, {"seed": 0})


# ----------------------------------------------------------------------------- acquire
def test_a_cell_without_lease_is_submitted_once_and_leased(tmp_path):
    d = tmp_path / "X" / "seed0"
    sched = FakeScheduler()
    submit = Submitter(sched)
    action, job, released = slurm.acquire(d, submit, sched, folder=tmp_path / "_submitit/%j")
    assert action == "submitted" and released is None
    assert submit.submitted == [(job.job_id, slurm.job_name(d))]
    lease = slurm.read_lease(d)
    assert lease["job_id"] == job.job_id and lease["job_name"] == slurm.job_name(d)
    assert lease["folder"] == str(tmp_path / "_submitit/%j") and lease["submitted"]


@pytest.mark.parametrize("state", ["PENDING", "RUNNING", "COMPLETING", "REQUEUED", "SUSPENDED"])
def test_a_lease_of_an_active_job_is_adopted_not_resubmitted(tmp_path, state):
    d = tmp_path / "X" / "seed0"
    write_lease(d, "41", host="node1", started="2026-01-01T00:00:00Z")
    before = snapshot(d)
    sched = FakeScheduler({"41": state})
    submit = Submitter(sched)
    assert slurm.acquire(d, submit, sched) == ("adopted", "41", None)
    assert slurm.adopt(d, sched) == ("41", None)
    assert submit.submitted == []
    assert snapshot(d) == before  # the lease of the job in flight is left as it was


@pytest.mark.parametrize("state", DEAD)
def test_a_stale_lease_is_released_and_the_cell_resubmitted_once(tmp_path, state):
    d = tmp_path / "X" / "seed0"
    write_lease(d, "41")
    sched = FakeScheduler({"41": state} if state != "UNKNOWN" else {})
    submit = Submitter(sched)
    action, job, released = slurm.acquire(d, submit, sched)
    assert action == "submitted" and len(submit.submitted) == 1
    assert released["job_id"] == "41" and released["state"] == state
    assert slurm.read_lease(d)["job_id"] == job.job_id != "41"
    # a second driver now finds the new job in flight and adopts it
    assert slurm.acquire(d, submit, sched)[:2] == ("adopted", job.job_id)
    assert len(submit.submitted) == 1


def test_adopt_releases_a_stale_lease_and_ignores_cells_without_one(tmp_path):
    d = tmp_path / "X" / "seed0"
    sched = FakeScheduler({"7": "TIMEOUT"})
    assert slurm.adopt(d, sched) == (None, None)
    write_lease(d, "7")
    job_id, released = slurm.adopt(d, sched)
    assert job_id is None and released["state"] == "TIMEOUT"
    assert not (d / runs_mod.LEASE).exists()


def test_a_job_submitted_before_the_lease_was_written_is_found_by_name(tmp_path):
    """The driver died between sbatch and writing the lease: squeue -n finds the job."""
    d = tmp_path / "X" / "seed0"
    sched = FakeScheduler({"55": "PENDING", "54": "CANCELLED"},
                          {"55": slurm.job_name(d), "54": slurm.job_name(d)})
    submit = Submitter(sched)
    assert slurm.acquire(d, submit, sched)[:2] == ("adopted", "55")
    assert submit.submitted == [] and slurm.read_lease(d)["job_id"] == "55"


def test_a_cell_finished_meanwhile_is_not_submitted(tmp_path):
    d = tmp_path / "X" / "seed0"
    fake_complete_run(d)
    write_lease(d, "9")
    sched = FakeScheduler({"9": "COMPLETED"})
    submit = Submitter(sched)
    action, value, released = slurm.acquire(d, submit, sched)
    assert (action, value, released["state"]) == ("done", None, "COMPLETED")
    assert submit.submitted == []


def test_concurrent_drivers_submit_a_cell_once(tmp_path):
    d = tmp_path / "X" / "seed0"
    sched = FakeScheduler()
    submit = Submitter(sched)
    results = []
    threads = [threading.Thread(target=lambda: results.append(slurm.acquire(d, submit, sched)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(submit.submitted) == 1
    assert sorted(r[0] for r in results) == ["adopted"] * 7 + ["submitted"]


def test_lease_alive_asks_the_scheduler_about_the_leased_job(tmp_path):
    d = tmp_path / "X" / "seed0"
    assert slurm.lease_alive(d, FakeScheduler()) is None  # no lease: cannot tell
    write_lease(d, "5")
    assert slurm.lease_alive(d, FakeScheduler({"5": "RUNNING"})) is True
    assert slurm.lease_alive(d, FakeScheduler({"5": "TIMEOUT"})) is False
    down = scheduler.SlurmScheduler(fake_run({"squeue": (1, "", "Unable to contact controller")}))
    assert slurm.lease_alive(d, down) is None
    assert slurm.read_lease(d)["job_id"] == "5"  # asking never releases


def test_job_names_are_unique_per_cell_folder(tmp_path):
    names = {slurm.job_name(tmp_path / g / e / f"seed{s}")
             for g in ("a", "b") for e in ("X", "Y z") for s in (0, 1)}
    assert len(names) == 8
    assert all(" " not in n and n.startswith("wb-") for n in names)


# ----------------------------------------------------------------------------- claim (in the job)
def test_a_duplicate_job_leaves_the_folder_of_the_job_in_flight_alone(tmp_path, monkeypatch):
    d = tmp_path / "X" / "seed0"
    (d / "checkpoints").mkdir(parents=True)
    (d / "checkpoints" / "round_000.json").write_text("{}")
    (d / "status.json").write_text(json.dumps({"status": "running", "host": "node1"}))
    (d / ".notebook.src.ipynb").write_text("{}")  # a temp file the running job still uses
    write_lease(d, "41", host="node1", started="2026-01-01T00:00:00Z")
    before = snapshot(d)
    sched = FakeScheduler({"41": "RUNNING", "42": "RUNNING"})
    assert slurm.claim(d, "42", sched) is None
    monkeypatch.setattr(grid_cell, "run_cell",
                        lambda *a, **k: pytest.fail("a duplicate ran the cell"))
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    record = slurm.run_leased_cell(make_cell(d), scheduler=sched)
    assert record["status"] == "duplicate" and record["job_id"] == "41"
    assert snapshot(d) == before


def test_a_job_takes_over_the_lease_of_a_dead_job(tmp_path):
    d = tmp_path / "X" / "seed0"
    write_lease(d, "41")
    held = slurm.claim(d, "43", FakeScheduler({"41": "NODE_FAIL"}))
    assert held["job_id"] == "43" and held["taken_over"] == "41"
    assert held["host"] and held["pid"] == os.getpid() and held["started"]
    assert slurm.read_lease(d) == held


def test_the_job_of_the_lease_adds_host_and_start_and_releases_at_the_end(tmp_path, monkeypatch):
    d = tmp_path / "X" / "seed0"
    write_lease(d, "41", submitted="2026-01-01T00:00:00Z", folder="/f/%j")
    seen = {}

    def fake_run_cell(cell, *, threads, **kwargs):
        seen.update(lease=slurm.read_lease(d), threads=threads, kwargs=kwargs,
                    omp=os.environ["OMP_NUM_THREADS"], mkl=os.environ["MKL_NUM_THREADS"])
        return {"status": "done"}

    monkeypatch.setattr(grid_cell, "run_cell", fake_run_cell)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    for var, value in {"SLURM_JOB_ID": "41", "SLURM_CPUS_PER_TASK": "1",
                       "OMP_NUM_THREADS": "64", "MKL_NUM_THREADS": "64",
                       "OPENBLAS_NUM_THREADS": "64"}.items():
        monkeypatch.setenv(var, value)
    import torch

    threads_before = torch.get_num_threads()
    try:
        record = slurm.run_leased_cell(make_cell(d), scheduler=FakeScheduler({"41": "RUNNING"}),
                                       kernel_name="k", timeout=5)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads_before)
    assert record == {"status": "done", "slurm_job_id": "41"}
    lease = seen["lease"]
    assert lease["job_id"] == "41" and lease["folder"] == "/f/%j"  # the driver's fields kept
    assert lease["submitted"] == "2026-01-01T00:00:00Z" and lease["started"] and lease["host"]
    assert (seen["threads"], seen["omp"], seen["mkl"]) == (1, "1", "1")
    assert seen["kwargs"] == {"kernel_name": "k", "timeout": 5}
    assert slurm.read_lease(d) is None  # released when the cell ended


# ----------------------------------------------------------------------------- threads
@pytest.mark.parametrize("env, affinity, expected", [
    ({"SLURM_CPUS_PER_TASK": "4"}, 16, 4),
    ({"SLURM_CPUS_PER_TASK": "4"}, 2, 2),               # never more than the affinity
    ({"SLURM_JOB_CPUS_PER_NODE": "8(x2)", "SLURM_NTASKS": "2"}, 64, 4),
    ({"SLURM_JOB_CPUS_PER_NODE": "6", "SLURM_NTASKS_PER_NODE": "3", "SLURM_NTASKS": "6"}, 64, 2),
    ({"SLURM_JOB_CPUS_PER_NODE": "1"}, 64, 1),          # no binding: the allocation counts
    ({}, 3, 3),                                          # outside SLURM: the affinity
    ({"SLURM_CPUS_PER_TASK": "0"}, 3, 3),
])
def test_allocated_cpus(env, affinity, expected):
    assert scheduler.allocated_cpus(env, affinity) == expected


def test_allocated_cpus_defaults_to_this_process_affinity(monkeypatch):
    for var in ("SLURM_CPUS_PER_TASK", "SLURM_JOB_CPUS_PER_NODE"):
        monkeypatch.delenv(var, raising=False)
    assert scheduler.allocated_cpus() == len(os.sched_getaffinity(0))


# ----------------------------------------------------------------------------- scheduler commands
def fake_run(answers):
    """A ``subprocess.run`` answering by command name: (returncode, stdout, stderr)."""
    calls = []

    def run(args, **kwargs):
        calls.append(args)
        answer = answers[args[0]]
        if isinstance(answer, BaseException):
            raise answer
        return subprocess.CompletedProcess(args, answer[0], answer[1], answer[2])

    run.calls = calls
    return run


def test_scheduler_reads_active_states_from_squeue():
    run = fake_run({"squeue": (0, "RUNNING\n", "")})
    assert scheduler.SlurmScheduler(run).state("12") == "RUNNING"
    assert run.calls == [["squeue", "-h", "-j", "12", "-o", "%T"]]


@pytest.mark.parametrize("squeue, sacct, expected", [
    ((0, "", ""), (0, "COMPLETED\n", ""), "COMPLETED"),
    ((1, "", "slurm_load_jobs error: Invalid job id specified"), (0, "CANCELLED by 0\n", ""),
     "CANCELLED"),
    ((0, "", ""), (0, "", ""), "UNKNOWN"),
    ((0, "", ""), (0, "NODE_FAIL\nNODE_FAIL\n", ""), "NODE_FAIL"),
])
def test_scheduler_reads_finished_states_from_sacct(squeue, sacct, expected):
    run = fake_run({"squeue": squeue, "sacct": sacct})
    assert scheduler.SlurmScheduler(run).state("12") == expected
    assert run.calls[1] == ["sacct", "-j", "12", "-n", "-X", "-P", "-o", "State"]


@pytest.mark.parametrize("answers, match", [
    ({"squeue": (1, "", "Unable to contact slurm controller")}, "squeue -j 12 failed"),
    ({"squeue": (0, "", ""), "sacct": (1, "", "Slurm accounting storage is disabled")},
     "slurmdbd"),
    ({"squeue": FileNotFoundError("squeue")}, "squeue is not installed"),
    ({"squeue": subprocess.TimeoutExpired("squeue", 60)}, "did not answer"),
])
def test_a_scheduler_that_cannot_answer_raises_and_keeps_the_lease(tmp_path, answers, match):
    sched = scheduler.SlurmScheduler(fake_run(answers))
    with pytest.raises(scheduler.SchedulerError, match=match):
        sched.state("12")
    d = tmp_path / "c"
    write_lease(d, "12")
    with pytest.raises(scheduler.SchedulerError):
        slurm.acquire(d, lambda name: pytest.fail("submitted on a guess"), sched)
    assert slurm.read_lease(d)["job_id"] == "12"


def test_scheduler_lists_active_jobs_by_name_oldest_first():
    run = fake_run({"squeue": (0, "120\n99\n", "")})
    assert scheduler.SlurmScheduler(run).active_jobs("wb-X") == ["99", "120"]
    assert run.calls == [["squeue", "-h", "-n", "wb-X", "-o", "%i"]]


# ----------------------------------------------------------------------------- driver loop
class FakeExecutor:
    def __init__(self, submit):
        self._submit = submit
        self.names = []

    def update_parameters(self, **kw):
        self.names.append(kw["name"])

    def submit(self, fn, cell, **kwargs):
        assert fn is slurm.run_leased_cell and set(kwargs) == {"kernel_name", "timeout"}
        job = self._submit(self.names[-1])
        job.record = {"status": "done", "experiment": cell.experiment, "seed": cell.seed}
        return job


def test_drive_adopts_jobs_in_flight_and_submits_only_the_rest(tmp_path):
    cells = [make_cell(tmp_path / e / "seed0", e) for e in ("A", "B", "C", "D")]
    write_lease(cells[0].directory, "41", folder="/elsewhere/%j")   # running: adopt
    write_lease(cells[1].directory, "42")                           # cancelled: resubmit
    write_lease(cells[3].directory, "44")      # not in todo (state "running"), still running
    sched = FakeScheduler({"41": "RUNNING", "42": "CANCELLED", "44": "PENDING"})
    submit = Submitter(sched)
    adopted = {}

    def job_class(folder, job_id):
        adopted[job_id] = str(folder)
        return FakeJob(job_id, {"status": "done", "adopted": job_id})

    done = []
    slurm.drive(cells[:3], 1, lambda c, r: done.append((c.experiment, r)), tmp_path / "_s", {},
                cells=cells, kernel_name="k", timeout=None, scheduler=sched,
                executor=FakeExecutor(submit), job_class=job_class, poll=0)
    assert adopted == {"41": "/elsewhere/%j", "44": str(tmp_path / "_s" / "%j")}
    assert sorted(name for _, name in submit.submitted) == sorted(
        slurm.job_name(c.directory) for c in cells[1:3])
    assert sorted(e for e, _ in done) == ["A", "B", "C", "D"]  # each cell finished once
    assert dict(done)["A"]["adopted"] == "41" and dict(done)["D"]["adopted"] == "44"


def test_drive_hands_a_duplicate_over_to_the_job_holding_the_lease(tmp_path):
    cell = make_cell(tmp_path / "A" / "seed0")
    sched = FakeScheduler()
    submit = Submitter(sched)

    class DuplicateExecutor(FakeExecutor):
        def submit(self, fn, cell, **kwargs):
            job = self._submit(self.names[-1])
            job.record = {"status": "duplicate", "job_id": "77"}
            return job

    sched.states["77"] = "RUNNING"
    done = []
    slurm.drive([cell], 1, lambda c, r: done.append(r), tmp_path / "_s", {}, kernel_name="k",
                timeout=None, scheduler=sched, executor=DuplicateExecutor(submit),
                job_class=lambda folder, job_id: FakeJob(job_id, {"status": "done", "by": job_id}),
                poll=0)
    assert done == [{"status": "done", "by": "77"}]
    assert len(submit.submitted) == 1


def test_drive_records_a_lost_job_as_failed(tmp_path):
    cell = make_cell(tmp_path / "A" / "seed0")
    sched = FakeScheduler()

    class LostExecutor(FakeExecutor):
        def submit(self, fn, cell, **kwargs):
            job = self._submit(self.names[-1])
            job.record = RuntimeError("job 100 (task: 0) with path ... has not produced any output (state: CANCELLED)")
            return job

    done = []
    slurm.drive([cell], 2, lambda c, r: done.append(r), tmp_path / "_s", {}, kernel_name="k",
                timeout=None, scheduler=sched, executor=LostExecutor(Submitter(sched)),
                job_class=FakeJob, poll=0)
    assert done[0]["status"] == "failed" and "CANCELLED" in done[0]["error"]
    assert cell_state.read_status(cell.directory)["status"] == "failed"


def test_drive_never_marks_failed_a_cell_another_job_holds(tmp_path):
    """Our job was lost, but meanwhile another driver's job holds the lease: wait for it,
    and leave its status.json alone."""
    cell = make_cell(tmp_path / "A" / "seed0")
    sched = FakeScheduler({"77": "RUNNING"})

    class TakenOver(FakeJob):
        def result(self):  # meanwhile job 77 took the cell over (lease) and runs it
            write_lease(cell.directory, "77")
            (cell.directory / "status.json").write_text('{"status": "running"}')
            raise RuntimeError("job has not produced any output (state: CANCELLED)")

    class TakenOverExecutor(FakeExecutor):
        def submit(self, fn, cell, **kwargs):
            return TakenOver(self._submit(self.names[-1]).job_id)

    done = []
    slurm.drive([cell], 1, lambda c, r: done.append(r), tmp_path / "_s", {}, kernel_name="k",
                timeout=None, scheduler=sched, executor=TakenOverExecutor(Submitter(sched)),
                job_class=lambda folder, job_id: FakeJob(job_id, {"status": "done", "by": job_id}),
                poll=0)
    assert done == [{"status": "done", "by": "77"}]
    assert cell_state.read_status(cell.directory) == {"status": "running"}


# ----------------------------------------------------------------------------- real SLURM
@functools.lru_cache(maxsize=1)
def _slurm_ready() -> str | None:
    """Why the integration tests cannot run (None when they can)."""
    if shutil.which("sinfo") is None:
        return "no SLURM here (sinfo not found; scripts/slurm_up.sh brings one up)"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                             timeout=20)
        acct = subprocess.run(["sacct", "-n", "-X", "-o", "JobID", "-S", "now"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"SLURM does not answer ({exc})"
    if out.returncode != 0 or not any(s.startswith(("idle", "mix", "alloc"))
                                      for s in out.stdout.split()):
        return f"no usable SLURM node: {out.stdout.strip()} {out.stderr.strip()}"
    if acct.returncode != 0:
        return f"SLURM accounting (sacct) does not work: {acct.stderr.strip()}"
    return None


needs_slurm = pytest.mark.skipif(_slurm_ready() is not None, reason=str(_slurm_ready()))


def _write_spec(folder: Path, log: Path, seeds, round_sleep: float) -> Path:
    raw = {"name": "slurm-fixture", "notebook": str(FIXTURE), "seeds": list(seeds),
           "slurm": {"cpus_per_task": 1, "timeout_min": 10},
           "experiments": {"X": {"log_file": str(log), "round_sleep": round_sleep,
                                 "n_rounds": 3}}}
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _jobs_named(name: str, wait: float = 60.0) -> list[tuple[str, str]]:
    """(job id, state) of every job ever named ``name``, after they all ended (a job
    writes its result before SLURM records it as COMPLETED)."""
    deadline = time.time() + wait
    while True:
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "--name", name,
                              "-S", "now-1hour"], capture_output=True, text=True, check=True)
        jobs = [tuple(line.split("|")) for line in out.stdout.split()]
        if not any(scheduler.is_active(s) for _, s in jobs) or time.time() > deadline:
            return jobs
        time.sleep(0.5)


def _round_counts(log: Path) -> dict:
    counts: dict = {}
    for line in filter(None, log.read_text().split("\n") if log.exists() else []):
        parts = line.split()
        key = (parts[0], int(parts[1]), parts[4] if len(parts) > 3 else "end")
        counts[key] = counts.get(key, 0) + 1
    return counts


@needs_slurm
def test_killed_driver_rerun_adopts_running_jobs_each_cell_once(tmp_path):
    """Two cells through real SLURM; SIGKILL the driver while both jobs run; re-run at
    once: no job is submitted again, each cell and each round is computed exactly once."""
    log = tmp_path / "log.txt"
    spec = _write_spec(tmp_path, log, (0, 1), round_sleep=2.0)
    runs = tmp_path / "runs"
    cells = grid.plan(spec, None, runs)
    proc = subprocess.Popen(
        [sys.executable, "-m", "workbench.cli", "grid", "run", str(spec), "--profile", "none",
         "--runs-dir", str(runs), "--executor", "slurm", "--jobs", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # both jobs started (their lease has a start time)
            leases = [slurm.read_lease(c.directory) or {} for c in cells]
            if all("started" in lease for lease in leases):
                break
            if proc.poll() is not None:
                pytest.fail(f"the driver exited early with code {proc.returncode}")
            time.sleep(0.2)
        else:
            pytest.fail(f"the jobs did not start within 120 s: {leases}")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver this test started (jobs live in slurmd)
        proc.wait()
    job_ids = {c.directory: slurm.read_lease(c.directory)["job_id"] for c in cells}
    states = {j: scheduler.SlurmScheduler().state(j) for j in job_ids.values()}
    assert all(s in ("RUNNING", "PENDING") for s in states.values()), states
    assert not any(c.state == "done" for c in cells)  # the re-run starts while they run

    table = grid.run_grid(spec, None, runs_dir=runs, executor="slurm", jobs=2, progress=False)
    assert (table.state == "done").all(), table
    for c in cells:  # one job per cell ever submitted, the one of the killed driver
        assert _jobs_named(slurm.job_name(c.directory)) == [(job_ids[c.directory], "COMPLETED")]
        assert slurm.read_lease(c.directory) is None
        rec = pd.read_parquet(c.directory / "records.parquet")
        assert list(rec["round"]) == [0, 1, 2, 3]
        assert set(rec["omp_threads"]) == {"1"}  # cpus_per_task=1 caps the kernel's threads
    counts = _round_counts(log)
    assert counts == {("X", s, r): 1 for s in (0, 1) for r in ("0", "1", "2", "3", "end")}


@needs_slurm
def test_stale_lease_of_a_cancelled_job_is_released_and_resubmitted_once(tmp_path):
    log = tmp_path / "log.txt"
    spec = _write_spec(tmp_path, log, (0,), round_sleep=0.0)
    runs = tmp_path / "runs"
    (cell,) = grid.plan(spec, None, runs)
    dead = subprocess.run(["sbatch", "--parsable", "-J", "wb-test-dead", "-o", "/dev/null",
                           "--wrap", "sleep 30"],
                          capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(["scancel", dead], check=True)
    write_lease(cell.directory, dead, host="gone")
    deadline = time.time() + 30
    while scheduler.SlurmScheduler().state(dead) != "CANCELLED" and time.time() < deadline:
        time.sleep(0.5)
    table = grid.run_grid(spec, None, runs_dir=runs, executor="slurm", progress=False)
    assert (table.state == "done").all(), table
    jobs = _jobs_named(slurm.job_name(cell.directory))
    assert len(jobs) == 1 and jobs[0][1] == "COMPLETED" and jobs[0][0] != dead
    assert _round_counts(log)[("X", 0, "end")] == 1


def test_ranks_per_cell_come_from_the_slurm_section():
    from workbench.experiments.running import grid

    assert grid.cell_world_size("slurm", 1, {"tasks_per_node": 4, "nodes": 2}) == 8
    assert grid.cell_world_size("slurm", 1, {}) == 1
    assert grid.cell_world_size("local", 3, {"tasks_per_node": 4}) == 3
    with pytest.raises(ValueError, match="tasks_per_node"):
        grid.run_grid("pilot", "cpu", executor="slurm", nproc=2, progress=False)


def test_single_task_job_exports_no_distributed_env():
    from workbench.experiments.running import slurm as slurm_mod

    assert slurm_mod._export_distributed_env({"SLURM_NTASKS": "1"}) == 0
    assert slurm_mod._export_distributed_env({}) == 0
