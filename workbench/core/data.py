"""Real English text offline, split by document, and cut into token blocks.

Corpora accepted by :func:`load_corpus`:

* ``"wiki-excerpt"`` (default): the English Wikipedia excerpt shipped in gensim's test
  data (``enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2``), parsed
  with ``mwparserfromhell``; templates, tables, references, file links, categories,
  heading markup and list markup are removed, leaving plain prose paragraphs.
* ``"lee"``: the Lee news corpus (``lee_background.cor``, one article per line).
* a local ``.txt`` file (documents separated by blank lines) or ``.jsonl`` file (one
  JSON object per line with a ``"text"`` field);
* a Hugging Face dataset name (only where ``datasets`` and a hub are available).

A token shard folder (``workbench data prepare``, :mod:`workbench.core.shards`) holds
token ids, not text: :func:`load_corpus` refuses it with a pointer to
:func:`workbench.core.shards.open_shards`; the lottery cell reads one as its corpus.

Documents are shuffled with the seed and split 80 / 10 / 10 into train / validation /
test, so the splits are disjoint by document and deterministic.
"""

from __future__ import annotations

import bz2
import hashlib
import importlib.util
import json
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from workbench.core import io, paths
from workbench.core.checks import check_range
from workbench.core.shard_layout import is_shard_folder

DEFAULT_CORPUS = "wiki-excerpt"
KNOWN_CORPORA = ("wiki-excerpt", "lee")
_WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_LEE_FILE = "lee_background.cor"
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
_CLEANER_VERSION = 3  # bump to invalidate the cleaned-text cache


@dataclass(frozen=True)
class Corpus:
    """Documents of one corpus, split by document.

    Attributes:
        name: The corpus spec it was loaded from.
        train, validation, test: Lists of documents (plain text strings).
    """

    name: str
    train: list[str]
    validation: list[str]
    test: list[str]

    def split(self, name: str) -> list[str]:
        """Return the documents of split ``name`` (train, validation or test)."""
        if name not in ("train", "validation", "test"):
            raise ValueError(f"split must be one of train, validation, test; got {name!r}")
        return getattr(self, name)

    def text(self, split: str) -> str:
        """The documents of ``split`` joined by blank lines."""
        return "\n\n".join(self.split(split))


