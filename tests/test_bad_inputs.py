"""Bad input at the public boundary: every case must fail at once with a clear error.

Each case is a mistake a user makes (a misspelled keyword, a float tensor where token ids
go, a broken file, a wrong type, ...). A case passes when the call raises the stated
exception type **and** the message names the argument (and, where it helps, the value
or the file). Silent acceptance, a deep library traceback (another exception type) or a
message that does not say which argument is wrong all fail.

The CLI cases at the end run ``workbench.cli.main`` in process and require exit status 2
with a single ``workbench: error: ...`` line naming the problem.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import pytest
import torch
from torch import nn

import workbench as wb
from workbench.core import data as core_data
from workbench.core import models as core_models
from workbench.core import paths
from workbench.core.models import load_model

VOCAB = 260  # tiny-llama's vocabulary
POSITIONS = 256  # tiny-llama's max_position_embeddings


@dataclass
class Env:
    """What a case may use: a fresh tiny model, its tokenizer, valid tokens, a folder."""

    model: nn.Module
    tokenizer: Any
    tokens: torch.Tensor
    tmp: Any
    monkeypatch: Any


@pytest.fixture(scope="module")
def _tiny():
    return load_model("tiny-llama", device="cpu", seed=0)


@pytest.fixture
def env(_tiny, tmp_path, monkeypatch):
    model, tokenizer = _tiny
    tokens = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(0))
    return Env(copy.deepcopy(model), tokenizer, tokens, tmp_path, monkeypatch)


@dataclass
class Case:
    """One bad input: ``call(env)`` must raise ``error`` with every string of ``names``
    in its message (case-sensitive)."""

    id: str
    call: Callable[[Env], Any]
    error: type[BaseException] | tuple
    names: tuple[str, ...]


def _write(env: Env, name: str, content: str | bytes):
    path = env.tmp / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _docs(n: int = 6) -> str:
    return "\n\n".join(f"Document number {i} has a few sentences of text. " * 3 for i in range(n))


def _flipped_masks(env: Env):
    masks = {"layer.weight": torch.rand(16, 16, generator=torch.Generator().manual_seed(0)) > 0.5}
    path = env.tmp / "masks.safetensors"
    wb.save_masks(masks, path)
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF  # flip a byte of the tensor data
    path.write_bytes(bytes(raw))
    return wb.load_masks(path)


def _kfac_zero_damping(env: Env):
    from workbench.curvature.kfac import KFAC

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 2))
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    return KFAC(net, [(x, y)]).inverse_diagonal("0", damping=0.0)


def _unknown_experiment(env: Env):
    import pandas as pd

    from workbench.experiments.analysis import factors

    df = pd.DataFrame({"experiment": ["A"] * 3 + ["B"] * 3, "seed": [0, 1, 2] * 2,
                       "sparsity": [0.5] * 6, "val_ppl": [10.0, 11.0, 12.0, 10.5, 11.2, 12.1]})
    return factors.compare_experiments(df, "A", "NOPE", "val_ppl")


def _cuda_without_cuda(env: Env):
    built = []
    env.monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    env.monkeypatch.setattr(core_models, "_random_model",
                            lambda *a, **k: built.append(1) or pytest.fail("model was built"))
    return load_model("tiny-llama", device="cuda")


T = torch.tensor
LONG = torch.long

CORE_CASES = [
    # ---- load_model
    Case("load_model model_name not a string", lambda e: load_model(123), TypeError,
         ("model_name", "int")),
    Case("load_model empty model_name", lambda e: load_model(""), ValueError, ("model_name",)),
    Case("load_model unknown name", lambda e: load_model("tiny-lama"), ValueError,
         ("model_name", "tiny-lama", "tiny-llama")),
    Case("load_model missing ./ path", lambda e: load_model("./no/such/model"),
         FileNotFoundError, ("model_name", "./no/such/model")),
    Case("load_model missing nested relative path", lambda e: load_model("data/models/nope"),
         FileNotFoundError, ("model_name", "data/models/nope", "does not exist")),
    Case("load_model owner/name not cached (no hub lookup)",
         lambda e: load_model("no-such-owner/no-such-model"), ValueError,
         ("model_name", "no-such-owner/no-such-model", "local")),
    Case("load_model missing .gguf", lambda e: load_model("missing.gguf"), FileNotFoundError,
         ("model_name", "missing.gguf")),
    Case("load_model a file that is not .gguf",
         lambda e: load_model(_write(e, "weights.txt", "x")), ValueError,
         ("model_name", "weights.txt")),
    Case("load_model a folder without config.json", lambda e: load_model(e.tmp), FileNotFoundError,
         ("model_name", "config.json")),
    Case("load_model dtype name", lambda e: load_model("tiny-llama", dtype="float8"), ValueError,
         ("dtype", "float8", "bfloat16")),
    Case("load_model device name", lambda e: load_model("tiny-llama", device="gpu0"), ValueError,
         ("device", "gpu0")),
    Case("load_model cuda without CUDA", _cuda_without_cuda, ValueError,
         ("device", "cuda", "CUDA")),
    Case("load_model seed negative", lambda e: load_model("tiny-llama", seed=-1), ValueError,
         ("seed", "-1")),
    Case("load_model seed string", lambda e: load_model("tiny-llama", seed="0"), TypeError,
         ("seed",)),
    Case("load_model misspelled keyword", lambda e: load_model("tiny-llama", dtyp="bf16"),
         TypeError, ("dtyp",)),
    Case("load_model trust_remote_code string",
         lambda e: load_model("tiny-llama", trust_remote_code="yes"), TypeError,
         ("trust_remote_code",)),
    # ---- forward_logits
    Case("forward_logits float tokens", lambda e: wb.forward_logits(e.model, e.tokens.float()),
         TypeError, ("tokens", "float32")),
    Case("forward_logits id >= vocab", lambda e: wb.forward_logits(e.model, T([[1, VOCAB]])),
         ValueError, ("tokens", str(VOCAB))),
    Case("forward_logits negative id", lambda e: wb.forward_logits(e.model, T([[1, -3]])),
         ValueError, ("tokens", "-3")),
    Case("forward_logits longer than positions",
         lambda e: wb.forward_logits(e.model, torch.zeros(1, POSITIONS + 1, dtype=LONG)),
         ValueError, ("tokens", str(POSITIONS + 1), str(POSITIONS))),
    Case("forward_logits empty tokens",
         lambda e: wb.forward_logits(e.model, torch.zeros(1, 0, dtype=LONG)), ValueError,
         ("tokens", "empty")),
    Case("forward_logits 1-D tokens", lambda e: wb.forward_logits(e.model, e.tokens[0]),
         ValueError, ("tokens", "dimensions")),
    Case("forward_logits list of ids", lambda e: wb.forward_logits(e.model, [[1, 2, 3]]),
         TypeError, ("tokens", "list")),
    Case("forward_logits model not a module", lambda e: wb.forward_logits("model", e.tokens),
         TypeError, ("model", "str")),
    Case("forward_logits unknown model keyword",
         lambda e: wb.forward_logits(e.model, e.tokens, attention_mas=None), TypeError,
         ("attention_mas",)),
    # ---- perplexity
    Case("perplexity float tokens", lambda e: wb.perplexity(e.model, e.tokens.float()),
         TypeError, ("tokens", "float32")),
    Case("perplexity bool tokens", lambda e: wb.perplexity(e.model, e.tokens > 3), TypeError,
         ("tokens", "bool")),
    Case("perplexity id >= vocab",
         lambda e: wb.perplexity(e.model, torch.full((2, 8), VOCAB + 5)), ValueError,
         ("tokens", str(VOCAB + 5))),
    Case("perplexity too long",
         lambda e: wb.perplexity(e.model, torch.zeros(1, 300, dtype=LONG)), ValueError,
         ("tokens", "300")),
    Case("perplexity empty", lambda e: wb.perplexity(e.model, torch.zeros(0, 8, dtype=LONG)),
         ValueError, ("tokens", "empty")),
    Case("perplexity seq_len 1", lambda e: wb.perplexity(e.model, e.tokens[:, :1]), ValueError,
         ("tokens", "seq_len")),
    Case("perplexity batch_size 0", lambda e: wb.perplexity(e.model, e.tokens, batch_size=0),
         ValueError, ("batch_size", "0")),
    Case("perplexity batch_size float", lambda e: wb.perplexity(e.model, e.tokens, batch_size=2.5),
         TypeError, ("batch_size", "2.5")),
    Case("perplexity misspelled keyword",
         lambda e: wb.perplexity(e.model, e.tokens, batchsize=4), TypeError, ("batchsize",)),
    Case("perplexity arguments swapped", lambda e: wb.perplexity(e.tokens, e.model), TypeError,
         ("model", "Tensor")),
    # ---- load_corpus
    Case("load_corpus name not a string", lambda e: wb.load_corpus(42), TypeError, ("name", "int")),
    Case("load_corpus unknown name", lambda e: wb.load_corpus("wiki"), ValueError,
         ("name", "'wiki'", "wiki-excerpt")),
    Case("load_corpus missing file", lambda e: wb.load_corpus(str(e.tmp / "none.txt")),
         FileNotFoundError, ("name", "none.txt")),
    Case("load_corpus a folder", lambda e: wb.load_corpus(e.tmp), ValueError, ("name", "folder")),
    Case("load_corpus broken JSONL line names file and line",
         lambda e: wb.load_corpus(_write(e, "c.jsonl", '{"text": "a"}\n{"text": "b"\n')),
         ValueError, ("c.jsonl", "line 2", "JSON")),
    Case("load_corpus JSONL text null",
         lambda e: wb.load_corpus(_write(e, "n.jsonl", '{"text": null}\n')), ValueError,
         ("n.jsonl", "line 1", "text", "null")),
    Case("load_corpus JSONL text number",
         lambda e: wb.load_corpus(_write(e, "k.jsonl", '{"text": "ok"}\n{"text": 7}\n')),
         ValueError, ("k.jsonl", "line 2", "text", "int")),
    Case("load_corpus JSONL without text field",
         lambda e: wb.load_corpus(_write(e, "f.jsonl", '{"body": "x"}\n')), ValueError,
         ("f.jsonl", "line 1", "text")),
    Case("load_corpus JSONL line not an object",
         lambda e: wb.load_corpus(_write(e, "l.jsonl", '["a", "b"]\n')), ValueError,
         ("l.jsonl", "line 1", "object")),
    Case("load_corpus non-UTF-8 text file",
         lambda e: wb.load_corpus(_write(e, "latin.txt", "caf\xe9\n\nna\xefve".encode("latin-1"))),
         ValueError, ("latin.txt", "UTF-8", "line 1")),
    Case("load_corpus empty file", lambda e: wb.load_corpus(_write(e, "empty.txt", "\n\n")),
         ValueError, ("name", "no text")),
    Case("load_corpus negative seed", lambda e: wb.load_corpus("lee", seed=-1), ValueError,
         ("seed",)),
    Case("Corpus.split unknown split",
         lambda e: wb.load_corpus(_write(e, "s.txt", _docs())).split("valid"), ValueError,
         ("split", "valid")),
    # ---- token_blocks / calibration_windows
    Case("token_blocks tokenizer is a string",
         lambda e: wb.token_blocks("not a tokenizer", "some text", 8), TypeError,
         ("tokenizer", "str")),
    Case("token_blocks tokenizer is the model",
         lambda e: wb.token_blocks(e.model, "some text", 8), TypeError, ("tokenizer",)),
    Case("token_blocks text not text", lambda e: wb.token_blocks(e.tokenizer, 123, 8), TypeError,
         ("text", "int")),
    Case("token_blocks list with a non-string",
         lambda e: wb.token_blocks(e.tokenizer, ["a document", 3], 8), TypeError,
         ("text[1]", "int")),
    Case("token_blocks empty text", lambda e: wb.token_blocks(e.tokenizer, "  ", 8), ValueError,
         ("text", "empty")),
    Case("token_blocks seq_len 1", lambda e: wb.token_blocks(e.tokenizer, _docs(), 1), ValueError,
         ("seq_len", "1")),
    Case("token_blocks n_blocks 0",
         lambda e: wb.token_blocks(e.tokenizer, _docs(), 8, n_blocks=0), ValueError, ("n_blocks",)),
    Case("token_blocks n_blocks too many",
         lambda e: wb.token_blocks(e.tokenizer, "short text here", 4, n_blocks=99), ValueError,
         ("n_blocks", "99")),
    Case("token_blocks misspelled keyword",
         lambda e: wb.token_blocks(e.tokenizer, _docs(), 8, nblocks=2), TypeError, ("nblocks",)),
    Case("calibration_windows documents is a string",
         lambda e: wb.calibration_windows(e.tokenizer, _docs(), 8, 2), TypeError, ("documents",)),
    Case("calibration_windows n_windows 0",
         lambda e: wb.calibration_windows(e.tokenizer, [_docs(1)], 8, 0), ValueError,
         ("n_windows", "0")),
    Case("calibration_windows tokenizer None",
         lambda e: wb.calibration_windows(None, [_docs(1)], 8, 2), TypeError, ("tokenizer",)),
    Case("calibration_windows empty list",
         lambda e: wb.calibration_windows(e.tokenizer, [], 8, 2), ValueError, ("documents",)),
    # ---- repro / paths
    Case("seed_everything negative", lambda e: wb.seed_everything(-1), ValueError, ("seed", "-1")),
    Case("seed_everything string", lambda e: wb.seed_everything("1"), TypeError, ("seed",)),
    Case("seed_everything float", lambda e: wb.seed_everything(1.5), TypeError, ("seed", "1.5")),
    Case("write_manifest parameters not a mapping",
         lambda e: wb.write_manifest(e.tmp / "m.json", parameters=[1, 2]), TypeError,
         ("parameters", "list")),
    Case("paths.resolve None", lambda e: paths.resolve(None), TypeError, ("path", "NoneType")),
]

# Cases in the other layers (pruning, lottery, curvature, experiments).
OTHER_CASES = [
    Case("prune misspelled scope keyword",
         lambda e: wb.prune(e.model, "magnitude", 0.5, scop="row"), TypeError, ("scop",)),
    Case("prune misspelled correction keyword",
         lambda e: wb.prune(e.model, "magnitude", 0.5, corection="obs"), TypeError,
         ("corection",)),
    Case("prune unknown method", lambda e: wb.prune(e.model, "magnitud", 0.5), ValueError,
         ("method", "magnitud", "magnitude")),
    Case("prune sparsity > 1", lambda e: wb.prune(e.model, "magnitude", 1.5), ValueError,
         ("sparsity", "1.5")),
    Case("prune sparsity string", lambda e: wb.prune(e.model, "magnitude", "50%"),
         (TypeError, ValueError), ("sparsity", "50%")),
    Case("prune unknown scope", lambda e: wb.prune(e.model, "magnitude", 0.5, scope="rwo"),
         ValueError, ("scope", "rwo")),
    Case("prune include matches nothing",
         lambda e: wb.prune(e.model, "magnitude", 0.5, include=["no_such_layer"]), ValueError,
         ("include", "no_such_layer")),
    Case("prune exclude removes everything",
         lambda e: wb.prune(e.model, "magnitude", 0.5, exclude=["layers"]), ValueError,
         ("exclude",)),
    Case("prune wanda without calibration", lambda e: wb.prune(e.model, "wanda", 0.5),
         ValueError, ("calibration_tokens",)),
    Case("prune float calibration tokens",
         lambda e: wb.prune(e.model, "wanda", 0.5, calibration_tokens=e.tokens.float()),
         TypeError, ("calibration_tokens", "float32")),
    Case("prune calibration ids >= vocab",
         lambda e: wb.prune(e.model, "wanda", 0.5, calibration_tokens=torch.full((2, 8), 999)),
         ValueError, ("calibration_tokens", "999")),
    # the old keywords are unknown keywords (no aliases); the message lists the new one
    Case("prune old calibration keyword",
         lambda e: wb.prune(e.model, "wanda", 0.5, calibration=e.tokens), TypeError,
         ("'calibration'", "calibration_tokens")),
    Case("prune score method old calibration keyword",
         lambda e: wb.prune(e.model, "taylor", 0.5, calibration=e.tokens), TypeError,
         ("'calibration'", "calibration_tokens")),
    Case("prune gradprobe old calibration keyword",
         lambda e: wb.prune(e.model, "gradprobe", 0.5, calibration=e.tokens), TypeError,
         ("'calibration'",)),
    Case("sweep old calibration keyword",
         lambda e: wb.sweep(e.model, "wanda", [0.5], calibration=e.tokens), TypeError,
         ("'calibration'", "calibration_tokens")),
    Case("sweep score method old calibration keyword",
         lambda e: wb.sweep(e.model, "taylor", [0.5], calibration=e.tokens), TypeError,
         ("'calibration'", "calibration_tokens")),
    Case("gradprobe old calibration keyword",
         lambda e: wb.gradprobe(e.model, 0.5, calibration=e.tokens), TypeError,
         ("calibration",)),
    Case("gradprobe float calibration tokens",
         lambda e: wb.gradprobe(e.model, 0.5, calibration_tokens=e.tokens.float()), TypeError,
         ("calibration_tokens", "float32")),
    Case("compare_methods old evaluation keyword",
         lambda e: wb.compare_methods(e.model, ["magnitude"], [0.5], calibration_tokens=e.tokens,
                                      evaluation=e.tokens), TypeError, ("evaluation",)),
    Case("compare_methods float eval tokens",
         lambda e: wb.compare_methods(e.model, ["magnitude"], [0.5], calibration_tokens=e.tokens,
                                      eval_tokens=e.tokens.float()), TypeError,
         ("eval_tokens", "float32")),
    Case("prune unknown allocation",
         lambda e: wb.prune(e.model, "wanda", 0.5, calibration_tokens=e.tokens,
                            allocation="owll"),
         ValueError, ("allocation", "owll")),
    Case("importance unknown kind", lambda e: wb.importance(e.model, "magnitud"), ValueError,
         ("kind", "magnitud", "magnitude")),
    Case("importance unknown option", lambda e: wb.importance(e.model, "magnitude", foo=1),
         TypeError, ("foo",)),
    Case("importance old data keyword",
         lambda e: wb.importance(e.model, "wanda", data=e.tokens), TypeError, ("'data'",)),
    Case("importance float tokens",
         lambda e: wb.importance(e.model, "wanda", tokens=e.tokens.float()), TypeError,
         ("tokens", "float32")),
    Case("select_masks of no scores", lambda e: wb.select_masks({}, 0.5), ValueError, ("scores",)),
    Case("select_masks unknown scope",
         lambda e: wb.select_masks({"w": torch.rand(4, 4)}, 0.5, scope="rwo"), ValueError,
         ("scope", "rwo")),
    Case("load_masks flipped bytes", _flipped_masks, ValueError, ("masks.safetensors",)),
    Case("load_masks missing file", lambda e: wb.load_masks(e.tmp / "none.safetensors"),
         FileNotFoundError, ("none.safetensors",)),
    Case("global_threshold unknown algorithm",
         lambda e: wb.global_threshold({"w": torch.rand(8)}, 3, algorithm="exactt"),
         ValueError, ("algorithm", "exactt")),
    Case("load_spec YAML syntax error names the file",
         lambda e: wb.load_spec(_write(e, "broken.yaml", "name: x\nexperiments: [a, b\n")),
         ValueError, ("broken.yaml",)),
    Case("load_spec unknown spec", lambda e: wb.load_spec("no_such_spec"), FileNotFoundError,
         ("no_such_spec",)),
    Case("compare_experiments unknown experiment", _unknown_experiment, ValueError, ("NOPE",)),
    Case("K-FAC damping 0", _kfac_zero_damping, ValueError, ("damping",)),
    Case("IMPConfig unknown init", lambda e: wb.IMPConfig(init="xavierr"), ValueError,
         ("init", "xavierr")),
    Case("IMPConfig prune_pct > 1", lambda e: wb.IMPConfig(prune_pct=1.5), ValueError,
         ("prune_pct",)),
    Case("IMPConfig misspelled field", lambda e: wb.IMPConfig(n_round=3), TypeError, ("n_round",)),
    Case("train_masked float tokens",
         lambda e: wb.train_masked(e.model, e.tokens.float(), steps=1), TypeError,
         ("tokens", "float32")),
    Case("train_masked old blocks keyword",
         lambda e: wb.train_masked(e.model, blocks=e.tokens, steps=1), TypeError, ("blocks",)),
    Case("run_imp old train_blocks keyword",
         lambda e: wb.run_imp(e.model, e.tokens, e.tokens, train_blocks=e.tokens), TypeError,
         ("train_blocks",)),
    Case("find_super_weights ids >= vocab",
         lambda e: wb.find_super_weights(e.model, torch.full((1, 8), 999)), ValueError,
         ("tokens", "999")),
    Case("find_super_weights old input_ids keyword",
         lambda e: wb.find_super_weights(e.model, input_ids=e.tokens), TypeError,
         ("input_ids",)),
]


def _run(case: Case, env: Env):
    with pytest.raises(case.error) as info:
        case.call(env)
    message = str(info.value)
    missing = [name for name in case.names if name not in message]
    assert not missing, f"message does not name {missing}: {type(info.value).__name__}: {message}"


@pytest.mark.parametrize("case", CORE_CASES, ids=lambda c: c.id)
def test_core_bad_input(case, env):
    _run(case, env)


@pytest.mark.parametrize("case", OTHER_CASES, ids=lambda c: c.id)
def test_other_layers_bad_input(case, env):
    _run(case, env)


def test_missing_hub_id_makes_no_network_call(env):
    """An ``owner/name`` spec that is neither a local path nor cached fails without a DNS
    lookup or a connection (even with the offline variables unset)."""
    import socket

    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise OSError("network disabled in this test")

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.monkeypatch.delenv(var, raising=False)
    env.monkeypatch.setattr(socket, "getaddrinfo", refuse)
    env.monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(ValueError, match="not in the local Hugging Face cache"):
        load_model("someone/some-model")
    assert calls == []


def test_jsonl_null_text_is_not_the_document_none(env):
    path = _write(env, "mixed.jsonl", '{"text": "fine"}\n{"text": null}\n')
    with pytest.raises(ValueError, match="line 2"):
        core_data.load_corpus(path)


# ----------------------------------------------------------------------------- CLI
CLI_CASES = [
    (["notebook", "no_such_notebook"], ("no_such_notebook",)),
    (["notebook", "00_quickstart", "-p", "no_such_param", "1"], ("no_such_param",)),
    (["notebook", "00_quickstart", "-p", "seq_len", "{a: [1"], ("-p seq_len", "YAML")),
    (["grid", "run", "no_such_spec"], ("no_such_spec",)),
    (["grid", "status", "no_such_spec"], ("no_such_spec",)),
    (["grid", "run", "pilot", "--jobs", "0"], ("--jobs",)),
    (["grid", "run", "pilot", "--jobs", "many"], ("--jobs", "many")),
    (["grid", "run", "pilot", "--executor", "cloud"], ("--executor", "cloud")),
    (["grid", "run", "pilot", "--timeout", "0"], ("--timeout",)),
    (["grid", "status"], ("spec",)),
    (["pilot", "--jobs", "-1"], ("--jobs",)),
    (["notebok"], ("notebok",)),
]


@pytest.mark.parametrize("argv, names", CLI_CASES, ids=lambda v: " ".join(v)
                         if isinstance(v, list) else None)
def test_cli_bad_input(argv, names, capsys):
    from workbench import cli

    try:
        status = cli.main(argv)
    except SystemExit as exit_:
        status = exit_.code
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2, err
    assert len(err) == 1 and err[0].startswith("workbench: error: "), err
    for name in names:
        assert name in err[0], (name, err[0])


def test_cli_spec_with_a_yaml_error_names_the_file(tmp_path, capsys):
    from workbench import cli

    spec = tmp_path / "broken_spec.yaml"
    spec.write_text("name: broken\nexperiments: {A: {prune_pct: 0.2}\n", encoding="utf-8")
    assert cli.main(["grid", "status", str(spec)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("workbench: error: ") and "broken_spec.yaml" in err, err



# ----------------------------------------------------------------------------- protocols (issue 19)
def _protocol_cases():
    from workbench.core import protocols
    from workbench.pruning import reproduce

    return [
        Case("perplexity card unknown", lambda e: protocols.perplexity_windows(
            "wikitext103", e.tokenizer, 128), ValueError, ("wikitext103", "wikitext2")),
        Case("perplexity card without seq_len", lambda e: protocols.perplexity_windows(
            "wikitext2", e.tokenizer, None, data=e.tmp), ValueError, ("seq_len",)),
        Case("perplexity card file missing", lambda e: protocols.perplexity_windows(
            "wikitext2", e.tokenizer, 128, data=e.tmp), FileNotFoundError,
            ("wikitext2", "test-00000-of-00001.parquet")),
        Case("calibration card unknown", lambda e: protocols.calibration_windows(
            "c5", e.tokenizer, 128), ValueError, ("calibration_card", "c5", "c4")),
        Case("calibration card file missing", lambda e: protocols.calibration_windows(
            "c4", e.tokenizer, 128, data=e.tmp), FileNotFoundError,
            ("'c4'", "c4-train.00000-of-01024.json.gz")),
        Case("reproduce unknown table", lambda e: reproduce.load_table("wanda-llama3"),
             ValueError, ("wanda-llama3", "wanda-llama2-7b")),
        Case("reproduce seeds repeated", lambda e: reproduce.check_reproduce_arguments(
            "wanda-llama2-7b", seeds=[0, 0]), ValueError, ("seeds",)),
    ]


@pytest.mark.parametrize("index", range(7))
def test_protocol_bad_input(index, env):
    _run(_protocol_cases()[index], env)


@pytest.mark.parametrize("argv, names", [
    (["reproduce", "nope", "--model", "x"], ("nope", "wanda-llama2-7b")),
    (["reproduce", "wanda-llama2-7b"], ("--model",)),
    (["reproduce", "wanda-llama2-7b", "--model", "x", "--seq-len", "0"], ("--seq-len",)),
])
def test_cli_reproduce_bad_input(argv, names, capsys):
    test_cli_bad_input(argv, names, capsys)
# ----------------------------------------------------------------------------- issue 20
# Cases of issue 20 (silent results, deep tracebacks, late errors) and more found the same
# way. Each names the argument or file and what is allowed.
_TASK = """task: t
dataset_path: json
dataset_kwargs:
  data_files:
    test: t.jsonl
