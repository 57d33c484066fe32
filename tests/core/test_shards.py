"""Token shards on disk (workbench.core.shards): written token-for-token right, read back
as nanoGPT reads them, refused clearly when broken.

References are computed independently in each test: the tokenizer's own per-document
``encode`` (not the batched call the writer uses), ``np.fromfile`` (not the memmap),
and nanoGPT's ``get_batch`` written out here.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from workbench.core import data, shards
from workbench.core.tokenizers import ByteTokenizer

EOS = ByteTokenizer.eos_token_id


class CharTokenizer:
    """A real tokenizer with a chosen vocabulary size: each character maps to
    ``(ord(c) * 40503) % (vocab_size - 1)``, EOS is the last id ``vocab_size - 1``."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self.eos_token_id = vocab_size - 1
        self.name_or_path = f"char-tokenizer-{vocab_size}"

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [(ord(c) * 40503) % (self.vocab_size - 1) for c in text]

    def __len__(self) -> int:
        return self.vocab_size


def _reference_stream(tokenizer, documents, eos) -> np.ndarray:
    """Every document tokenized on its own, each followed by EOS."""
    out: list[int] = []
    for doc in documents:
        out += list(tokenizer.encode(doc, add_special_tokens=False)) + [eos]
    return np.array(out, dtype=np.int64)


def _in_source_order(source_docs, split_docs):
    """The documents of ``split_docs`` in source order (documents must be unique)."""
    members = set(split_docs)
    return [d for d in source_docs if d in members]


def _split_at(stream: np.ndarray, eos: int) -> list[tuple[int, ...]]:
    cuts = np.flatnonzero(stream == eos)
    return [tuple(x) for x in np.split(stream, cuts + 1)[:-1]]


# ----------------------------------------------------------------------------- writing
@pytest.fixture(scope="module")
def wiki_shards(tmp_path_factory):
    """The embedded corpus with the SmolLM2 tokenizer (no model weights loaded)."""
    tok = shards.load_tokenizer("smollm2-135m")
    out = tmp_path_factory.mktemp("wiki") / "wiki"
    return tok, shards.prepare_shards("wiki-excerpt", "smollm2-135m", out, progress=False)


def test_embedded_corpus_token_for_token(wiki_shards):
    tok, sh = wiki_shards
    source = [d for d in data.wiki_documents() if d.strip()]
    assert len(set(source)) == len(source)
    corpus = data.load_corpus("wiki-excerpt", seed=0)
    eos = tok.eos_token_id
    assert sh.dtype == np.uint16 and sh.manifest["tokenizer"]["eos_token_id"] == eos
    for split in shards.SPLITS:
        ref = _reference_stream(tok, _in_source_order(source, corpus.split(split)), eos)
        got = np.fromfile(sh.file(split), dtype=np.uint16).astype(np.int64)
        np.testing.assert_array_equal(got, ref)
        info = sh.manifest["splits"][split]
        assert info["tokens"] == len(ref)
        assert info["documents"] == len(corpus.split(split))
        assert info["sha256"] == hashlib.sha256(sh.file(split).read_bytes()).hexdigest()
        # windows read back through the sampler and the fixed windows
        seq_len = 128
        windows, offsets = sh.fixed_windows(split, 5, seq_len, seed=3)
        for row, off in zip(windows, offsets):
            np.testing.assert_array_equal(row.numpy(), ref[off : off + seq_len])
        sampler = sh.sampler(split, seq_len)
        g = torch.Generator().manual_seed(7)
        starts = sampler.starts(4, torch.Generator().manual_seed(7))
        for row, s in zip(sampler.sample(4, g), starts.tolist()):
            np.testing.assert_array_equal(row.numpy(), ref[s : s + seq_len])


def test_manifest_records_tokenizer_source_and_version(wiki_shards):
    import workbench

    _, sh = wiki_shards
    m = json.loads((sh.path / "manifest.json").read_text())
    assert m["workbench_version"] == workbench.__version__
    assert m["dtype"] == "uint16" and m["tokenizer"]["name"] == "smollm2-135m"
    tok_dir = Path(m["tokenizer"]["name_or_path"])
    assert m["tokenizer"]["files"]["tokenizer.json"] == hashlib.sha256(
        (tok_dir / "tokenizer.json").read_bytes()).hexdigest()
    h = hashlib.sha256()
    for doc in data.wiki_documents():
        h.update(doc.encode("utf-8") + b"\x00")
    assert m["source"]["sha256"] == h.hexdigest() and m["source"]["kind"] == "builtin"
    assert sum(s["documents"] for s in m["splits"].values()) == len(data.wiki_documents())
    assert m["timing"]["tokens_per_second"] > 0


