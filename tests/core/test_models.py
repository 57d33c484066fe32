"""Tests for workbench.core.models."""

from collections import namedtuple

import pytest
import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutput

from workbench.core import models
from workbench.core.models import forward_logits, load_model, logits_of
from workbench.core.tokenizers import ByteTokenizer


def test_tiny_models_are_seeded_and_deterministic():
    a, _ = load_model("tiny-llama", device="cpu", seed=3)
    b, _ = load_model("tiny-llama", device="cpu", seed=3)
    c, _ = load_model("tiny-llama", device="cpu", seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    assert not a.training


def test_tiny_gpt2_forward_shape():
    model, tok = load_model("tiny-gpt2", device="cpu")
    ids = torch.tensor([tok.encode("hello world")])
    assert forward_logits(model, ids).shape == (1, ids.shape[1], 260)


def test_is_conv1d_and_is_hf_model_recognise_gpt2_layers_only():
    gpt2, _ = load_model("tiny-gpt2", device="cpu")
    llama, _ = load_model("tiny-llama", device="cpu")
    conv = {n for n, m in gpt2.named_modules() if models.is_conv1d(m)}
    assert conv and all(n.endswith(("c_attn", "c_proj", "c_fc")) for n in conv)
    assert all(dict(gpt2.named_modules())[n].weight.shape[0] == gpt2.config.n_embd
               for n in conv if n.endswith(("c_attn", "c_fc")))  # stored [in, out]
    assert not any(models.is_conv1d(m) for m in llama.modules())

    class Conv1D(nn.Linear):  # a look-alike name is not transformers' Conv1D
        pass

    assert not models.is_conv1d(Conv1D(2, 2)) and not models.is_conv1d(nn.Linear(2, 2))
    assert models.is_hf_model(gpt2) and not models.is_hf_model(nn.Linear(2, 2))


@pytest.mark.parametrize("wrap", ["tensor", "tuple", "dict", "modeloutput", "namedtuple"])
def test_logits_adapter_accepts_every_output_form(wrap):
    logits = torch.randn(2, 3, 5)
    out = {
        "tensor": logits,
        "tuple": (logits, None),
        "dict": {"logits": logits},
        "modeloutput": CausalLMOutput(logits=logits),
        "namedtuple": namedtuple("Out", "logits loss")(logits, None),
    }[wrap]
    assert logits_of(out) is logits


def test_logits_adapter_rejects_unknown():
    with pytest.raises(TypeError, match="logits"):
        logits_of({"scores": 1})


def test_forward_logits_on_a_plain_module():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)

        def forward(self, ids):
            return (self.emb(ids) @ self.emb.weight.T,)

    ids = torch.tensor([[1, 2, 3]])
    assert forward_logits(Plain(), ids).shape == (1, 3, 10)


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="smollm2-135m.*tiny-llama"):
        load_model("no-such-model")


def test_missing_paths_raise_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_name"):
        load_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(FileNotFoundError, match="model_name"):
        load_model("./missing/dir")


def test_spec_keyword_is_now_model_name():
    from workbench.core.shards import load_tokenizer

    for fn in (load_model, models.load_timed, load_tokenizer):
        with pytest.raises(TypeError, match="'spec' is now 'model_name'"):
            fn(spec="tiny-llama")
    model, _ = load_model(model_name="tiny-llama", device="cpu")
    assert model.config.model_type == "llama"
    assert isinstance(load_tokenizer(model_name="tiny-gpt2"), ByteTokenizer)
    with pytest.raises(TypeError, match="model_name must be a model name or a path"):
        load_model(123)


def test_bad_dtype_names_allowed_values():
    with pytest.raises(ValueError, match="dtype must be one of"):
        load_model("tiny-llama", dtype="float8")


def test_dtype_and_local_dir_roundtrip(tmp_path):
    model, _ = load_model("tiny-llama", device="cpu", dtype="float64")
    assert next(model.parameters()).dtype == torch.float64
    model.save_pretrained(tmp_path)  # safetensors by default
    assert (tmp_path / "model.safetensors").is_file()


def test_byte_tokenizer_roundtrip():
    tok = ByteTokenizer()
    ids = tok.encode("héllo")
    assert all(0 <= i < 256 for i in ids)
    assert tok.decode(ids) == "héllo"
    assert tok("ab")["input_ids"] == [97, 98]


def test_transformer_blocks_for_both_layouts(tiny_llama):
    assert len(models.transformer_blocks(tiny_llama[0])) == 2
    gpt2, _ = load_model("tiny-gpt2", device="cpu")
    assert len(models.transformer_blocks(gpt2)) == 2
    with pytest.raises(ValueError, match="transformer blocks"):
        models.transformer_blocks(nn.Linear(2, 2))


