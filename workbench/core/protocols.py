"""Evaluation protocols as named cards: what is evaluated, cut how, read from which file.

A *card* holds a protocol's properties as data; the loaders below read the card, never a
copy of its constants. Three kinds:

* **perplexity cards** (:class:`PerplexityCard`) give the token windows a perplexity is
  computed on (:func:`perplexity_windows`):

  - ``wikitext2``: the ``wikitext-2-raw-v1`` **test** split, its rows joined with
    ``"\\n\\n"``, tokenized as one stream (with the tokenizer's special tokens, as the
    authors' ``tokenizer(text)`` call adds them), cut into ``numel // seq_len``
    non-overlapping windows of ``seq_len``, the remainder dropped. Perplexity is
    ``exp`` of the mean token NLL over all windows (``eval_ppl_wikitext`` in
    locuslab/wanda ``lib/eval.py``; ``get_wikitext2`` in ``lib/data.py`` and in
    IST-DASLab/sparsegpt ``datautils.py``).
  - ``c4-val``: the first 1100 documents of ``en/c4-validation.00000-of-00008.json.gz``
    joined with ``" "``, tokenized as one stream, the first ``256 * seq_len`` tokens kept,
    then cut as above (``get_c4`` in locuslab/wanda ``lib/data.py``).
  - ``wiki-excerpt``: the workbench's own protocol: the validation split of the embedded
    corpus (:func:`workbench.core.data.load_corpus`), documents joined by blank lines,
    one stream without special tokens, non-overlapping windows, remainder dropped
    (:func:`workbench.core.data.token_blocks`); a smaller ``n_windows`` is a seeded
    subset kept in text order (the one-shot sweeps' historical draw).

* **calibration cards** (:class:`CalibrationCard`, :func:`calibration_windows`):

  - ``c4``: train shard ``en/c4-train.00000-of-01024.json.gz``, 128 windows at seed 0 by
    default. Python's ``random`` is seeded with ``random.seed(seed)``; per window: draw
    ``i = random.randint(0, n_docs - 1)`` until document ``i`` tokenizes to more than
    ``seq_len`` tokens, then ``start = random.randint(0, len - seq_len - 1)`` and keep
    ``[start, start + seq_len)`` (``get_c4`` in locuslab/wanda ``lib/data.py``).
  - ``wiki-excerpt``: windows of the embedded corpus' train split
    (:func:`workbench.core.data.calibration_windows`, same rule with numpy's generator).

* the **zero-shot card** ``zeroshot-7`` (:data:`workbench.core.zeroshot.ZEROSHOT_CARDS`).

Data come from a local file or folder the user points at (``data=...``; the files as the
hub distributes them, a folder may hold them under the hub's relative path), else from
the ``datasets`` cache where it is reachable. A missing file raises one
``FileNotFoundError`` naming the card, the expected file name and where to put it.

``seq_len`` is explicit in every use: the model's maximum is never a default.

Every evaluation records its protocol (:func:`protocol_record`): the card, a fingerprint
of the evaluated tokens (SHA-256 of the int64 token ids in row-major order, plus their
count), ``seq_len``, token- vs word-level perplexity, and the windows used.
:func:`check_same_protocol` refuses to compare rows whose fingerprints differ.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from workbench.core.checks import check_range

#: Where the error messages tell the user to put the standard datasets.
DEFAULT_DATA_DIR = Path("data") / "datasets"


@dataclass(frozen=True)
class DataFile:
    """One file of a hub dataset, as the hub distributes it.

    Attributes:
        dataset: Hub dataset id (``"Salesforce/wikitext"``).
        name: Config name (``"wikitext-2-raw-v1"``) or ``None``.
        split: Split the file holds.
        path: File path inside the hub repository (also accepted under a local folder).
        format: ``"parquet"`` (a ``text`` column) or ``"json.gz"`` (JSON lines with
            ``text``).
    """

    dataset: str
    name: str | None
    split: str
    path: str
    format: str


@dataclass(frozen=True)
class PerplexityCard:
    """A perplexity protocol.

    Attributes:
        name: Card name.
        description: One line.
        source: ``DataFile`` of the evaluated text, or ``None`` for the embedded corpus.
        joiner: String the documents/rows are joined with before tokenizing.
        n_documents: Keep only the first this many documents (``None``: all).
        max_windows: Keep only the first ``max_windows * seq_len`` tokens (``None``: all).
        add_special_tokens: Tokenize with the tokenizer's special tokens (the authors'
            ``tokenizer(text)`` call does; the workbench's own protocol does not).
        subset: How a smaller ``n_windows`` is taken: ``"first"`` windows, or a
            ``"seeded"`` random subset in text order.
        level: ``"token"`` (mean NLL per token) — never word-level here.
        reference: Where the protocol is defined.
    """

    name: str
    description: str
    source: DataFile | None
    joiner: str
    n_documents: int | None = None
    max_windows: int | None = None
    add_special_tokens: bool = True
    subset: str = "first"
    level: str = "token"
    reference: str = ""


@dataclass(frozen=True)
class CalibrationCard:
    """A calibration-window protocol.

    Attributes:
        name: Card name.
        description: One line.
        source: ``DataFile`` of the documents, or ``None`` for the embedded corpus.
        n_windows: Default number of windows (the papers: 128).
        default_seed: The papers' seed.
        rng: ``"python-random"`` (``random.seed``) or ``"numpy"``.
        add_special_tokens: As :class:`PerplexityCard`.
        reference: Where the protocol is defined.
    """

    name: str
    description: str
    source: DataFile | None
    n_windows: int = 128
    default_seed: int = 0
    rng: str = "python-random"
    add_special_tokens: bool = True
    reference: str = ""


_WANDA = "locuslab/wanda lib/data.py and lib/eval.py (after IST-DASLab/sparsegpt datautils.py)"

PERPLEXITY_CARDS: dict[str, PerplexityCard] = {
    "wikitext2": PerplexityCard(
        name="wikitext2",
        description="WikiText-2 raw test split, rows joined with '\\n\\n', one stream, "
                    "non-overlapping seq_len windows, remainder dropped",
        source=DataFile("Salesforce/wikitext", "wikitext-2-raw-v1", "test",
                        "wikitext-2-raw-v1/test-00000-of-00001.parquet", "parquet"),
        joiner="\n\n", reference=f"get_wikitext2 + eval_ppl_wikitext in {_WANDA}"),
    "c4-val": PerplexityCard(
        name="c4-val",
        description="first 1100 documents of the C4 en validation shard 0 joined with ' ', "
                    "first 256*seq_len tokens, non-overlapping seq_len windows",
        source=DataFile("allenai/c4", "en", "validation",
                        "en/c4-validation.00000-of-00008.json.gz", "json.gz"),
        joiner=" ", n_documents=1100, max_windows=256,
        reference=f"get_c4 (valenc) + eval_ppl_wikitext in {_WANDA}"),
    "wiki-excerpt": PerplexityCard(
        name="wiki-excerpt",
        description="the workbench's embedded Wikipedia excerpt, validation split, documents "
                    "joined by blank lines, one stream, non-overlapping windows",
        source=None, joiner="\n\n", add_special_tokens=False, subset="seeded",
        reference="workbench.core.data.load_corpus('wiki-excerpt') + token_blocks"),
}

CALIBRATION_CARDS: dict[str, CalibrationCard] = {
    "c4": CalibrationCard(
        name="c4",
        description="random windows of random long-enough documents of the C4 en train shard 0",
        source=DataFile("allenai/c4", "en", "train", "en/c4-train.00000-of-01024.json.gz",
                        "json.gz"),
        reference=f"get_c4 (trainloader) in {_WANDA}"),
    "wiki-excerpt": CalibrationCard(
        name="wiki-excerpt",
        description="random windows of random long-enough documents of the embedded "
                    "corpus' train split (numpy generator)",
        source=None, n_windows=32, rng="numpy", add_special_tokens=False,
        reference="workbench.core.data.calibration_windows"),
}


def card_names() -> dict[str, list[str]]:
    """``{"perplexity": [...], "calibration": [...], "zeroshot": [...]}``."""
    from workbench.core.zeroshot import ZEROSHOT_CARDS

    return {"perplexity": list(PERPLEXITY_CARDS), "calibration": list(CALIBRATION_CARDS),
            "zeroshot": list(ZEROSHOT_CARDS)}


def _card(card, cls: type, table: Mapping[str, Any], argument: str, what: str):
    """``card`` itself when it is a ``cls``, else ``table[card]``; an unknown name raises
    ``ValueError`` naming ``argument`` and the known cards."""
    if isinstance(card, cls):
        return card
    if card not in table:
        raise ValueError(f"{argument}: unknown {what} card {card!r}; known cards: "
                         f"{', '.join(table)}")
    return table[card]


def perplexity_card(card: str | PerplexityCard) -> PerplexityCard:
    """The perplexity card named ``card`` (a card passes through).

    Raises:
        ValueError: Unknown name (lists the known ones).
    """
    return _card(card, PerplexityCard, PERPLEXITY_CARDS, "eval_card", "perplexity")


def calibration_card(card: str | CalibrationCard) -> CalibrationCard:
    """The calibration card named ``card`` (a card passes through).

    Raises:
        ValueError: Unknown name (lists the known ones).
    """
    return _card(card, CalibrationCard, CALIBRATION_CARDS, "calibration_card", "calibration")


# ----------------------------------------------------------------------------- files
def locate(card_name: str, source: DataFile, data: str | os.PathLike | None) -> Path | None:
    """The local file of ``source``: ``data`` itself, or inside the folder ``data``.

    A folder is searched for the hub's relative path (``wikitext-2-raw-v1/test-...``), the
    bare file name, and ``<dataset id>/<hub path>``. ``data=None`` returns ``None`` (the
    caller may then try the ``datasets`` cache).

    Raises:
        TypeError: ``data`` not a path.
        FileNotFoundError: Nothing found; names the card, the expected file and where to
            put it.
    """
    if data is None:
        return None
    if not isinstance(data, (str, os.PathLike)):
        raise TypeError(f"data must be a file or folder path, got {type(data).__name__}")
    root = Path(data).expanduser()
    if root.is_file():
        if not root.name.endswith("." + source.format):
            raise ValueError(f"data: card {card_name!r} reads a {source.format} file like "
                             f"{Path(source.path).name!r}, got {root}")
        return root
    candidates = [root / source.path, root / Path(source.path).name,
                  root / source.dataset / source.path,
                  root / source.dataset.split("/")[-1] / source.path]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(missing_message(card_name, source, root))


def missing_message(card_name: str, source: DataFile, where: Path | None = None) -> str:
    """The one error message for a card whose data file is not there."""
    where = where if where is not None else DEFAULT_DATA_DIR
    return (f"card {card_name!r} needs the file {source.path!r} of the hub dataset "
            f"{source.dataset!r} ({source.name or 'default'} config, {source.split} split); "
            f"it is not in {where}: download it from https://huggingface.co/datasets/"
            f"{source.dataset} and put it at {Path(where) / source.path} (or pass its path "
            f"with data=...)")


def read_texts(path: Path, fmt: str) -> list[str]:
    """The ``text`` field of every row of a parquet file or a JSON-lines ``.json.gz``.

    Raises:
        ValueError: No ``text`` column/field (names the file and the row).
    """
    if fmt == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if "text" not in table.column_names:
            raise ValueError(f"data: {path} has no 'text' column (columns: "
                             f"{table.column_names})")
        return [str(t) for t in table.column("text").to_pylist()]
    texts = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for i, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            obj = json.loads(line)
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise ValueError(f"data: {path}, line {i}: expected a JSON object with a "
                                 f"string 'text' field")
            texts.append(obj["text"])
    return texts


def _hub_texts(card_name: str, source: DataFile) -> list[str]:
    """``source`` read through ``datasets`` (offline cache or hub) or the one clear error."""
    try:
        import datasets

        if source.dataset == "allenai/c4":
            ds = datasets.load_dataset(source.dataset, data_files={source.split: source.path},
                                       split=source.split)
        else:
            ds = datasets.load_dataset(source.dataset, source.name, split=source.split)
        return [str(t) for t in ds["text"]]
    except Exception as err:  # no cache, no hub, no datasets: one clear message
        raise FileNotFoundError(missing_message(card_name, source)
                                + f" [datasets could not load it: {type(err).__name__}]"
                                ) from None


def source_texts(card_name: str, source: DataFile, data=None) -> tuple[list[str], str]:
    """The rows of ``source`` and where they were read from (a path or ``"datasets:..."``)."""
    path = locate(card_name, source, data)
    if path is None:
        return _hub_texts(card_name, source), f"datasets:{source.dataset}/{source.path}"
    return read_texts(path, source.format), str(path)


def encode(tokenizer, text: str, add_special_tokens: bool) -> list[int]:
    """Token ids of ``text`` (special tokens as the card says)."""
    from workbench.core.data import check_tokenizer

    check_tokenizer(tokenizer)
    ids = tokenizer.encode(text, add_special_tokens=add_special_tokens)
    return [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]


# ----------------------------------------------------------------------------- fingerprints
@dataclass(frozen=True)
class Fingerprint:
    """SHA-256 of token ids (int64, row-major) and their count."""

    sha256: str
    n_tokens: int

    def __str__(self) -> str:
        return f"sha256:{self.sha256}:{self.n_tokens}"


def fingerprint(tokens: torch.Tensor) -> Fingerprint:
    """Fingerprint of a token tensor: SHA-256 of its int64 values in row-major order."""
    t = torch.as_tensor(tokens).detach().to("cpu", torch.int64).contiguous()
    return Fingerprint(hashlib.sha256(t.numpy().tobytes()).hexdigest(), int(t.numel()))


# ----------------------------------------------------------------------------- windows
@dataclass(frozen=True)
class CardWindows:
    """Token windows of one card use and where they came from.

    Attributes:
        tokens: ``LongTensor[n_windows, seq_len]``.
        card: Card name.
        seq_len: Window length.
        n_available: Windows the card defines at this ``seq_len``.
        source: File (or ``datasets:...``) the text was read from.
        fingerprint: Of ``tokens``.
        stream_tokens: Tokens of the whole stream before cutting.
        level: ``"token"``.
        seed: Subset seed for ``subset="seeded"`` cards with fewer windows, else ``None``.
    """

    tokens: torch.Tensor
    card: str
    seq_len: int
    n_available: int
    source: str
    fingerprint: Fingerprint
    stream_tokens: int
    level: str = "token"
    seed: int | None = None

    def record(self, prefix: str = "eval") -> dict:
        """The protocol columns of a row (``{prefix}_card``, ``{prefix}_fingerprint``, ...)."""
        return {f"{prefix}_card": self.card, f"{prefix}_fingerprint": str(self.fingerprint),
                f"{prefix}_seq_len": self.seq_len, f"{prefix}_n_windows": int(self.tokens.shape[0]),
                f"{prefix}_n_available": self.n_available, f"{prefix}_source": self.source,
                f"{prefix}_ppl_level": self.level}


def _check_seq_len(seq_len) -> int:
    if seq_len is None:
        raise ValueError("seq_len must be given explicitly (e.g. 2048 or 4096 as in the "
                         "papers); the model's maximum is never used by default")
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise ValueError(f"seq_len must be an integer >= 2, got {seq_len!r}")
    return seq_len


def stream_windows(stream: Sequence[int], seq_len: int) -> torch.Tensor:
    """``numel // seq_len`` non-overlapping windows of a token stream, remainder dropped."""
    n = len(stream) // seq_len
    return torch.tensor(list(stream[: n * seq_len]), dtype=torch.long).view(n, seq_len)


