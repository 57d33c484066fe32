"""Protocol cards: each loader against hand-computed results on files in the hub's format."""

import gzip
import hashlib
import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from workbench.core import protocols
from workbench.core.data import calibration_windows as corpus_windows
from workbench.core.data import load_corpus, token_blocks
from workbench.core.tokenizers import ByteTokenizer

TOK = ByteTokenizer()
BOS = ByteTokenizer.bos_token_id


def write_wikitext(folder, rows):
    """``wikitext-2-raw-v1/test-00000-of-00001.parquet`` with one ``text`` column."""
    path = folder / "wikitext-2-raw-v1" / "test-00000-of-00001.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": rows}), path)
    return path


def write_c4(folder, name, docs):
    """``en/<name>`` as JSON lines with ``text``, ``timestamp``, ``url`` (gzip)."""
    path = folder / "en" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for i, d in enumerate(docs):
            fh.write(json.dumps({"text": d, "timestamp": "2019-04-25T12:57:54Z",
                                 "url": f"https://example.com/{i}"}) + "\n")
    return path


def test_wikitext2_joins_rows_with_blank_lines_and_drops_the_remainder(tmp_path):
    write_wikitext(tmp_path, ["a", "", " = T = ", "bc"])
    w = protocols.perplexity_windows("wikitext2", TOK, 4, data=tmp_path)
    # "a" + "\n\n" + "" + "\n\n" + " = T = " + "\n\n" + "bc": 16 bytes, + BOS = 17 tokens
    stream = [BOS] + list(b"a\n\n\n\n = T = \n\nbc")
    assert len(stream) == 17 and w.stream_tokens == 17
    assert w.n_available == 4 and w.tokens.shape == (4, 4)
    assert w.tokens[0].tolist() == [BOS, ord("a"), 10, 10]
    for k in range(4):
        assert w.tokens[k].tolist() == stream[4 * k: 4 * k + 4]
    assert w.tokens.flatten().tolist() == stream[:16]  # the last token, "c", is dropped
    assert w.fingerprint.n_tokens == 16
    # the file itself can be passed too
    same = protocols.perplexity_windows("wikitext2", TOK, 4,
                                        data=tmp_path / "wikitext-2-raw-v1" /
                                        "test-00000-of-00001.parquet")
    assert str(same.fingerprint) == str(w.fingerprint)
    first2 = protocols.perplexity_windows("wikitext2", TOK, 4, data=tmp_path, n_windows=2)
    assert first2.tokens.tolist() == w.tokens[:2].tolist()
    assert str(first2.fingerprint) != str(w.fingerprint)


def test_c4_val_keeps_1100_documents_joined_by_spaces(tmp_path):
    docs = [f"doc{i}" for i in range(1105)]
    write_c4(tmp_path, "c4-validation.00000-of-00008.json.gz", docs)
    w = protocols.perplexity_windows("c4-val", TOK, 64, data=tmp_path)
    stream = [BOS] + list(" ".join(docs[:1100]).encode())  # 8191 tokens < 256 * 64
    n = len(stream) // 64
    assert w.n_available == n and w.tokens.flatten().tolist() == stream[: n * 64]
    assert "doc1100" not in bytes(t for t in w.tokens.flatten().tolist() if t < 256).decode()


def test_c4_val_cuts_the_stream_at_256_windows(tmp_path):
    docs = [f"doc{i}" for i in range(1105)]
    write_c4(tmp_path, "c4-validation.00000-of-00008.json.gz", docs)
    w = protocols.perplexity_windows("c4-val", TOK, 8, data=tmp_path)
    stream = [BOS] + list(" ".join(docs[:1100]).encode())
    assert w.stream_tokens == 256 * 8 and w.n_available == 256
    assert w.tokens.flatten().tolist() == stream[: 256 * 8]


def reference_c4_draw(docs, seq_len, n, seed):
    """Wanda's get_c4 trainloader written from its description, with the global random."""
    random.seed(seed)
    out = []
    for _ in range(n):
        while True:
            i = random.randint(0, len(docs) - 1)
            enc = TOK.encode(docs[i], add_special_tokens=True)
            if len(enc) > seq_len:
                break
        i = random.randint(0, len(enc) - seq_len - 1)
        out.append(enc[i: i + seq_len])
    return out