def test_file_sources_stream_the_documents_load_corpus_reads(tmp_path):
    import pandas as pd

    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "délta", "ε", "zeta\tx", "eta"]
    docs = [" ".join(rng.choice(words, size=int(rng.integers(3, 40)))) for _ in range(60)]
    docs = [f"{i} {d}" for i, d in enumerate(docs)]  # unique
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("\n\n  \n".join(d.replace(" ", "\n", 1) for d in docs[:20])
                               + "\n", encoding="utf-8")
    with open(src / "b.jsonl", "w", encoding="utf-8") as fh:
        for d in docs[20:40]:
            fh.write(json.dumps({"text": d, "id": 1}) + "\n")
        fh.write("\n")
    pd.DataFrame({"text": docs[40:], "n": range(20)}).to_parquet(src / "c.parquet")
    expected = (data._file_documents(src / "a.txt") + data._file_documents(src / "b.jsonl")
                + docs[40:])
    tok = ByteTokenizer()
    sh = shards.prepare_shards(src, tok, tmp_path / "out", seed=5, batch_documents=7,
                               progress=False)
    train, val, test = data.split_documents(expected, seed=5)
    for split, members in zip(shards.SPLITS, (train, val, test)):
        ref = _reference_stream(tok, _in_source_order(expected, members), EOS)
        np.testing.assert_array_equal(np.asarray(sh.tokens(split), dtype=np.int64), ref)
    files = sh.manifest["source"]["files"]
    assert [f["path"] for f in files] == ["a.txt", "b.jsonl", "c.parquet"]
    assert files[1]["sha256"] == hashlib.sha256((src / "b.jsonl").read_bytes()).hexdigest()
    # one file alone: its checksum is the file's SHA-256
    one = shards.prepare_shards(src / "b.jsonl", tok, tmp_path / "one", progress=False)
    assert one.manifest["source"]["sha256"] == files[1]["sha256"]


@pytest.mark.parametrize("vocab, dtype", [(65536, np.uint16), (65537, np.uint32)])
def test_dtype_boundary(tmp_path, vocab, dtype):
    tok = CharTokenizer(vocab)
    docs = [f"document {i} " + "".join(chr(0x4E00 + 97 * i + j) for j in range(50))
            for i in range(30)]
    sh = shards.prepare_shards(docs, tok, tmp_path / "s", progress=False)
    assert sh.dtype == dtype and sh.manifest["dtype"] == np.dtype(dtype).name
    train, val, test = data.split_documents(docs, seed=0)
    ref = _reference_stream(tok, _in_source_order(docs, train), tok.eos_token_id)
    assert ref.max() == vocab - 1  # the EOS id: 65535 fits uint16, 65536 does not
    got = np.fromfile(sh.file("train"), dtype=dtype)
    np.testing.assert_array_equal(got.astype(np.int64), ref)
    assert sh.file("train").stat().st_size == len(ref) * np.dtype(dtype).itemsize
    np.testing.assert_array_equal(sh.sampler("train", 8)[:3].numpy(), ref[:24].reshape(3, 8))


# ----------------------------------------------------------------------------- reading
def _nanogpt_folder(tmp_path, n_train=5000, n_val=700) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    train = rng.integers(0, 50257, n_train).astype(np.uint16)
    val = rng.integers(0, 50257, n_val).astype(np.uint16)
    folder = tmp_path / "owt"
    folder.mkdir()
    train.tofile(folder / "train.bin")
    val.tofile(folder / "val.bin")
    return folder, train, val


