"""Tests for workbench.core.data: corpora, splits, token blocks, calibration windows."""

import json

import pytest
import torch

from workbench.core import data
from workbench.core.tokenizers import ByteTokenizer

TOK = ByteTokenizer()


@pytest.fixture(scope="module")
def wiki():
    return data.load_corpus("wiki-excerpt")


def test_wiki_excerpt_is_markup_free_prose(wiki):
    text = "\n".join(wiki.train + wiki.validation + wiki.test)
    for markup in ("{{", "}}", "[[", "]]", "<ref", "</ref", "|}", "{|", "==", "'''",
                   "thumb|", "Category:", "<!--"):
        assert markup not in text, markup
    assert len(text) > 1_000_000
    words = text.split()
    assert sum(w.isalpha() for w in words) / len(words) > 0.7


def test_splits_deterministic_disjoint_and_seeded(wiki):
    again = data.load_corpus("wiki-excerpt", seed=0)
    assert again.validation == wiki.validation and again.test == wiki.test
    sets = [set(wiki.train), set(wiki.validation), set(wiki.test)]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    n = sum(map(len, sets))
    assert len(wiki.validation) == round(0.1 * n)
    assert data.load_corpus("wiki-excerpt", seed=1).validation != wiki.validation


def test_clean_wikitext_on_handwritten_markup():
    raw = (
        "{{Infobox person|name=X}}\n'''Ada Lovelace''' was an [[England|English]] "
        "mathematician.<ref>{{cite book|title=A}}</ref> She wrote notes.\n"
        "== Life ==\n* She worked with [[Charles Babbage]] on the engine for years.\n"
        "{| class=wikitable\n|-\n| a || b\n|}\n[[File:Ada.jpg|thumb|Portrait]]\n"
        "== References ==\n{{reflist}}\nSome reference text that is long enough to stay."
    )
    out = data.clean_wikitext(raw)
    assert out.splitlines() == [
        "Ada Lovelace was an English mathematician. She wrote notes.",
        "She worked with Charles Babbage on the engine for years.",
    ]


def test_lee_and_local_files(tmp_path):
    lee = data.load_corpus("lee")
    assert len(lee.train) + len(lee.validation) + len(lee.test) == 300
    txt = tmp_path / "c.txt"
    txt.write_text("doc one.\n\ndoc two.\n\n\ndoc three.\n\ndoc four.")
    c = data.load_corpus(str(txt))
    assert sorted(c.train + c.validation + c.test) == ["doc four.", "doc one.", "doc three.",
                                                      "doc two."]
    js = tmp_path / "c.jsonl"
    js.write_text("\n".join(json.dumps({"text": f"document {i}"}) for i in range(10)))
    assert len(data.load_corpus(str(js)).train) == 8


def test_corpus_bad_input(tmp_path):
    with pytest.raises(ValueError, match="wiki-excerpt.*lee"):
        data.load_corpus("no-such-corpus")
    with pytest.raises(FileNotFoundError, match="name"):
        data.load_corpus(str(tmp_path / "missing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n ")
    with pytest.raises(ValueError, match="no text"):
        data.load_corpus(str(empty))
    with pytest.raises(ValueError, match="split must be"):
        data.load_corpus("lee").split("dev")


def test_token_blocks_are_the_token_stream_cut_in_order():
    text = "abcdefghij" * 5
    blocks = data.token_blocks(TOK, text, 8)
    assert blocks.dtype == torch.long and blocks.shape == (6, 8)
    assert blocks.flatten().tolist() == TOK.encode(text)[:48]


def test_token_blocks_subset_is_seeded_and_non_overlapping():
    text = "".join(chr(97 + i % 26) for i in range(400))
    full = data.token_blocks(TOK, text, 10)
    sub = data.token_blocks(TOK, text, 10, n_blocks=7, seed=1)
    again = data.token_blocks(TOK, text, 10, n_blocks=7, seed=1)
    assert torch.equal(sub, again)
    rows = {tuple(r) for r in full.tolist()}
    assert all(tuple(r) in rows for r in sub.tolist())
    assert not torch.equal(sub, data.token_blocks(TOK, text, 10, n_blocks=7, seed=2))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(text="abcdef", seq_len=1), "seq_len"),
        (dict(text="", seq_len=4), "empty"),
        (dict(text="abc", seq_len=4), "shorter than one block"),
        (dict(text="abcdefgh", seq_len=4, n_blocks=3), "n_blocks"),
        (dict(text="abcdefgh", seq_len=4, n_blocks=0), "n_blocks"),
    ],
)
def test_token_blocks_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.token_blocks(TOK, **kwargs)


def test_calibration_windows_follow_wanda_protocol():
    docs = ["short", "x" * 3, "".join(chr(65 + i % 26) for i in range(100)), "0123456789" * 3]
    w = data.calibration_windows(TOK, docs, 16, 12, seed=0)
    assert w.shape == (12, 16)
    assert torch.equal(w, data.calibration_windows(TOK, docs, 16, 12, seed=0))
    sources = [TOK.encode(d) for d in docs if len(d) > 16]
    for row in w.tolist():
        assert any(
            row == s[i : i + 16] for s in sources for i in range(len(s) - 16 + 1)
        )
    with pytest.raises(ValueError, match="no document"):
        data.calibration_windows(TOK, ["tiny"], 16, 2)
    with pytest.raises(ValueError, match="n_windows"):
        data.calibration_windows(TOK, docs, 16, 0)


def test_jsonl_documents_and_error_lines(tmp_path):
    from workbench.core.data import load_corpus

    good = tmp_path / "good.jsonl"
    docs = [f"Document {i} is here. " * 4 for i in range(5)]
    good.write_text("\n".join(json.dumps({"text": d, "id": i}) for i, d in enumerate(docs))
                    + "\n\n", encoding="utf-8")
    corpus = load_corpus(good)
    assert sorted(corpus.train + corpus.validation + corpus.test) == sorted(docs)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(json.dumps({"text": d}) for d in docs[:3]) + '\n{"text": "x",}\n',
                   encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 4: not valid JSON"):
        load_corpus(bad)


def test_non_utf8_error_points_at_the_line(tmp_path):
    from workbench.core.data import load_corpus

    path = tmp_path / "latin1.txt"
    path.write_bytes("first line\nsecond line\nthird caf\xe9\n".encode("latin-1"))
    offset = len(b"first line\nsecond line\nthird caf")
    with pytest.raises(ValueError, match=rf"latin1\.txt is not UTF-8 text: byte 0xe9 at offset "
                                         rf"{offset} \(line 3\)"):
        load_corpus(path)