def perplexity_windows(
    card: str | PerplexityCard,
    tokenizer,
    seq_len: int,
    *,
    data: str | os.PathLike | None = None,
    n_windows: int | None = None,
    seed: int = 0,
) -> CardWindows:
    """The token windows a perplexity card evaluates.

    Args:
        card: Card name (:data:`PERPLEXITY_CARDS`) or card.
        tokenizer: Anything with ``encode(text, add_special_tokens=...)``.
        seq_len: Window length (required; never the model's maximum by default).
        data: File or folder holding the card's file (ignored by ``wiki-excerpt``).
        n_windows: Evaluate fewer windows than the card defines (a cut, recorded in the
            fingerprint): the first ones, or a seeded subset for ``subset="seeded"``.
        seed: Seed of that subset.

    Raises:
        ValueError: Unknown card, ``seq_len`` missing or < 2, text shorter than one
            window, ``n_windows`` outside ``[1, available]``.
        FileNotFoundError: The card's file is not found (named, with where to put it).
    """
    c = perplexity_card(card)
    seq_len = _check_seq_len(seq_len)
    if n_windows is not None:
        check_range("n_windows", n_windows, 1, integer=True)
    if c.source is None:
        from workbench.core.data import load_corpus

        texts, where = load_corpus("wiki-excerpt").validation, "wiki-excerpt:validation"
    else:
        texts, where = source_texts(c.name, c.source, data)
    if c.n_documents is not None:
        texts = texts[: c.n_documents]
    stream = encode(tokenizer, c.joiner.join(texts), c.add_special_tokens)
    if c.max_windows is not None:
        stream = stream[: c.max_windows * seq_len]
    windows = stream_windows(stream, seq_len)
    available = int(windows.shape[0])
    if available == 0:
        raise ValueError(f"card {c.name!r}: {where} gives {len(stream)} tokens, fewer than "
                         f"one window of seq_len={seq_len}")
    used_seed = None
    if n_windows is not None and n_windows != available:
        if n_windows > available:
            raise ValueError(f"n_windows must be in [1, {available}] (windows of card "
                             f"{c.name!r} at seq_len={seq_len}), got {n_windows}")
        if c.subset == "seeded":
            import numpy as np

            keep = np.sort(np.random.default_rng(seed).choice(available, n_windows,
                                                              replace=False))
            windows, used_seed = windows[torch.from_numpy(keep)], seed
        else:
            windows = windows[:n_windows]
    return CardWindows(tokens=windows, card=c.name, seq_len=seq_len, n_available=available,
                       source=where, fingerprint=fingerprint(windows),
                       stream_tokens=len(stream), level=c.level, seed=used_seed)


