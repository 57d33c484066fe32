"""Executing notebooks: parameters checked before the kernel starts, the kernel over IPC,
the live progress read from the kernel's heartbeat file
(workbench.experiments.running.notebooks; the contract itself is tested in
tests/experiments/design/test_notebook_contract.py)."""

import json
import threading
import time
from pathlib import Path

import pytest

from workbench.core import heartbeat
from workbench.experiments.running import notebooks

FIXTURE = Path(__file__).parents[2] / "fixtures" / "nb_heartbeat.py"


def test_eta_and_description():
    rec = {"task": "IMP", "item": "round 1/3 training", "done": 30, "done0": 10,
           "total": 110, "unit": "step", "task_started": 1000.0, "time": 1040.0,
           "round": 1, "n_rounds": 3, "step": 5, "steps": 25, "tokens_per_s": 1234.4}
    # 20 steps in 40 s -> 80 left take 160 s; 5 s after the beat: 155 s
    assert heartbeat.eta_seconds(rec, now=1045.0) == pytest.approx(155.0)
    text = notebooks.describe_beat(rec, now=1045.0)
    assert text == ("IMP: round 1/3 training · step 5/25 · 30/110 step · 1,234 tok/s · "
                    "elapsed 0:45 · ETA 2:35 · beat 5 s ago")
    assert heartbeat.eta_seconds({**rec, "done": 110}, now=2000.0) == 0.0
    assert heartbeat.eta_seconds({"task": "x"}) is None


def test_beat_is_a_no_op_without_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv(heartbeat.ENV, raising=False)
    heartbeat.beat(force=True, done=1)
    target = tmp_path / "hb.json"
    monkeypatch.setenv(heartbeat.ENV, str(target))
    heartbeat.start("t", total=3, unit="x")
    heartbeat.beat(done=1)  # within MIN_INTERVAL: kept in memory only
    assert json.loads(target.read_text())["done"] == 0
    heartbeat.beat(force=True, done=2)
    rec = json.loads(target.read_text())
    assert rec["done"] == 2 and rec["total"] == 3 and rec["task"] == "t"
    assert not list(tmp_path.glob("*.tmp"))


def test_kernel_runs_over_ipc_and_beats_reach_the_driver(tmp_path, capfd):
    """The fixture's beats are seen by the driver while the cell runs (polled like the
    terminal bars), the kernel's transport is IPC (no plaintext-TCP warning on stderr),
    and the kernel got the heartbeat path and the quiet-tqdm environment."""
    beat_file, report = tmp_path / "hb.json", tmp_path / "report.json"
    seen, stop = [], threading.Event()

    def poll():
        while not stop.is_set():
            rec = notebooks.read_beat(beat_file)
            if rec.get("done") is not None and rec.get("done") not in seen:
                seen.append(rec["done"])
            time.sleep(0.05)

    t = threading.Thread(target=poll)
    t.start()
    try:
        notebooks.run_notebook(FIXTURE, tmp_path / "out.ipynb",
                               {"n_beats": 4, "pause": 1.2, "report": str(report)},
                               heartbeat=beat_file)
    finally:
        stop.set()
        t.join()
    got = json.loads(report.read_text())
    assert got["transport"] == "ipc"
    assert got["heartbeat_env"] == str(beat_file.resolve())
    assert got["tqdm_disable"] == "1"
    assert len([d for d in seen if 0 < d < 4]) >= 2, seen  # intermediate beats, live
    assert json.loads(beat_file.read_text())["done"] == 4  # a given path is kept
    assert "without encryption" not in capfd.readouterr().err
    assert not list(Path("/tmp").glob(f"wb-kernel-*{tmp_path.name}*"))


def test_bad_fixture_value_fails_before_the_kernel(tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"mode='medium' must be one of \['fast', 'slow'\]"):
        notebooks.run_notebook(FIXTURE, tmp_path / "out.ipynb", {"mode": "medium"})
    assert not (tmp_path / "out.ipynb").exists()


def test_heartbeat_bars_draw_each_file(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    now = time.time()
    a.write_text(json.dumps({"task": "one-shot sweep", "item": "wanda uniform 50% seed 1",
                             "done": 3, "done0": 0, "total": 9, "unit": "model",
                             "task_started": now - 30, "time": now}))
    files = {"E1/seed0": a}
    bars = notebooks.HeartbeatBars(lambda: dict(files))
    bars.poll()
    bar = bars._bars["E1/seed0"]
    assert bar.n == 3 and bar.total == 9
    assert "E1/seed0: one-shot sweep: wanda uniform 50% seed 1 · 3/9 model" in bar.desc
    assert "elapsed 0:30" in bar.desc and "ETA 1:00" in bar.desc
    b.write_text(json.dumps({"task": "IMP", "done": 5, "total": 10, "round": 0,
                             "n_rounds": 1, "step": 5, "steps": 5, "time": now,
                             "task_started": now - 5}))
    files = {"E2/seed1": b}  # E1 finished: its bar closes, E2's opens
    bars.poll()
    assert list(bars._bars) == ["E2/seed1"] and "step 5/5" in bars._bars["E2/seed1"].desc
    bars.stop()
    assert not bars._bars