output_type: loglikelihood
test_split: test
doc_to_text: "{{context}}"
doc_to_target: "{{target}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def _task(env: Env, *, replace: tuple = (), extra: str = "", rows: int = 3):
    import json as _json

    _write(env, "t.jsonl", "".join(_json.dumps({"context": f"a b {i}", "target": "c"}) + "\n"
                                   for i in range(rows)))
    text = _TASK
    for old, new in replace:
        text = text.replace(old, new)
    return _write(env, "t.yaml", text + extra)


def _task_config(env: Env, **kw):
    from workbench.core.zeroshot import load_task_config

    return load_task_config(_task(env, **kw))


def _task_eval(env: Env, **kw):
    from workbench.core.zeroshot import evaluate_zeroshot

    return evaluate_zeroshot(env.model, env.tokenizer, _task(env, **kw))


def _function_task(env: Env):
    """!function next to a helpers.py that writes a marker on import: refused, no marker."""
    marker = env.tmp / "marker"
    _write(env, "helpers.py", f"open({str(marker)!r}, 'w').write('x')\ndef fn(d):\n    return d\n")
    try:
        return _task_config(env, extra="process_docs: !function helpers.fn\n")
    finally:
        assert not marker.exists(), "helpers.py was imported"


def _jinja_task(env: Env):
    marker = env.tmp / "marker"
    tpl = "{{ cycler.__init__.__globals__.os.system('touch " + str(marker) + "') }}"
    try:
        return _task_eval(env, replace=(('"{{context}}"', f'"{tpl}"'),))
    finally:
        assert not marker.exists(), "the template ran os.system"


