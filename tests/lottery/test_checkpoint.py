"""Checkpoints of run_imp: no pickle, checksums verified, compact, exact resume."""

from __future__ import annotations

import ast
import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import workbench
from workbench.core.models import load_model
from workbench.lottery import checkpoint as ckpt
from workbench.lottery.imp import IMPConfig, run_imp

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = dict(steps_per_round=2, lr=1e-3, eval_batch_size=4, n_rounds=3)
MARKER = Path("/tmp") / "workbench_pickle_payload_ran"


class Payload:
    """Unpickling this writes MARKER (what a crafted checkpoint would do)."""

    def __reduce__(self):
        return (Path.write_text, (MARKER, "pwned"))


@pytest.fixture
def data():
    gen = torch.Generator().manual_seed(0)
    return (torch.randint(0, 256, (16, 16), generator=gen),
            torch.randint(0, 256, (2, 16), generator=gen))


def run(data, out, **kw):
    model = load_model(kw.pop("_model", "tiny-llama"), device="cpu", seed=0)[0]
    hook = kw.pop("on_round_end", None)
    return run_imp(model, *data, IMPConfig(**{**FAST, **kw}), output_dir=out,
                   progress=False, on_round_end=hook)


class Killed(Exception):
    pass


def kill_after(k):
    def hook(record):
        if record["round"] == k:
            raise Killed
    return hook


def test_planted_pickle_payload_is_never_executed(data, tmp_path):
    MARKER.unlink(missing_ok=True)
    ck = tmp_path / "run" / "checkpoints"
    ck.mkdir(parents=True)
    blob = pickle.dumps({"round": 1, "x": Payload()})
    for name in ("round_001.pt", "complete.pt", "rewind.pt"):
        (ck / name).write_bytes(blob)
    with pytest.warns(UserWarning, match="old pickle format"):
        res = run(data, tmp_path / "run")
    assert not MARKER.exists()
    assert res.resumed_from is None  # started from scratch
    assert not list(ck.glob("*.pt"))
    # a pickle disguised as the new format fails to parse, still without running it
    (ck / "complete.json").unlink()
    (ck / "round_001.json").write_bytes(blob)
    with pytest.raises(ValueError, match="round_001.json is damaged"):
        run(data, tmp_path / "run")
    assert not MARKER.exists()


def test_torch_load_only_with_weights_only_true_anywhere():
    root = Path(workbench.__file__).parent
    calls = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "load" and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "torch"):
                kw = {k.arg: k.value for k in node.keywords}
                ok = (isinstance(kw.get("weights_only"), ast.Constant)
                      and kw["weights_only"].value is True)
                calls.append((str(path.relative_to(root)), node.lineno, ok))
    assert [c for c in calls if not c[2]] == []


def test_checksums_detect_tampering(data, tmp_path):
    with pytest.raises(Killed):
        run(data, tmp_path / "run", on_round_end=kill_after(1))
    ck = tmp_path / "run" / "checkpoints"
    tfile, jfile = ck / "round_001.safetensors", ck / "round_001.json"
    good_t, good_j = tfile.read_bytes(), jfile.read_text()
    flipped = bytearray(good_t)
    flipped[-3] ^= 0xFF  # a byte of the packed masks
    tfile.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="round_001.safetensors is corrupted"):
        run(data, tmp_path / "run")
    tfile.write_bytes(good_t)
    wrapped = json.loads(good_j)
    wrapped["payload"]["records"][0]["val_ppl"] = 1.0
    jfile.write_text(json.dumps(wrapped))
    with pytest.raises(ValueError, match="round_001.json is corrupted"):
        run(data, tmp_path / "run")
    jfile.write_text(good_j)
    assert run(data, tmp_path / "run").resumed_from == 1