def python_random_windows(encoded_docs: Sequence[Sequence[int]] | None, seq_len: int,
                          n_windows: int, seed: int, *, encode_doc=None,
                          n_docs: int | None = None) -> torch.Tensor:
    """Wanda's ``get_c4`` draw with Python's ``random`` (documents tokenized lazily).

    ``random.seed(seed)``; per window: ``i = random.randint(0, n_docs - 1)`` until document
    ``i`` has more than ``seq_len`` tokens, then ``start = random.randint(0, len - seq_len
    - 1)``; the window is ``[start, start + seq_len)``. Documents are tokenized on demand
    by ``encode_doc(i)`` (each at most once), since a C4 shard has 356k of them.
    """
    if encode_doc is None:
        docs = [list(d) for d in encoded_docs]
        n_docs = len(docs)
        encode_doc = docs.__getitem__
    cache: dict[int, list[int]] = {}
    rnd = random.Random()  # Python's Mersenne Twister, the generator random.seed seeds
    rnd.seed(seed)
    windows = []
    while len(windows) < n_windows:
        while True:
            i = rnd.randint(0, n_docs - 1)
            if i not in cache:
                cache[i] = list(encode_doc(i))
            if len(cache[i]) > seq_len:
                break
            if len(cache) == n_docs and not any(len(v) > seq_len for v in cache.values()):
                raise ValueError(f"no document has more than seq_len={seq_len} tokens "
                                 f"(longest: {max(map(len, cache.values()))})")
        doc = cache[i]
        start = rnd.randint(0, len(doc) - seq_len - 1)
        windows.append(doc[start : start + seq_len])
    return torch.tensor(windows, dtype=torch.long)