def _pruned(env: Env):
    from workbench.pruning.checkpoint import save_pruned

    res = wb.prune(env.model, "magnitude", 0.5)
    return save_pruned(env.model, env.tokenizer, res.masks, env.tmp / "ckpt"), res.masks


def _flip_weights(env: Env):
    from workbench.pruning.checkpoint import load_pruned

    out, _ = _pruned(env)
    raw = bytearray((out / "model.safetensors").read_bytes())
    raw[-9] ^= 0xFF
    (out / "model.safetensors").write_bytes(bytes(raw))
    return load_pruned(out)


def _other_masks(env: Env):
    import json as _json

    from workbench.pruning.checkpoint import file_checksums, load_pruned

    out, masks = _pruned(env)
    wb.save_masks({n: ~m for n, m in masks.items()}, out / "masks.safetensors")
    manifest = _json.loads((out / "manifest.json").read_text())
    manifest["files"] = file_checksums(out)
    (out / "manifest.json").write_text(_json.dumps(manifest))
    return load_pruned(out)


def _cut_manifest(env: Env):
    from workbench.pruning.checkpoint import load_pruned

    out, _ = _pruned(env)
    text = (out / "manifest.json").read_text()
    (out / "manifest.json").write_text(text[:40])
    return load_pruned(out)


