"""Multi-process lottery training (workbench.lottery.distributed + train_masked under DDP):
2 ranks on CPU with gloo, started through torchrun's ``elastic_launch`` inside the test.

Reference of every comparison: the same computation in one process. Tolerance of the
2-rank vs 1-rank comparison (losses and final weights): ``atol = 1e-5`` (float32; the
ranks sum their gradients in another order than one process's batch does, and AdamW's
normalisation makes those last-bit differences visible in the updates).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from tests.lottery.ddp_worker import TRAIN, TinySampler, tiny_inputs
from workbench.lottery.train import sampler_seed, train_masked

pytestmark = pytest.mark.usefixtures("one_thread")
WORKER = Path(__file__).with_name("ddp_worker.py")
ROOT = Path(__file__).parents[2]
ATOL = 1e-5


def _launch_script(nproc: int, *args: str) -> None:
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    cfg = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id="test",
                       rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                       monitor_interval=0.1)
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    elastic_launch(cfg, entrypoint=sys.executable)(str(WORKER), *args)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "rank0.pt"
    _launch_script(2, str(out), "2")  # per-rank batch 2
    return torch.load(out, weights_only=False)


def test_two_ranks_equal_one_process_with_the_global_batch(two_ranks):
    model, blocks, masks = tiny_inputs()
    one = train_masked(model, blocks, batch_size=4, masks=masks, **TRAIN)  # 2 ranks x 2
    assert two_ranks["world_size"] == 2 and one.world_size == 1
    assert two_ranks["tokens_per_step"] == one.tokens_per_step == 2 * 16 * 2 * 2
    assert two_ranks["tokens"] == one.tokens
    assert torch.allclose(torch.tensor(two_ranks["losses"]), torch.tensor(one.losses),
                          atol=ATOL, rtol=0)
    state = model.state_dict()
    worst = max(float((two_ranks["state"][k] - state[k]).abs().max()) for k in state)
    assert worst < ATOL
    # the comparison is not vacuous: the weights moved by far more than the tolerance
    fresh, _, _ = tiny_inputs()
    moved = max(float((state[k] - v).abs().max()) for k, v in fresh.state_dict().items())
    assert moved > 1000 * ATOL
    # ...and half the global batch is a different run
    model_b, blocks_b, masks_b = tiny_inputs()
    half = train_masked(model_b, blocks_b, batch_size=2, masks=masks_b, **TRAIN)
    assert max(abs(a - b) for a, b in zip(half.losses, two_ranks["losses"])) > 100 * ATOL


def test_masks_identical_and_pruned_weights_zero_after_every_step(two_ranks):
    checks = two_ranks["checks"]
    assert sorted((c["rank"], c["step"]) for c in checks) == [(r, s) for r in (0, 1)
                                                             for s in range(4)]
    assert all(c["pruned_zero"] for c in checks)
    assert all(c["same_weights"] for c in checks)  # bit-identical weights => same masks


def test_broadcast_masks_gives_rank0s_masks_everywhere(two_ranks):
    ref = torch.cat([m.reshape(-1).to(torch.uint8) for m in two_ranks["broadcast_rank0"].values()])
    assert all(torch.equal(e, ref) for e in two_ranks["broadcast_all"])
    # rank 1 had its own (different) masks before the broadcast
    gen = torch.Generator().manual_seed(101)
    theirs = torch.cat([(torch.rand(m.shape, generator=gen) < 0.5).reshape(-1).to(torch.uint8)
                        for m in two_ranks["broadcast_rank0"].values()])
    assert not torch.equal(theirs, ref)


def test_each_rank_draws_its_own_windows(two_ranks):
    w0, w1 = two_ranks["windows"]
    assert not torch.equal(w0, w1)
    # rank r's stream is the generator seeded with sampler_seed(seed, r)
    stream = torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(7))
    for rank, got in enumerate((w0, w1)):
        s = TinySampler(stream, 16)
        gen = torch.Generator().manual_seed(sampler_seed(11, rank))
        expected = torch.cat([s.sample(2, gen) for _ in range(2)])
        assert torch.equal(got, expected)


def test_sampler_input_trains_one_process():
    stream = torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(7))
    model, _, masks = tiny_inputs()
    res = train_masked(model, TinySampler(stream, 16), steps=3, batch_size=2, masks=masks,
                       progress=False)
    assert res.tokens == 3 * 2 * 16 and len(res.losses) == 3
    with pytest.raises(TypeError, match="window sampler"):
        train_masked(model, [[1, 2, 3]], steps=1, progress=False)


def test_forbid_writes_under_refuses_writes_into_the_folder(tmp_path):
    code = (
        "import sys; from workbench.lottery.distributed import forbid_writes_under\n"
        f"forbid_writes_under({str(tmp_path / 'cell')!r})\n"
        f"open({str(tmp_path / 'outside.txt')!r}, 'w').write('ok')\n"
        f"open({str(tmp_path / 'cell' / 'r.txt')!r}).read()\n"
        "try:\n"
        f"    open({str(tmp_path / 'cell' / 'x.txt')!r}, 'w')\n"
        "except PermissionError as e:\n"
        "    print('refused', e); sys.exit(0)\n"
        "sys.exit(3)\n")
    (tmp_path / "cell").mkdir()
    (tmp_path / "cell" / "r.txt").write_text("read me")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "only rank 0 writes" in proc.stdout
    assert not (tmp_path / "cell" / "x.txt").exists()
    assert (tmp_path / "outside.txt").read_text() == "ok"


# ----------------------------------------------------------------------------- one cell
CELL = dict(model="tiny-llama", corpus="lee", steps_per_round=150, n_rounds=2, seq_len=32,
            batch_size=2, n_val_blocks=2, val_seq_len=32, sw_seq_len=32, lr=1e-3,
            sw_threshold=1e-3, sw_spike_ratio=1.0, eval_pruned=False)


def _spec(folder: Path) -> Path:
    path = folder / "ddp.yaml"
    path.write_text(yaml.safe_dump({"name": "ddp", "notebook": "04_lottery_run", "seeds": [0],
                                    "defaults": CELL, "experiments": {"X": {}}}))
    return path


def _rank_pids(marker: str, rank: int) -> list[int]:
    """Pids of the ranks (``RANK=<rank>``) of the workers whose command line names
    ``marker`` (the cell folder)."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if "workbench.lottery.rank" in cmd and marker in cmd \
                and f"RANK={rank}".encode() in env:
            out.append(int(proc.name))
    return out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    from workbench.experiments.running import grid

    folder = tmp_path_factory.mktemp("cell")
    table = grid.run_grid(_spec(folder), None, runs_dir=folder / "runs", nproc=2,
                          progress=False)
    return folder, table