def calibration_windows(
    card: str | CalibrationCard,
    tokenizer,
    seq_len: int,
    *,
    n_windows: int | None = None,
    seed: int | None = None,
    data: str | os.PathLike | None = None,
) -> CardWindows:
    """Calibration windows of a calibration card.

    Args:
        card: Card name (:data:`CALIBRATION_CARDS`) or card.
        tokenizer: Anything with ``encode``.
        seq_len: Window length (required).
        n_windows: Windows (default the card's: 128 for ``c4``).
        seed: Seed (default the card's, 0).
        data: File or folder holding the card's file.

    Returns:
        :class:`CardWindows` (``n_available`` is the number of documents).

    Raises:
        ValueError: Unknown card, bad sizes, no long-enough document.
        FileNotFoundError: The card's file is not found.
    """
    c = calibration_card(card)
    seq_len = _check_seq_len(seq_len)
    n_windows = c.n_windows if n_windows is None else n_windows
    check_range("n_windows", n_windows, 1, integer=True)
    seed = c.default_seed if seed is None else seed
    check_range("seed", seed, 0, integer=True)
    if c.source is None:
        from workbench.core.data import calibration_windows as corpus_windows, load_corpus

        docs, where = load_corpus("wiki-excerpt").train, "wiki-excerpt:train"
        tokens = corpus_windows(tokenizer, docs, seq_len, n_windows, seed=seed)
    else:
        docs, where = source_texts(c.name, c.source, data)
        if not docs:
            raise ValueError(f"card {c.name!r}: {where} holds no documents")
        tokens = python_random_windows(
            None, seq_len, n_windows, seed, n_docs=len(docs),
            encode_doc=lambda i: encode(tokenizer, docs[i], c.add_special_tokens))
    return CardWindows(tokens=tokens, card=c.name, seq_len=seq_len, n_available=len(docs),
                       source=where, fingerprint=fingerprint(tokens), stream_tokens=0,
                       level="calibration", seed=seed)