def _truncated_weights(env: Env):
    out, _ = _pruned(env)
    raw = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(raw[:-64])
    return load_model(out)


def _header_only_weights(env: Env):
    out, _ = _pruned(env)
    (out / "model.safetensors").write_bytes(b"\x10\x00")
    return load_model(out)


def _missing_tensor(env: Env):
    from safetensors.torch import load_file, save_file

    out, _ = _pruned(env)
    tensors = load_file(out / "model.safetensors")
    del tensors["model.layers.0.mlp.up_proj.weight"]
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    return load_model(out)


def _no_tokenizer(env: Env):
    out, _ = _pruned(env)
    for f in out.glob("tokenizer*"):
        f.unlink()
    return load_model(out)


def _missing_listed_file(env: Env):
    from workbench.pruning.checkpoint import load_pruned

    out, _ = _pruned(env)
    (out / "config.json").unlink()
    return load_pruned(out)


def _kfac_lm(env: Env, batches, **kw):
    from workbench.curvature.kfac import KFAC

    return KFAC(env.model, batches, modules=["model.layers.0.mlp.up_proj"], **kw)


def _kfac_net_inverse(env: Env, damping):
    from workbench.curvature.kfac import KFAC

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 2))
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    return KFAC(net, [(x, y)]).inverse_diagonal("0", damping=damping)