def test_c4_calibration_draw_matches_an_independent_implementation(tmp_path):
    rng = np.random.default_rng(3)
    docs = ["".join(chr(97 + int(c)) for c in rng.integers(0, 26, int(length)))
            for length in rng.integers(3, 60, 40)]  # many shorter than seq_len
    write_c4(tmp_path, "c4-train.00000-of-01024.json.gz", docs)
    for seed in (0, 1):
        w = protocols.calibration_windows("c4", TOK, 24, n_windows=10, seed=seed,
                                          data=tmp_path)
        assert w.tokens.tolist() == reference_c4_draw(docs, 24, 10, seed)
    default = protocols.calibration_windows("c4", TOK, 24, data=tmp_path)
    assert default.tokens.shape == (128, 24) and default.seed == 0
    assert default.tokens.tolist() == reference_c4_draw(docs, 24, 128, 0)
    with pytest.raises(ValueError, match="no document has more than seq_len=100"):
        protocols.calibration_windows("c4", TOK, 100, n_windows=2, data=tmp_path)


def test_wiki_excerpt_cards_are_the_workbench_protocol():
    val = load_corpus("wiki-excerpt").validation
    w = protocols.perplexity_windows("wiki-excerpt", TOK, 512)
    assert torch.equal(w.tokens, token_blocks(TOK, val, 512))
    sub = protocols.perplexity_windows("wiki-excerpt", TOK, 512, n_windows=5, seed=3)
    assert torch.equal(sub.tokens, token_blocks(TOK, val, 512, n_blocks=5, seed=3))
    cal = protocols.calibration_windows("wiki-excerpt", TOK, 64, n_windows=4, seed=2)
    assert torch.equal(cal.tokens, corpus_windows(TOK, load_corpus("wiki-excerpt").train,
                                                  64, 4, seed=2))


def test_missing_file_and_bad_uses_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        protocols.perplexity_windows("wikitext2", TOK, 128, data=tmp_path)
    text = str(err.value)
    assert "'wikitext2'" in text and "wikitext-2-raw-v1/test-00000-of-00001.parquet" in text
    assert str(tmp_path) in text
    with pytest.raises(FileNotFoundError, match="'c4'.*en/c4-train.00000-of-01024.json.gz"):
        protocols.calibration_windows("c4", TOK, 128, data=tmp_path)
    with pytest.raises(ValueError, match="seq_len must be given explicitly"):
        protocols.perplexity_windows("wikitext2", TOK, None, data=tmp_path)
    with pytest.raises(ValueError, match="unknown perplexity card 'ptb'.*wikitext2"):
        protocols.perplexity_windows("ptb", TOK, 128)
    write_wikitext(tmp_path, ["abc"])
    with pytest.raises(ValueError, match="fewer than one window"):
        protocols.perplexity_windows("wikitext2", TOK, 128, data=tmp_path)


def test_fingerprint_is_sha256_of_int64_tokens_and_their_count():
    t = torch.tensor([[1, 2, 3], [4, 5, 6]])
    fp = protocols.fingerprint(t)
    assert fp.sha256 == hashlib.sha256(np.arange(1, 7, dtype=np.int64).tobytes()).hexdigest()
    assert fp.n_tokens == 6 and str(fp).endswith(":6")
    assert protocols.fingerprint(t.int()).sha256 == fp.sha256  # dtype-independent


def test_rows_with_different_fingerprints_are_refused():
    a = dict(eval_card="wikitext2", eval_fingerprint="sha256:aa:10", ppl=5.0)
    b = dict(eval_card="wikitext2", eval_fingerprint="sha256:bb:10", ppl=6.0)
    protocols.check_same_protocol([a, dict(a, ppl=7.0)])
    with pytest.raises(ValueError, match="different tokens.*allow_mixed_protocols"):
        protocols.check_same_protocol([a, b])
    protocols.check_same_protocol([a, b], allow_mixed=True)