# ----------------------------------------------------------------------------- sources
def gensim_test_data() -> Path:
    """Folder of gensim's shipped test data (located without importing gensim)."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the built-in corpora need the 'gensim' package installed")
    return Path(list(spec.submodule_search_locations)[0]) / "test" / "test_data"


def _wiki_pages(path: Path):
    """Yield (title, wikitext) for every main-namespace, non-redirect page."""
    with bz2.open(path, "rb") as fh:
        for _, elem in ET.iterparse(fh, events=("end",)):
            if not elem.tag.endswith("}page"):
                continue
            ns = next((c.text for c in elem if c.tag.endswith("}ns")), "0")
            title = next((c.text for c in elem if c.tag.endswith("}title")), "")
            text = ""
            for rev in elem:
                if rev.tag.endswith("}revision"):
                    for c in rev:
                        if c.tag.endswith("}text"):
                            text = c.text or ""
            redirect = any(c.tag.endswith("}redirect") for c in elem)
            elem.clear()
            if ns == "0" and not redirect and text and not text.lower().startswith("#redirect"):
                yield title, text


_DROP_LINK_PREFIXES = ("file:", "image:", "category:", "media:")
_DROP_SECTIONS = ("references", "external links", "see also", "further reading", "notes",
                  "bibliography", "sources", "footnotes", "citations")


def clean_wikitext(wikitext: str) -> str:
    """Turn one article's wikitext into plain prose paragraphs.

    Removes templates (``{{...}}``), tables (``{|...|}``), ``<ref>`` and other tags'
    markup, comments, file/image/category links, interlanguage links, heading lines,
    list/indent markers, bold/italic quotes, and the trailing reference-style sections
    (References, External links, See also, ...). Link brackets are replaced by the link
    text. Paragraphs shorter than 40 characters or without a sentence end are dropped.
    """
    import mwparserfromhell as mwp

    code = mwp.parse(wikitext)
    # Cut at the first reference-style section.
    for heading in code.filter_headings(recursive=False):
        if heading.title.strip_code().strip().lower() in _DROP_SECTIONS:
            idx = code.index(heading)
            code = mwp.parse("".join(str(n) for n in code.nodes[:idx]))
            break
    for node in list(code.nodes):
        if isinstance(node, mwp.nodes.Heading):
            code.remove(node)
    for tmpl in code.filter_templates(recursive=False):
        try:
            code.remove(tmpl)
        except ValueError:
            pass
    for link in code.filter_wikilinks():
        target = str(link.title).strip().lower()
        if target.startswith(_DROP_LINK_PREFIXES) or re.match(r"^[a-z\-]{2,12}:", target):
            try:
                code.remove(link)
            except ValueError:
                pass
    for tag in code.filter_tags():
        if str(tag.tag).lower() in ("ref", "table", "gallery", "math", "timeline", "imagemap"):
            try:
                code.remove(tag)
            except ValueError:
                pass
    text = code.strip_code(normalize=True, collapse=True, keep_template_params=False)
    text = re.sub(r"\{\|.*?\|\}", " ", text, flags=re.S)  # stray tables
    text = re.sub(r"\{\{.*?\}\}", " ", text, flags=re.S)  # stray templates
    text = re.sub(r"<[^>]+>", " ", text)  # stray tags
    text = re.sub(r"\[\[|\]\]|\[https?://\S+\s*|\]", "", text)
    text = text.replace("'''", "").replace("''", "")
    paragraphs = []
    for line in text.splitlines():
        line = re.sub(r"^[*#:;\s]+", "", line).strip()
        line = re.sub(r"\s+", " ", line)
        line = re.sub(r"\(\s*[,;]?\s*\)", "", line)  # "( )" left by removed templates
        line = re.sub(r"\s+([,.;:])", r"\1", line)
        if len(line) >= 40 and re.search(r"[.!?]\"?$", line) and "|" not in line:
            paragraphs.append(line)
    return "\n".join(paragraphs)


def _cached_documents(key: str, build) -> list[str]:
    """Build a list of documents once and cache it as JSON under ``data/corpora/``."""
    cache = paths.CORPORA_DIR / f"{key}.json"
    if cache.is_file():
        return json.loads(cache.read_text(encoding="utf-8"))
    docs = build()
    io.write_json(cache, docs)
    return docs


def wiki_documents() -> list[str]:
    path = gensim_test_data() / _WIKI_FILE

    def build():
        docs = []
        for _, wikitext in _wiki_pages(path):
            doc = clean_wikitext(wikitext)
            if len(doc) >= 200:
                docs.append(doc)
        return docs

    return _cached_documents(f"wiki-excerpt-v{_CLEANER_VERSION}", build)


def lee_documents() -> list[str]:
    path = gensim_test_data() / _LEE_FILE
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return [re.sub(r"\s+", " ", ln).strip() for ln in lines if ln.strip()]


def _decode_utf8(path: Path, raw: bytes) -> str:
    """Decode ``raw`` as UTF-8; on failure the error names the file, line and byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise ValueError(
            f"name: {path} is not UTF-8 text: byte 0x{raw[err.start]:02x} at offset "
            f"{err.start} (line {line}) cannot be decoded; re-save the file as UTF-8"
        ) from None


def _jsonl_documents(path: Path, text: str) -> list[str]:
    """One document per line: each non-blank line a JSON object with a string ``"text"``."""
    docs = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {i}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"name: {where}: not valid JSON ({err.msg} at column "
                             f"{err.colno})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"name: {where}: expected a JSON object with a \"text\" field, "
                             f"got {type(obj).__name__}")
        if "text" not in obj:
            raise ValueError(f"name: {where}: has no \"text\" field (fields: {sorted(obj)})")
        if not isinstance(obj["text"], str):
            got = "null" if obj["text"] is None else type(obj["text"]).__name__
            raise ValueError(f"name: {where}: \"text\" must be a string, got {got}")
        docs.append(obj["text"])
    return docs


def _file_documents(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"name: corpus file {path} does not exist")
    text = _decode_utf8(path, path.read_bytes())
    if path.suffix == ".jsonl":
        return _jsonl_documents(path, text)
    return [d.strip() for d in re.split(r"\n\s*\n", text) if d.strip()]


def _hf_documents(name: str) -> list[str]:
    try:
        import datasets  # noqa: F401
    except ImportError as err:
        raise ValueError(
            f"name: unknown corpus {name!r}; known names: {', '.join(KNOWN_CORPORA)}, a .txt "
            "or .jsonl path, or a Hugging Face dataset name (needs the 'datasets' package)"
        ) from err
    import datasets

    ds = datasets.load_dataset(name, split="train")
    return [str(t) for t in ds["text"] if str(t).strip()]