def _group_fisher(env: Env, batches):
    from workbench.curvature.groups import collect_group_fisher

    return collect_group_fisher(env.model, batches, modules=["model.layers.0.mlp.up_proj"])


def _expand_onto(env: Env, which: str):
    from workbench.curvature.groups import collect_group_fisher, expand_groups

    groups = collect_group_fisher(env.model, env.tokens[:2, :8],
                                  modules=["model.layers.0.mlp.up_proj"])
    if which == "gpt2":
        other, _ = load_model("tiny-gpt2", device="cpu")
        return expand_groups(groups, other)
    if which == "kind":
        return expand_groups({k: v for k, v in groups.items() if k.endswith("|channel")},
                             env.model, group="input")
    if which == "shape":
        return expand_groups({"model.layers.0.mlp.up_proj.weight|channel": torch.ones(7)},
                             env.model)
    return expand_groups(list(groups.items()), env.model)


def _sgpt(env: Env, sparsity=0.5, **kw):
    return wb.prune(env.model, "sparsegpt", sparsity, calibration_tokens=env.tokens, **kw)


SPEC = {"name": "t", "notebook": "04_lottery_run", "seeds": [0],
        "defaults": {"init": "pretrained", "schedule": "constant", "n_rounds": 2},
        "experiments": {"X": {"prune_pct": 0.2}, "Y": {"prune_pct": 0.1}}}