@pytest.mark.parametrize("shape", [(3, 5), (64,), (7, 9, 2), (1, 1)])
def test_mask_bit_packing_round_trip(shape):
    gen = torch.Generator().manual_seed(0)
    m = torch.rand(shape, generator=gen) > 0.5
    packed = ckpt.pack_masks({"w": m}, "mask")
    assert packed["mask/w"].dtype == torch.uint8
    assert packed["mask/w"].numel() == -(-m.numel() // 8)
    assert torch.equal(ckpt.unpack_masks(packed, "mask", {"w": list(shape)})["w"], m)
    # reference: bit i of the row-major flattening is the (i // 8)-th byte's MSB-first bit
    flat = m.flatten().numpy()
    byte0 = int(sum(int(b) << (7 - i) for i, b in enumerate(flat[:8])))
    assert int(packed["mask/w"][0]) == byte0 and np.packbits(flat)[0] == byte0


@pytest.mark.parametrize("kw", [
    dict(),                                             # rewinding rounds: masks only
    dict(schedule="oneshot", prune_pct=0.3),            # continuation: full state
    dict(rewind_step=1),                                # late rewinding: rewind.safetensors
    dict(init="xavier", rewind_to="reinit", reinit_scheme="kaiming"),
    dict(rank="all_matrices", schedule="gradual", targets=[0.1, 0.2, 0.3]),
    # tied head, Conv1D, biases and dropout
    dict(_model="tiny-gpt2", rank="all_matrices", init="kaiming", schedule="oneshot"),
])
def test_resume_after_round_1_equals_an_uninterrupted_run(data, tmp_path, kw):
    full = run(data, tmp_path / "full", **kw)
    assert (full.records["sparsity"].iloc[1:] > 0).all()
    with pytest.raises(Killed):
        run(data, tmp_path / "run", on_round_end=kill_after(1), **kw)
    files = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert "round_001.json" in files and "round_000.json" not in files
    resumed = run(data, tmp_path / "run", **kw)
    assert resumed.resumed_from == 1
    pd.testing.assert_frame_equal(full.records, resumed.records)
    pd.testing.assert_frame_equal(full.losses, resumed.losses)
    pd.testing.assert_frame_equal(full.emergent, resumed.emergent)
    for n in full.masks:
        assert torch.equal(full.masks[n], resumed.masks[n])
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [
        "complete.json"]


def test_final_weights_kept_on_request(data, tmp_path):
    model = load_model("tiny-llama", device="cpu", seed=0)[0]
    res = run_imp(model, *data, IMPConfig(**FAST), output_dir=tmp_path, progress=False,
                  keep_final_weights=True)
    again_model = load_model("tiny-llama", device="cpu", seed=0)[0]
    again = run_imp(again_model, *data, IMPConfig(**FAST), output_dir=tmp_path,
                    progress=False, keep_final_weights=True)
    assert again.resumed_from == 3
    for k, v in model.state_dict().items():
        assert torch.equal(again_model.state_dict()[k], v), k
    for n in res.masks:
        assert torch.equal(res.masks[n].cpu(), again.masks[n])


OLD_SMOLLM2_CHECKPOINT_BYTES = 757.6e6  # the former pickled round checkpoint (measured)


@pytest.mark.slow
def test_smollm2_round_checkpoint_is_under_40_percent_of_the_old_one(tmp_path):
    model = load_model("smollm2-135m", device="cpu")[0]  # own copy: trained in place
    gen = torch.Generator().manual_seed(0)
    train = torch.randint(0, 49152, (4, 16), generator=gen)
    val = torch.randint(0, 49152, (1, 16), generator=gen)
    cfg = IMPConfig(steps_per_round=1, n_rounds=2, batch_size=1, eval_batch_size=1,
                    eval_pruned=False, sw_blocks=1, sw_seq_len=16)
    with pytest.raises(Killed):
        run_imp(model, train, val, cfg, output_dir=tmp_path, progress=False,
                on_round_end=kill_after(1))
    files = {p.name: p.stat().st_size for p in (tmp_path / "checkpoints").iterdir()}
    assert set(files) == {"round_001.json", "round_001.safetensors"}
    assert sum(files.values()) <= 0.4 * OLD_SMOLLM2_CHECKPOINT_BYTES
    payload, tensors = ckpt.read_checkpoint(tmp_path / "checkpoints" / "round_001.json")
    masks = ckpt.unpack_masks(tensors, "mask", payload["shapes"])
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept == payload["records"][1]["n_kept"]
