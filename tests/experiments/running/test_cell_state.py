"""What grid status reads of a running cell: round, step, elapsed, last heartbeat
(workbench.experiments.running.cell_state.progress_fields)."""

import json
import time

from workbench.core import io
from workbench.experiments.running import cell_state, runs


def test_progress_fields_of_a_running_cell(tmp_path):
    now = time.time()
    started = cell_state.utc_now()
    t_start = cell_state._parse_utc(started)
    io.write_json(tmp_path / runs.STATUS, {"status": "running", "started": started,
                                           **cell_state.owner_record()})
    assert cell_state.progress_fields(tmp_path, now=t_start + 90) == {
        "round": None, "step": None, "elapsed": 90, "heartbeat": None, "doing": None}
    (tmp_path / runs.HEARTBEAT).write_text(json.dumps({
        "task": "IMP", "item": "round 2/5 training", "round": 2, "n_rounds": 5, "step": 40,
        "steps": 100, "done": 240, "done0": 0, "total": 600, "tokens_per_s": 1500,
        "task_started": t_start, "time": t_start + 60}))
    got = cell_state.progress_fields(tmp_path, now=t_start + 63)
    # 240 steps in 60 s -> 360 left take 90 s, 3 s after the beat: 87 s = 1.4 min
    assert got == {"round": "2/5", "step": "40/100", "elapsed": 63, "heartbeat": 3,
                   "doing": "round 2/5 training, 1,500 tok/s, ETA 1.4 min"}
    assert cell_state.cell_state(tmp_path) == "running"
    assert now >= t_start - 1


def test_a_beat_from_an_earlier_attempt_is_not_shown(tmp_path):
    started = cell_state.utc_now()
    t_start = cell_state._parse_utc(started)
    io.write_json(tmp_path / runs.STATUS, {"status": "running", "started": started,
                                           **cell_state.owner_record()})
    (tmp_path / runs.HEARTBEAT).write_text(json.dumps({"round": 4, "n_rounds": 5,
                                                            "time": t_start - 3600}))
    assert cell_state.progress_fields(tmp_path, now=t_start + 5)["round"] is None