def _spec(env: Env, change: Callable[[dict], None]):
    import yaml

    from workbench.experiments.design import specs

    raw = copy.deepcopy(SPEC)
    change(raw)
    path = _write(env, "spec.yaml", yaml.safe_dump(raw))
    return specs.load_spec(path, check_notebook=False)


def _set(raw, where, **values):
    raw["experiments"][where].update(values)


def _question(raw, body):
    raw["questions"] = {"q": {"question": "Does it matter?", **body}}


def _runs_folder(env: Env, experiments):
    from workbench.experiments.analysis.aggregate import load_runs

    (env.tmp / "runs" / "A" / "seed0").mkdir(parents=True)
    return load_runs(env.tmp / "runs", experiments=experiments)


def _spec_runs(env: Env, experiments):
    from workbench.experiments.analysis.aggregate import load_runs

    return load_runs("pilot", "cpu", runs_dir=env.tmp, experiments=experiments)


ISSUE20_CASES = [
    # ---- task files are data (item 1)
    Case("task !function without trust_task_code", _function_task, ValueError,
         ("t.yaml", "!function helpers.fn", "trust_task_code=True")),
    Case("task !function in a non-local task is not imported",
         lambda e: _task_config(e, replace=(("dataset_path: json", "dataset_path: org/hub"),),
                                extra="process_docs: !function helpers.fn\n"),
         ValueError, ("t.yaml", "org/hub", "local files only")),
    Case("task !!python/object tag",
         lambda e: _task_config(e, extra="metadata: !!python/object/apply:os.system ['true']\n"),
         ValueError, ("t.yaml", "line", "python/object/apply", "!function")),
    Case("task !!python/name tag",
         lambda e: _task_config(e, extra="x: !!python/name:os.system ''\n"), ValueError,
         ("t.yaml", "python/name", "data")),
    Case("task Jinja __globals__ -> os.system", _jinja_task, ValueError,
         ("t.yaml", "doc_to_text", "sandbox", "unsafe")),
    Case("task Jinja __class__ walk",
         lambda e: _task_eval(e, replace=(('"{{target}}"',
                                           '"{{ target.__class__.__mro__ }}"'),)),
         ValueError, ("t.yaml", "doc_to_target", "sandbox")),
    Case("task trust_task_code string",
         lambda e: __import__("workbench.core.zeroshot", fromlist=["x"]).load_task_config(
             _task(e), trust_task_code="yes"), TypeError, ("trust_task_code", "True or False")),
    Case("task dataset trust_remote_code",
         lambda e: _task_config(e, replace=(("  data_files:", "  trust_remote_code: true\n"
                                                              "  data_files:"),)),
         ValueError, ("t.yaml", "trust_remote_code", "trust_task_code=True")),
    Case("task metric not built in (no evaluate download)",
         lambda e: _task_config(e, replace=(("metric: acc", "metric: rouge"),)), ValueError,
         ("t.yaml", "metric_list[0].metric='rouge'", "allowed", "'acc'")),
    Case("task hf_evaluate metric",
         lambda e: _task_config(e, replace=(("    aggregation: mean", "    aggregation: mean\n"
                                                                     "    hf_evaluate: true"),)),
         ValueError, ("t.yaml", "hf_evaluate", "built-in")),
    Case("task aggregation unknown",
         lambda e: _task_config(e, replace=(("aggregation: mean", "aggregation: average"),)),
         ValueError, ("t.yaml", "aggregation='average'", "'mean'")),
    Case("task metric computed by nobody is an error, not NaN",
         lambda e: _task_eval(e, replace=(("metric: acc", "metric: acc_norm"),)), RuntimeError,
         ("t.yaml", "'acc_norm'", "could not be computed")),
    Case("task split that does not exist",
         lambda e: _task_config(e, replace=(("test_split: test", "test_split: tset"),)),
         ValueError, ("t.yaml", "test_split='tset'", "['test']")),
    Case("task no split to evaluate",
         lambda e: _task_config(e, replace=(("test_split: test\n", ""),)), ValueError,
         ("t.yaml", "test_split", "validation_split")),
    Case("task output_type unknown",
         lambda e: _task_config(e, replace=(("output_type: loglikelihood",
                                             "output_type: likelihood"),)),
         ValueError, ("t.yaml", "output_type='likelihood'", "loglikelihood")),
    Case("task empty data file", lambda e: _task_config(e, rows=0), ValueError,
         ("t.jsonl", "t.yaml", "empty")),
    Case("task template syntax error",
         lambda e: _task_config(e, replace=(('"{{context}}"', '"{{context"'),)), ValueError,
         ("t.yaml", "doc_to_text", "Jinja")),
    Case("task template names a missing field",
         lambda e: _task_eval(e, replace=(('"{{context}}"', '"{{question}}"'),)), ValueError,
         ("t.yaml", "doc_to_text", "'question' is undefined")),
    Case("task YAML a list", lambda e: __import__(
        "workbench.core.zeroshot", fromlist=["x"]).load_task_config(_write(e, "l.yaml", "- a\n")),
         ValueError, ("l.yaml", "mapping")),
    Case("task include cycle",
         lambda e: _task_config(e, extra="include: t.yaml\n"), ValueError,
         ("t.yaml", "include cycle")),
    # ---- pruned-model folders and model files
    Case("load_pruned flipped weight bytes", _flip_weights, ValueError,
         ("model.safetensors", "SHA-256", "manifest.json")),
    Case("load_pruned another model's masks", _other_masks, ValueError,
         ("masks.safetensors", "does not match the weights", "non-zero")),
    Case("load_pruned cut-off manifest.json", _cut_manifest, ValueError,
         ("manifest.json", "cut off", "JSON")),
    Case("load_pruned file listed in the manifest missing", _missing_listed_file,
         FileNotFoundError, ("config.json", "manifest.json", "missing")),
    Case("load_model truncated model.safetensors", _truncated_weights, ValueError,
         ("model.safetensors", "truncated")),
    Case("load_model safetensors header cut off", _header_only_weights, ValueError,
         ("model.safetensors", "header")),
    Case("load_model checkpoint missing a tensor", _missing_tensor, ValueError,
         ("model.layers.0.mlp.up_proj.weight", "incomplete", "random")),
    Case("load_model folder without tokenizer files", _no_tokenizer, FileNotFoundError,
         ("ckpt", "tokenizer.json", "tokenizer files")),
    # ---- pruning options
    Case("sparsegpt 2:4 at sparsity 0.6", lambda e: _sgpt(e, 0.6, scope="2:4"), ValueError,
         ("sparsity=0.6", "scope='2:4'", "1 - N/M = 0.5")),
    Case("magnitude 2:4 at sparsity 0.7",
         lambda e: wb.prune(e.model, "magnitude", 0.7, scope="2:4"), ValueError,
         ("sparsity=0.7", "2:4", "0.5")),
    Case("sparsegpt sequential='no'", lambda e: _sgpt(e, sequential="no"), TypeError,
         ("sequential", "True or False", "'no'")),
    Case("wanda sequential=1", lambda e: wb.prune(e.model, "wanda", 0.5,
                                                  calibration_tokens=e.tokens, sequential=1),
         TypeError, ("sequential", "True or False")),
    Case("sparsegpt damp=nan", lambda e: _sgpt(e, damp=float("nan")), ValueError,
         ("damp", "finite", "nan")),
    Case("sparsegpt damp=inf", lambda e: _sgpt(e, damp=float("inf")), ValueError,
         ("damp", "finite", "inf")),
    Case("sparsegpt damp string", lambda e: _sgpt(e, damp="0.01"), TypeError,
         ("damp", "number")),
    Case("sparsegpt block_size float", lambda e: _sgpt(e, block_size=64.5), TypeError,
         ("block_size", "integer", "64.5")),
    Case("sparsegpt Cholesky failure names damp",
         lambda e: wb.prune(e.model, "sparsegpt", 0.5, calibration_tokens=e.tokens[:1, :2],
                            damp=0.0),
         ValueError, ("SparseGPT", "damp=0.0", "positive definite", "Hint")),
    Case("obs_kfac n_samples=2.7",
         lambda e: wb.prune(e.model, "obs_kfac", 0.5, calibration_tokens=e.tokens,
                            n_samples=2.7), TypeError, ("n_samples", "integer", "2.7")),
    Case("obs_kfac damping=inf",
         lambda e: wb.prune(e.model, "obs_kfac", 0.5, calibration_tokens=e.tokens,
                            damping=float("inf")), ValueError, ("damping", "finite")),
    # ---- curvature
    Case("K-FAC damping inf", lambda e: _kfac_net_inverse(e, float("inf")), ValueError,
         ("damping", "finite", "inf")),
    Case("K-FAC natural gradient damping inf",
         lambda e: _kfac_lm(e, [e.tokens[:1, :8]]).inverse_matvec(
             [torch.ones(512, 64)], damping=float("inf")), ValueError, ("damping", "finite")),
    Case("K-FAC sequences longer than the positions",
         lambda e: _kfac_lm(e, [torch.zeros(1, POSITIONS + 4, dtype=LONG)]), ValueError,
         ("batches[0]", str(POSITIONS + 4), str(POSITIONS))),
    Case("K-FAC ids >= vocabulary", lambda e: _kfac_lm(e, [torch.full((1, 8), VOCAB + 1)]),
         ValueError, ("batches[0]", str(VOCAB + 1))),
    Case("K-FAC negative ids in input_ids",
         lambda e: _kfac_lm(e, [{"input_ids": torch.full((1, 8), -2)}]), ValueError,
         ("batches[0]", "-2")),
    Case("group Fisher ids >= vocabulary",
         lambda e: _group_fisher(e, torch.full((2, 8), VOCAB + 3)), ValueError,
         ("batches[0]", str(VOCAB + 3))),
    Case("group Fisher too long",
         lambda e: _group_fisher(e, torch.zeros(1, POSITIONS + 1, dtype=LONG)), ValueError,
         ("batches[0]", str(POSITIONS + 1))),
    Case("expand_groups onto another model", lambda e: _expand_onto(e, "gpt2"), ValueError,
         ("groups", "another model", "model.layers.0.mlp.up_proj")),
    Case("expand_groups of another kind", lambda e: _expand_onto(e, "kind"), ValueError,
         ("group='input'", "channel")),
    Case("expand_groups group count does not fit", lambda e: _expand_onto(e, "shape"),
         ValueError, ("up_proj.weight|channel", "7 groups")),
    Case("expand_groups not a mapping", lambda e: _expand_onto(e, "list"), TypeError,
         ("groups", "list")),
    # ---- specs, contrasts, profiles, runs
    Case("spec gradual 2 targets n_rounds 3",
         lambda e: _spec(e, lambda r: _set(r, "X", schedule="gradual", targets=[0.1, 0.2],
                                           n_rounds=3)),
         ValueError, ("spec.yaml", "experiment X", "n_rounds=3", "must be 2")),
    Case("spec unknown model name",
         lambda e: _spec(e, lambda r: _set(r, "X", model="smollm-135m")), ValueError,
         ("spec.yaml", "model='smollm-135m'", "smollm2-135m")),
    Case("spec model path that does not exist",
         lambda e: _spec(e, lambda r: _set(r, "Y", model="./models/nope")), ValueError,
         ("experiment Y", "./models/nope", "known names")),
    Case("spec unknown corpus name",
         lambda e: _spec(e, lambda r: _set(r, "X", corpus="wikitext")), ValueError,
         ("spec.yaml", "corpus='wikitext'", "wiki-excerpt")),
    Case("spec profile typo key",
         lambda e: _spec(e, lambda r: r.update(profiles={"fast": {"scale": {
             "steps_per_rnd": 0.1}}})), ValueError,
         ("profile 'fast'", "steps_per_rnd", "steps_per_round")),
    Case("spec profile set typo key",
         lambda e: _spec(e, lambda r: r.update(profiles={"fast": {"set": {"batchsize": 2}}})),
         ValueError, ("profile 'fast'", "batchsize", "batch_size")),
    Case("contrast level never reached",
         lambda e: _spec(e, lambda r: _question(r, {"contrasts": {"c": {
             "a": "X", "b": "Y", "at": "sparsity", "levels": [0.9]}},
             "metrics": ["val_ppl"]})),
         ValueError, ("contrasts.c", "0.9", "never reached", "levels both reach")),
    Case("contrast auto typo",
         lambda e: _spec(e, lambda r: _question(r, {"auto": ["inti"]})), ValueError,
         ("q.auto", "inti", "init")),
    Case("load_runs unknown experiment of a folder", lambda e: _runs_folder(e, ["e1"]),
         ValueError, ("experiments", "e1", "['A']")),
    Case("load_runs unknown experiment of a spec", lambda e: _spec_runs(e, ["e1"]),
         ValueError, ("experiments", "e1", "B2")),
    Case("load_runs experiments a string", lambda e: _runs_folder(e, "A"), TypeError,
         ("experiments", "list")),
]