def test_two_process_cell_runs_and_only_rank0_writes(uninterrupted):
    _, table = uninterrupted
    assert list(table.state) == ["done"], table.error.tolist()
    d = Path(table.directory[0])
    rec = pd.read_parquet(d / "records.parquet")
    assert rec["world_size"].tolist() == [2, 2, 2]
    assert (rec["tokens_per_step"] == 2 * 32 * 1 * 2).all()
    assert rec["tokens_total"].tolist() == [150 * 128, 300 * 128, 450 * 128]
    assert (rec["epochs_round"] > 0).all() and (rec["epochs_round"] <= 1.0).all()
    # rank 1 ran under forbid_writes_under(cell folder): any write would have failed it
    assert sorted(p.name for p in (d / "checkpoints").iterdir()) == ["complete.json"]


def test_killed_rank_leaves_the_cell_interrupted_and_a_rerun_resumes(uninterrupted):
    from workbench.experiments.running import grid

    folder, reference = uninterrupted
    spec, runs_dir = _spec(folder), folder / "killed"
    d = grid.plan(spec, None, runs_dir)[0].directory
    killed = []

    def kill_rank1_in_round1():
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if list((d / "checkpoints").glob("round_000.json")):
                pids = _rank_pids(str(d), 1)
                if pids:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(pids[0])
                    return
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_rank1_in_round1, daemon=True)
    watcher.start()
    table = grid.run_grid(spec, None, runs_dir=runs_dir, nproc=2, progress=False)
    watcher.join(timeout=5)
    assert killed, "rank 1 was never seen"
    assert list(table.state) == ["interrupted"], table.error.tolist()
    assert "killed by a signal" in table.error[0]
    assert [p.name for p in (d / "checkpoints").glob("round_*.json")] == ["round_000.json"]

    again = grid.run_grid(spec, None, runs_dir=runs_dir, nproc=2, progress=False)
    assert list(again.state) == ["done"], again.error.tolist()
    assert bool(again.resumed[0])
    got = pd.read_parquet(Path(again.directory[0]) / "records.parquet")
    want = pd.read_parquet(Path(reference.directory[0]) / "records.parquet")
    pd.testing.assert_frame_equal(got, want)
    manifest = (Path(again.directory[0]) / "manifest.json").read_text()
    assert '"resumed_from": 0' in manifest