# ----------------------------------------------------------------------------- rows
#: Row columns whose values must agree for rows to be compared.
PROTOCOL_KEY = "eval_fingerprint"


def check_same_protocol(rows, *, column: str = PROTOCOL_KEY,
                        allow_mixed: bool = False) -> None:
    """Refuse to compare rows evaluated on different tokens.

    Args:
        rows: A DataFrame or a list of dicts with a fingerprint column.
        column: The fingerprint column (``eval_fingerprint``).
        allow_mixed: Allow different fingerprints (the caller asked for it).

    Raises:
        ValueError: More than one distinct fingerprint (lists them with their cards).
    """
    if allow_mixed:
        return
    records = rows.to_dict("records") if hasattr(rows, "to_dict") else list(rows)
    seen: dict[str, set] = {}
    for r in records:
        fp = r.get(column)
        if fp is None or (isinstance(fp, float) and fp != fp):
            continue
        card_col = column.replace("fingerprint", "card")
        seen.setdefault(str(fp), set()).add(str(r.get(card_col)))
    if len(seen) > 1:
        listed = "; ".join(f"{fp[:23]}... ({', '.join(sorted(c))})" for fp, c in seen.items())
        raise ValueError(f"rows were evaluated on different tokens ({len(seen)} distinct "
                         f"{column} values: {listed}); their numbers are not comparable. "
                         "Compare rows of one protocol, or pass allow_mixed_protocols=True")


def card_dict(card) -> dict:
    """A card as a plain dict (for manifests)."""
    return asdict(card)


__all__ = ["PerplexityCard", "CalibrationCard", "DataFile", "PERPLEXITY_CARDS",
           "CALIBRATION_CARDS", "perplexity_card", "calibration_card", "perplexity_windows",
           "calibration_windows", "python_random_windows", "stream_windows", "fingerprint",
           "Fingerprint", "CardWindows", "check_same_protocol", "locate", "read_texts",
           "card_names", "missing_message"]