def test_nanogpt_folder_read_as_it_is(tmp_path):
    folder, train, val = _nanogpt_folder(tmp_path)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(ValueError, match="tokenizer_name"):
        shards.open_shards(folder)
    sh = shards.open_shards(folder, tokenizer_name="tiny-gpt2")
    assert sh.splits == ("train", "validation") and sh.manifest["inferred"]
    assert sh.n_tokens("train") == 5000 and sh.n_tokens("val") == 700
    np.testing.assert_array_equal(np.asarray(sh.tokens("validation")), val)
    w, offs = sh.fixed_windows("validation", 3, 100, seed=0)
    for row, o in zip(w, offs):
        np.testing.assert_array_equal(row.numpy(), val[o : o + 100].astype(np.int64))
    sh.check_tokenizer(ByteTokenizer())  # the named tokenizer is loaded and hashed
    with pytest.raises(ValueError, match="tiny-gpt2.*char-tokenizer-300"):
        sh.check_tokenizer(CharTokenizer(300))
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing written
    # adopt: a manifest.json is added, the .bin files are untouched
    adopted = shards.adopt_nanogpt(folder, "tiny-gpt2", count_documents=True)
    assert {p.name for p in folder.iterdir()} == {"train.bin", "val.bin", "manifest.json"}
    assert all((folder / n).read_bytes() == b for n, b in before.items())
    again = shards.open_shards(folder)
    assert again.manifest["tokenizer"]["sha256"] == adopted.manifest["tokenizer"]["sha256"]
    assert again.manifest["splits"]["train"]["documents"] == int((train == EOS).sum())
    np.testing.assert_array_equal(again.sampler("train", 50)[2].numpy(),
                                  train[100:150].astype(np.int64))


def test_sampler_draw_is_nanogpt_get_batch(tmp_path):
    folder, train, _ = _nanogpt_folder(tmp_path)
    sampler = shards.open_shards(folder, tokenizer_name="tiny-gpt2").sampler("train", 64)
    data_ref = np.fromfile(folder / "train.bin", dtype=np.uint16)  # independent of memmap
    g_ours, g_ref = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    for batch_size in (1, 8, 5):
        x = sampler.sample(batch_size, g_ours)
        ix = torch.randint(len(data_ref) - 64 + 1, (batch_size,), generator=g_ref)
        ref = torch.stack([torch.from_numpy(data_ref[i : i + 64].astype(np.int64)) for i in ix])
        assert x.dtype == torch.long and x.device.type == "cpu"
        assert torch.equal(x, ref)
    assert sampler.n_tokens == 5000 and sampler.seq_len == 64


def test_sampler_reaches_every_start_including_the_last(tmp_path):
    folder = tmp_path / "tiny"
    folder.mkdir()
    np.arange(10, dtype=np.uint16).tofile(folder / "train.bin")
    np.arange(10, dtype=np.uint16).tofile(folder / "val.bin")
    sampler = shards.open_shards(folder, tokenizer_name="tiny-gpt2").sampler("train", 8)
    x = sampler.sample(300, torch.Generator().manual_seed(0))
    assert set(x[:, 0].tolist()) == {0, 1, 2}  # starts 0..n-seq_len, the last one included
    assert torch.equal(x - x[:, :1], torch.arange(8).expand(300, 8))


def test_fixed_windows_are_a_seeded_subset_of_blocks(tmp_path):
    folder, _, val = _nanogpt_folder(tmp_path)
    sh = shards.open_shards(folder, tokenizer_name="tiny-gpt2")
    w0, o0 = sh.fixed_windows("validation", 4, 100, seed=0)
    w0b, o0b = sh.fixed_windows("validation", 4, 100, seed=0)
    _, o1 = sh.fixed_windows("validation", 4, 100, seed=1)
    assert o0 == o0b and torch.equal(w0, w0b) and o0 != o1
    expect = np.sort(np.random.default_rng(0).choice(7, size=4, replace=False)) * 100
    assert o0 == expect.tolist() and all(b - a >= 100 for a, b in zip(o0, o0[1:]))
    wall, oall = sh.fixed_windows("validation", 7, 100, seed=5)
    assert oall == list(range(0, 700, 100))
    np.testing.assert_array_equal(wall.numpy().ravel(), val.astype(np.int64))