@pytest.mark.parametrize("case", ISSUE20_CASES, ids=lambda c: c.id)
def test_issue20_bad_input(case, env):
    _run(case, env)


ISSUE20_CLI_CASES = [
    (["grid", "status", "pilot", "--runs-dir", "/no/such/runs"], ("--runs-dir", "/no/such/runs")),
    (["grid", "run", "pilot", "--executor", "slurm"], ("--executor slurm", "sbatch", "local")),
    (["pilot", "--executor", "slurm"], ("--executor slurm", "SLURM")),
]


@pytest.mark.parametrize("argv, names", ISSUE20_CLI_CASES, ids=lambda v: " ".join(v)
                         if isinstance(v, list) else None)
def test_issue20_cli_bad_input(argv, names, capsys, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)  # no SLURM here
    test_cli_bad_input(argv, names, capsys)


def test_cli_unknown_spec_fails_before_torch_is_imported(tmp_path):
    """The spec-name check of the CLI runs before torch (and the grid) are imported."""
    import subprocess
    import sys

    code = ("import sys\nfrom workbench import cli\nstatus = cli.main(['grid', 'run', "
            "'no_such_spec'])\nprint(status, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.split() == ["2", "False"], (out.stdout, out.stderr[-500:])
    assert "no_such_spec" in out.stderr and "available" in out.stderr

SHARDS_CLI_CASES = [  # issue 18 item 1: token shards
    (["data", "prepare", "wikipedia", "--tokenizer", "tiny-llama", "--out", "/tmp/unused"],
     ("wikipedia", "wiki-excerpt", ".jsonl", "Hugging Face")),
    (["data", "prepare", "/no/such/file.jsonl", "--tokenizer", "tiny-llama", "--out",
      "/tmp/unused"], ("/no/such/file.jsonl",)),
    (["data", "info", "/no/such/shards"], ("/no/such/shards", "workbench data prepare")),
]


@pytest.mark.parametrize("argv, names", SHARDS_CLI_CASES, ids=lambda v: " ".join(v)
                         if isinstance(v, list) else None)
def test_shards_cli_bad_input(argv, names, capsys):
    test_cli_bad_input(argv, names, capsys)