@pytest.mark.slow
def test_default_model_is_the_real_pretrained_smollm2(smollm2):
    model, tok = smollm2
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == (30, 576, 49152)
    assert 134e6 < sum(p.numel() for p in model.parameters()) < 135e6
    assert (models.paths.MODELS_DIR / "smollm2-135m" / "model.safetensors").is_file()
    # A pretrained model puts most mass on a plausible continuation.
    ids = torch.tensor([tok.encode("The capital of France is")])
    next_id = forward_logits(model, ids)[0, -1].argmax().item()
    assert "Paris" in tok.decode([next_id])


@pytest.mark.parametrize("text, is_path", [
    ("./model", True), ("../model", True), ("/abs/model", True), ("~/model", True),
    ("data/models/x", True), ("a/b/c", True), ("model.gguf", True), ("owner/model.bin", True),
    ("tests/nothing-here", True),  # first component is an existing folder
    ("HuggingFaceTB/SmolLM2-135M", False), ("owner/name", False), ("tiny-lama", False),
])
def test_path_or_hub_id(text, is_path):
    import os

    from workbench.core import paths
    from workbench.core.models import looks_like_path
    cwd = os.getcwd()
    os.chdir(paths.ROOT)  # "tests/" exists relative to the project root
    try:
        assert looks_like_path(text) is is_path
    finally:
        os.chdir(cwd)


def test_token_limits_of_both_layouts(tiny_llama):
    from workbench.core.models import model_max_length, model_vocab_size

    llama, _ = tiny_llama
    gpt2, _ = load_model("tiny-gpt2", device="cpu")
    assert (model_vocab_size(llama), model_max_length(llama)) == (260, 256)
    assert (model_vocab_size(gpt2), model_max_length(gpt2)) == (260, 256)
    # GPT-2 really cannot embed position 256: the limit is the model's, not a guess.
    with pytest.raises(ValueError, match="257"):
        forward_logits(gpt2, torch.zeros(1, 257, dtype=torch.long))
    plain = torch.nn.Linear(3, 3)
    assert model_vocab_size(plain) is None and model_max_length(plain) is None


def test_forward_logits_passes_declared_keywords(tiny_llama):
    model, _ = tiny_llama
    ids = torch.randint(0, 256, (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    torch.testing.assert_close(forward_logits(model, ids, attention_mask=mask),
                               forward_logits(model, ids))


def test_device_is_checked_before_the_model_is_built(monkeypatch):
    from workbench.core import devices, models

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(models, "_random_model", lambda *a, **k: pytest.fail("model built"))
    with pytest.raises(ValueError, match="device='cuda:1' but CUDA is not available"):
        load_model("tiny-llama", device="cuda:1")
    assert devices.resolve_device("cpu") == torch.device("cpu")


# ----------------------------------------------------------------------------- interrupted caches
KILLED_FIRST_LOAD = r"""
import os, signal, sys
from pathlib import Path
import safetensors.torch, transformers
from workbench.core import models

tiny, tok = models.load_model("tiny-llama", device="cpu")
transformers.AutoModelForCausalLM.from_pretrained = lambda *a, **k: tiny
transformers.AutoTokenizer.from_pretrained = lambda *a, **k: None

def killed(model, path, **kw):
    Path(path).write_bytes(b"half a file")
    os.kill(os.getpid(), signal.SIGKILL)

safetensors.torch.save_model = killed
gguf = Path(sys.argv[1]) / "m.gguf"
gguf.write_bytes(b"gguf")
models._dequantize_to_cache(gguf, Path(sys.argv[1]) / "smollm2-135m")
"""


def test_killed_first_load_leaves_a_folder_the_next_load_removes(tmp_path):
    """A real dequantisation killed with SIGKILL mid-write: its temporary folder (with
    the dead owner's record) is removed by the next load; a live owner's folder stays."""
    import json
    import os
    import subprocess
    import sys

    from workbench.core import models
    from workbench.core.processes import owner_record

    proc = subprocess.run([sys.executable, "-c", KILLED_FIRST_LOAD, str(tmp_path)],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    left = list(tmp_path.glob(".smollm2-135m.*.tmp"))
    assert len(left) == 1 and (left[0] / "owner.json").is_file()
    live = tmp_path / ".smollm2-135m.live.tmp"
    live.mkdir()
    (live / "owner.json").write_text(json.dumps(owner_record()))
    legacy = tmp_path / ".smollm2-135m.legacy.tmp"  # before owner records were written
    legacy.mkdir()
    cache = tmp_path / "smollm2-135m"
    cache.mkdir()
    (cache / "model.safetensors").write_bytes(b"cached")
    models._ensure_dequantized(lambda: pytest.fail("the cache exists"), cache)
    assert sorted(p.name for p in tmp_path.glob(".smollm2-135m.*.tmp")) == [live.name]