def test_lottery_cell_reads_a_shard_folder(tmp_path):
    from workbench.lottery.cell import load_inputs
    from workbench.lottery.schema import IMPConfig

    sh = shards.prepare_shards("lee", ByteTokenizer(), tmp_path / "lee", progress=False)
    cfg = IMPConfig(model="tiny-llama", corpus=str(sh.path), seq_len=32, val_seq_len=64,
                    n_val_blocks=3, sw_blocks=2, sw_seq_len=16, device="cpu")
    _, train, val_tokens, sw_input = load_inputs(cfg)
    assert isinstance(train, shards.WindowSampler) and train.seq_len == 32
    assert train.n_tokens == sh.n_tokens("train")
    assert train.sample(2, torch.Generator().manual_seed(0)).shape == (2, 32)
    ref_val, ref_offsets = sh.fixed_windows("validation", 3, 64, seed=shards.VALIDATION_SEED)
    assert torch.equal(val_tokens, ref_val) and sw_input.shape == (2, 16)
    rec = train.record()
    assert rec["eval_windows"]["validation"]["offsets"] == ref_offsets
    assert rec["manifest_sha256"] == hashlib.sha256(
        (sh.path / "manifest.json").read_bytes()).hexdigest()
    json.dumps(rec)  # JSON-able for the run's manifest
    # shards of another tokenizer: refused before the model loads, both named
    other = shards.prepare_shards("lee", CharTokenizer(300), tmp_path / "other",
                                  progress=False)
    with pytest.raises(ValueError, match="char-tokenizer-300.*tiny-llama"):
        load_inputs(IMPConfig(model="tiny-llama", corpus=str(other.path), device="cpu"))


def test_schema_accepts_shard_folders_and_refuses_other_folders(tmp_path):
    from workbench.lottery.schema import IMPConfig

    sh = shards.prepare_shards("lee", ByteTokenizer(), tmp_path / "lee", progress=False)
    assert IMPConfig.from_params({"corpus": str(sh.path)}).corpus == str(sh.path)
    # not there yet: validates (a spec is checked where the data is absent)
    IMPConfig.from_params({"corpus": str(tmp_path / "later" / "owt")})
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="corpus: .*plain.*data prepare"):
        IMPConfig.from_params({"corpus": str(tmp_path / "plain")})
    assert IMPConfig.from_params({"corpus": "lee"}).corpus == "lee"


def test_cli_data_prepare(tmp_path, capsys):
    from workbench import cli

    out = tmp_path / "cli"
    assert cli.main(["data", "prepare", "lee", "--tokenizer", "tiny-llama", "--out", str(out),
                     "--no-progress", "--seed", "2"]) == 0
    printed = capsys.readouterr().out
    m = json.loads((out / "manifest.json").read_text())
    assert m["split_rule"]["seed"] == 2 and f"{m['splits']['train']['tokens']:,}" in printed
    assert cli.main(["data", "info", str(out), "--verify"]) == 0
    assert "verified" in capsys.readouterr().out


# ----------------------------------------------------------------------------- memory
_RSS_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import psutil
    from workbench.core import shards
    from workbench.core.tokenizers import ByteTokenizer
    tok = ByteTokenizer()
    before = psutil.Process().memory_info().rss // 1024  # current RSS after the imports
    try:  # reset the peak (VmHWM) so the imports' transient peak does not hide growth
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        reset = True
    except OSError:
        reset = False
    sh = shards.prepare_shards(sys.argv[1], tok, sys.argv[2], batch_documents=256,
                               progress=False)
    if reset:
        status = open("/proc/self/status").read().split("VmHWM:")[1]
        after = int(status.split()[0])
    else:
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    total = sum(sh.n_tokens(s) for s in sh.splits)
    print(json.dumps(dict(before_kb=before, after_kb=after, tokens=total, reset=reset)))