def split_documents(docs: Sequence[str], seed: int = 0) -> tuple[list, list, list]:
    """Shuffle ``docs`` with ``seed`` and split 80/10/10 (at least one doc per split).

    Raises:
        ValueError: With fewer than 3 documents.
    """
    n = len(docs)
    if n < 3:
        raise ValueError(f"name: a corpus needs at least 3 documents to split, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, round(n * SPLIT_FRACTIONS[1]))
    n_test = max(1, round(n * SPLIT_FRACTIONS[2]))
    n_train = n - n_val - n_test
    pick = [docs[i] for i in order]
    return pick[:n_train], pick[n_train : n_train + n_val], pick[n_train + n_val :]


def load_corpus(name: str = DEFAULT_CORPUS, *, seed: int = 0) -> Corpus:
    """Load a corpus and split it by document into train / validation / test.

    Args:
        name: ``"wiki-excerpt"``, ``"lee"``, a ``.txt``/``.jsonl`` path, or a Hugging Face
            dataset name.
        seed: Seed of the document shuffle before splitting.

    Returns:
        A :class:`Corpus`.

    Raises:
        TypeError: ``name`` not a string or path, ``seed`` not an integer.
        ValueError: Unknown name (lists the known ones), empty text, a file that is not
            UTF-8, or a JSONL line that is not an object with a string ``"text"`` (the
            message names the file and the line).
        FileNotFoundError: A path that does not exist.
    """
    if not isinstance(name, (str, os.PathLike)):
        raise TypeError(f"name must be a corpus name or a path (str or os.PathLike), got "
                        f"{type(name).__name__} {name!r}")
    check_range("seed", seed, 0, integer=True)
    name = os.fspath(name)
    if name == "wiki-excerpt":
        docs = wiki_documents()
    elif name == "lee":
        docs = lee_documents()
    elif name.endswith((".txt", ".jsonl")) or Path(name).suffix in (".txt", ".jsonl"):
        docs = _file_documents(Path(name))
    elif Path(name).is_dir() and is_shard_folder(name):
        raise ValueError(
            f"name: {name!r} is a token shard folder (token ids, not text): open it with "
            f"workbench.core.shards.open_shards({name!r}); a lottery spec's corpus: reads it "
            "directly (random windows of its train split)")
    elif Path(name).is_dir():
        raise ValueError(f"name: {name!r} is a folder; pass a .txt or .jsonl file (or make "
                         f"token shards of it: workbench data prepare {name} --tokenizer "
                         "MODEL --out DIR)")
    elif (re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", name)
          and not Path(name.split("/", 1)[0]).is_dir()):
        docs = _hf_documents(name)
    else:
        raise ValueError(
            f"name: unknown corpus {name!r}; known names: {', '.join(KNOWN_CORPORA)}, "
            "a .txt or .jsonl path, or a Hugging Face dataset name 'owner/name'"
        )
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise ValueError(f"name: corpus {name!r} contains no text")
    train, val, test = split_documents(docs, seed)
    return Corpus(name=name, train=train, validation=val, test=test)


# ----------------------------------------------------------------------------- tokens
def check_tokenizer(tokenizer) -> None:
    """Raise ``TypeError`` unless ``tokenizer`` has a callable ``encode`` (the second value
    :func:`workbench.core.models.load_model` returns)."""
    if isinstance(tokenizer, (str, bytes)) or not callable(getattr(tokenizer, "encode", None)):
        hint = (" (did you swap tokenizer and text?)" if isinstance(tokenizer, (str, list, tuple))
                else "")
        raise TypeError(
            f"tokenizer must be a tokenizer with an encode(text) method, e.g. the second value "
            f"of load_model(); got {type(tokenizer).__name__}{hint}"
        )


def _encode(tokenizer, text: str) -> list[int]:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    return list(ids)


def _check_documents(argument: str, documents) -> list[str]:
    """``documents`` as a list of strings; a lone string or non-string entry is an error."""
    if isinstance(documents, (str, bytes)) or not isinstance(documents, Sequence):
        raise TypeError(f"{argument} must be a list of strings (documents), got "
                        f"{type(documents).__name__}")
    for i, doc in enumerate(documents):
        if not isinstance(doc, str):
            raise TypeError(f"{argument}[{i}] must be a string, got {type(doc).__name__}")
    return list(documents)


def _as_text(text: str | Sequence[str]) -> str:
    if isinstance(text, str):
        return text
    return "\n\n".join(_check_documents("text", text))


def token_blocks(
    tokenizer,
    text: str | Sequence[str],
    seq_len: int,
    *,
    n_blocks: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Tokenize ``text`` once and cut it into non-overlapping blocks.

    Args:
        tokenizer: Anything with ``encode(text, add_special_tokens=False)``.
        text: A string, or a list of documents (joined by blank lines).
        seq_len: Tokens per block (>= 2: a block predicts ``seq_len - 1`` tokens).
        n_blocks: How many blocks; ``None`` keeps all. Fewer than available: a seeded
            random subset, kept in text order.
        seed: Seed for that subset.

    Returns:
        ``LongTensor[n, seq_len]``; the tail shorter than a block is dropped.

    Raises:
        TypeError: ``tokenizer`` without ``encode``, ``text`` not a string or list of
            strings.
        ValueError: ``seq_len < 2``, empty text, text shorter than one block, or
            ``n_blocks`` not in ``[1, available]``.
    """
    check_tokenizer(tokenizer)
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise ValueError(f"seq_len must be an integer >= 2, got {seq_len!r}")
    check_range("seed", seed, 0, integer=True)
    joined = _as_text(text)
    if not joined.strip():
        raise ValueError("text is empty")
    ids = _encode(tokenizer, joined)
    available = len(ids) // seq_len
    if available == 0:
        raise ValueError(
            f"text is shorter than one block: {len(ids)} tokens < seq_len={seq_len}"
        )
    blocks = torch.tensor(ids[: available * seq_len], dtype=torch.long).view(available, seq_len)
    if n_blocks is None:
        return blocks
    if (isinstance(n_blocks, bool) or not isinstance(n_blocks, int) or n_blocks < 1
            or n_blocks > available):
        raise ValueError(
            f"n_blocks must be an integer in [1, {available}] (blocks available at "
            f"seq_len={seq_len}), got {n_blocks!r}"
        )
    if n_blocks == available:
        return blocks
    keep = np.sort(np.random.default_rng(seed).choice(available, size=n_blocks, replace=False))
    return blocks[torch.from_numpy(keep)]


def calibration_windows(
    tokenizer,
    documents: Sequence[str],
    seq_len: int,
    n_windows: int,
    *,
    seed: int = 0,
) -> torch.Tensor:
    """Random calibration windows, Wanda's protocol (``get_c4`` in locuslab/wanda).

    For each window: draw a random document; if it has more than ``seq_len`` tokens, take
    a random ``seq_len`` window from it; otherwise draw again. Seeded and deterministic.

    Returns:
        ``LongTensor[n_windows, seq_len]``.

    Raises:
        TypeError: ``tokenizer`` without ``encode``, ``documents`` not a list of strings.
        ValueError: Bad ``seq_len``/``n_windows``, no documents, or no document long
            enough.
    """
    check_tokenizer(tokenizer)
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise ValueError(f"seq_len must be an integer >= 2, got {seq_len!r}")
    if isinstance(n_windows, bool) or not isinstance(n_windows, int) or n_windows < 1:
        raise ValueError(f"n_windows must be a positive integer, got {n_windows!r}")
    check_range("seed", seed, 0, integer=True)
    documents = _check_documents("documents", documents)
    if not documents:
        raise ValueError("documents must be a non-empty list of strings, got an empty list")
    encoded = [_encode(tokenizer, d) for d in documents]
    long_enough = [e for e in encoded if len(e) > seq_len]
    if not long_enough:
        raise ValueError(
            f"no document has more than seq_len={seq_len} tokens "
            f"(longest: {max(len(e) for e in encoded)})"
        )
    rng = np.random.default_rng(seed)
    windows = []
    while len(windows) < n_windows:
        doc = encoded[int(rng.integers(len(encoded)))]
        if len(doc) <= seq_len:
            continue
        start = int(rng.integers(0, len(doc) - seq_len))
        windows.append(doc[start : start + seq_len])
    return torch.tensor(windows, dtype=torch.long)


def corpus_fingerprint(corpus: Corpus) -> str:
    """A short hash of the corpus contents and split, for manifests."""
    h = hashlib.sha256()
    for split in ("train", "validation", "test"):
        for doc in corpus.split(split):
            h.update(doc.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:16]