""")


@pytest.mark.slow
def test_streaming_peak_memory_is_bounded_by_a_batch(tmp_path):
    """Preparing a ~200 MB JSONL raises peak RSS by less than 100 MB (one batch of 256
    documents of ~2 kB is ~0.5 MB of text); holding the corpus would need > 200 MB."""
    rng = np.random.default_rng(0)
    vocab = np.array([f"w{i:03d}" for i in range(1000)])
    path = tmp_path / "big.jsonl"
    size = 0
    with open(path, "w", encoding="utf-8") as fh:
        while size < 200_000_000:
            block = vocab[rng.integers(0, 1000, (1000, 400))]
            lines = "".join(json.dumps({"text": " ".join(r)}) + "\n" for r in block)
            fh.write(lines)
            size += len(lines)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]),
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(path), str(tmp_path / "o")],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    grown_mb = (res["after_kb"] - res["before_kb"]) / 1024
    print(f"peak RSS {res['before_kb'] / 1024:.0f} MB -> {res['after_kb'] / 1024:.0f} MB "
          f"(+{grown_mb:.1f} MB) preparing {size / 1e6:.0f} MB of JSONL, {res['tokens']} tokens")
    assert res["tokens"] > 190_000_000
    assert grown_mb < 100, res


# ----------------------------------------------------------------------------- bad input
def _small(tmp_path, name="s") -> shards.ShardSet:
    return shards.prepare_shards("lee", ByteTokenizer(), tmp_path / name, progress=False)


def test_missing_folder_names_it_and_the_prepare_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.*workbench data prepare"):
        shards.open_shards(tmp_path / "nowhere")


def test_folder_without_manifest_is_refused(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="plain.*no manifest.json"):
        shards.open_shards(tmp_path / "plain")


def test_tokenizer_mismatch_names_both(tmp_path):
    sh = _small(tmp_path)
    sh.check_tokenizer(ByteTokenizer())
    with pytest.raises(ValueError) as err:
        sh.check_tokenizer(CharTokenizer(300))
    msg = str(err.value)
    assert "byte-tokenizer" in msg and "char-tokenizer-300" in msg
    assert sh.manifest["tokenizer"]["sha256"][:16] in msg


def test_truncated_shard_names_the_file(tmp_path):
    sh = _small(tmp_path)
    f = sh.file("validation")
    raw = f.read_bytes()
    f.write_bytes(raw[:-1])  # odd size: not a whole number of uint16 tokens
    with pytest.raises(ValueError, match=r"val\.bin.*not a whole number of uint16"):
        shards.open_shards(sh.path)
    f.write_bytes(raw[:-2])  # one token short of the manifest
    with pytest.raises(ValueError, match=r"val\.bin.*holds .* tokens but manifest.json says"):
        shards.open_shards(sh.path)


def test_seq_len_longer_than_the_split(tmp_path):
    sh = _small(tmp_path)
    n = sh.n_tokens("validation")
    with pytest.raises(ValueError, match=f"seq_len={n + 1}.*validation.*{n} tokens"):
        sh.sampler("validation", n + 1)
    with pytest.raises(ValueError, match="seq_len"):
        sh.fixed_windows("validation", 1, n + 1, seed=0)
    sh.sampler("validation", n)  # exactly the split: one window


def test_unknown_source_lists_what_is_accepted(tmp_path):
    with pytest.raises(ValueError, match="unknown corpus 'wikipedia'.*wiki-excerpt, lee.*"
                                         r"\.jsonl.*Hugging Face"):
        shards.prepare_shards("wikipedia", ByteTokenizer(), tmp_path / "x")
    with pytest.raises(ValueError, match="someone/no-such-dataset"):
        shards.prepare_shards("someone/no-such-dataset", ByteTokenizer(), tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        shards.prepare_shards(tmp_path / "missing.jsonl", ByteTokenizer(), tmp_path / "x")
    assert not (tmp_path / "x").exists()


class _FailingTokenizer(ByteTokenizer):
    """Raises ``error`` on the document ``bad``."""

    def __init__(self, bad: str, error: BaseException):
        self.bad, self.error = bad, error

    def encode(self, text, add_special_tokens=False):
        if text == self.bad:
            raise self.error
        return super().encode(text, add_special_tokens)


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_nothing_half_written_on_error_or_ctrl_c(tmp_path, error):
    docs = [f"document number {i}" for i in range(40)]
    out = tmp_path / "out"
    with pytest.raises(type(error)):
        shards.prepare_shards(docs, _FailingTokenizer(docs[33], error), out,
                              batch_documents=4, progress=False)
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a temporary one


def test_existing_out_dir_and_bad_arguments(tmp_path):
    sh = _small(tmp_path)
    with pytest.raises(FileExistsError, match="already exists"):
        _small(tmp_path)
    again = shards.prepare_shards("lee", ByteTokenizer(), sh.path, overwrite=True, seed=1,
                                  progress=False)
    assert again.manifest["split_rule"]["seed"] == 1
    with pytest.raises(ValueError, match="splits"):
        shards.prepare_shards("lee", ByteTokenizer(), tmp_path / "y", splits=(0.5, 0.1, 0.1))
    with pytest.raises(ValueError, match="split must be one of"):
        sh.sampler("dev", 8)
    with pytest.raises(TypeError, match="generator"):
        sh.sampler("train", 8).sample(2, 0)
    with pytest.raises(ValueError, match="n must be an integer in"):
        sh.fixed_windows("validation", 10**6, 8, seed=0)
    with pytest.raises(ValueError, match="not a token shard folder"):
        shards.open_shards(tmp_path)
    with pytest.raises(ValueError, match="token shard folder.*open_shards"):
        data.load_corpus(str(sh.path))
