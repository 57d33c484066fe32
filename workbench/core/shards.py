"""Token shards on disk: a corpus tokenized once into memory-mapped files, read as windows.

Layout of a shard folder (what :func:`prepare_shards` writes, ``workbench data prepare``)::

    DIR/manifest.json   what is in the folder (below)
    DIR/train.bin       token ids of the training documents, one flat array
    DIR/val.bin         ... of the validation documents
    DIR/test.bin        ... of the test documents

Each ``.bin`` is a raw little-endian array (no header), read with ``np.memmap``:
``uint16`` when the tokenizer's ids all fit (``vocab <= 65536``), else ``uint32``. Every
document is followed by the tokenizer's EOS id (nanoGPT's ``prepare.py`` appends
``eot_token`` after each document the same way), so windows that cross a document
boundary see the separator the model sees in training. The file names and the uint16
layout are nanoGPT's (``train.bin`` / ``val.bin``), so a workbench folder with a
vocabulary under 65536 is also a nanoGPT data folder, and a nanoGPT folder is accepted
as it is (:func:`open_shards` with ``tokenizer_name=``, or :func:`adopt_nanogpt`, which
adds a ``manifest.json`` and touches nothing else).

``manifest.json`` holds: ``format``/``format_version``; the ``workbench_version`` (and
numpy/tokenizers versions) that wrote it; ``dtype``; the ``tokenizer`` (the name the user
gave, its class, vocabulary size, EOS token and id, ``files``: the SHA-256 of each of its
files found on disk, and ``sha256``: the SHA-256 of its canonical serialization, which is
what :meth:`ShardSet.check_tokenizer` compares, so the same tokenizer loaded from two
folders whose ``tokenizer_config.json`` differ only in unrelated fields still matches);
per split the file, token and document counts and the file's SHA-256; the ``source``
(spec, kind, files with their SHA-256, and one checksum of the whole source); the split
``seed`` and fractions; timing (seconds, tokens/s).

Splits are by document with the rule of :func:`workbench.core.data.split_documents`: the
``n`` documents are permuted with ``np.random.default_rng(seed)``, the first ``n_train``
of the permutation go to train, the next ``n_val`` to validation, the rest to test, with
``n_val = max(1, round(n * f_val))`` (same for test). For the default fractions
(0.8, 0.1, 0.1) a split therefore holds exactly the documents ``load_corpus(name,
seed=seed)`` puts in it. Choice: within a split the documents keep the source's order
(a streamed source cannot be reordered without holding it); random windows make the order
irrelevant to training.

Streaming: the source is read twice, once to count its documents (and hash it) and once
to tokenize ``batch_documents`` documents at a time, appending each batch to the split
files. Memory is one document batch plus one byte per document (the split label), never
the corpus. The folder is written atomically: everything goes to a temporary folder next
to ``out_dir``, renamed at the end; an error or Ctrl-C leaves nothing behind.

Reading: :func:`open_shards` checks the manifest and every file's size before anything
else (a truncated file is named), and returns a :class:`ShardSet`.
:meth:`ShardSet.sampler` gives a :class:`WindowSampler`: random windows of one split with
replacement, exactly nanoGPT's ``get_batch`` (``train.py``: ``ix = torch.randint(len(data)
- block_size, ...)``, a fresh ``np.memmap`` per batch to avoid its memory growth), except
that a window is ``seq_len`` tokens with the shift inside the model's loss, so starts are
drawn in ``[0, n_tokens - seq_len]``. :meth:`ShardSet.fixed_windows` gives the validation
windows: a seeded subset of the non-overlapping ``seq_len`` blocks (the subset rule of
:func:`workbench.core.data.token_blocks`), with their offsets for the run's manifest.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from workbench.core import data, io
from workbench.core.checks import check_range, renamed_keywords
from workbench.core.data import KNOWN_CORPORA, check_tokenizer
from workbench.core.shard_layout import MANIFEST, SPLIT_FILES, SPLITS, is_shard_folder

FORMAT = "workbench-shards"
FORMAT_VERSION = 1
_SPLIT_ALIASES = {"val": "validation", "valid": "validation"}
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
SOURCE_SUFFIXES = (".txt", ".jsonl", ".parquet")
#: Files of a Hugging Face tokenizer whose SHA-256 goes into the manifest.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "vocab.txt",
                   "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")
#: Seed of the validation / super-weight windows the lottery cell draws from a shard
#: folder (fixed across runs, so runs paired by seed are evaluated on the same tokens).
VALIDATION_SEED = 0
_UINT16_VOCAB = 1 << 16
_PREPARE_HINT = "workbench data prepare SOURCE --tokenizer MODEL --out {dir}"


def _accepted_sources() -> str:
    return (f"a built-in corpus ({', '.join(KNOWN_CORPORA)}), a .txt/.jsonl/.parquet file, "
            "a folder of such files, a list of strings, or a Hugging Face dataset name "
            "'owner/name' (needs the 'datasets' package and the dataset in the local cache)")


# ----------------------------------------------------------------------------- tokenizers
@renamed_keywords(spec="model_name")
def load_tokenizer(model_name: str | os.PathLike):
    """The tokenizer of a model, without loading the model's weights.

    Args:
        model_name: A model name or path as for :func:`workbench.core.models.load_model`:
            ``smollm2-135m``, ``random-smollm2-135m``, ``tiny-llama``, ``tiny-gpt2``, a local
            model or tokenizer directory, a ``.gguf`` file, or a hub id ``owner/name`` in
            the local Hugging Face cache.

    Returns:
        The same tokenizer object ``load_model(model_name)`` returns as its second value.

    Raises:
        ValueError: Unknown name (lists the known ones), hub id not in the cache.
        FileNotFoundError: A path that does not exist, or a folder without tokenizer files.
    """
    from workbench.core import models, paths
    from workbench.core.tokenizers import ByteTokenizer

    name = models.check_model_name(model_name)
    path = Path(name).expanduser()
    if name in ("tiny-llama", "tiny-gpt2"):
        return ByteTokenizer()
    if name == "random-smollm2-135m":
        return models.smollm2_tokenizer_or_bytes()
    from transformers import AutoTokenizer

    if name == models.DEFAULT_MODEL:
        cache = paths.MODELS_DIR / models.DEFAULT_MODEL
        if (cache / "tokenizer.json").is_file():
            return AutoTokenizer.from_pretrained(cache)
        gguf = models.gguf_path()
        return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if path.is_dir():
        if not any((path / f).is_file() for f in TOKENIZER_FILES):
            raise FileNotFoundError(f"tokenizer: {path} is a folder without tokenizer files "
                                    f"(none of {', '.join(TOKENIZER_FILES[:3])}, ...)")
        return AutoTokenizer.from_pretrained(path)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ValueError(f"tokenizer: {path} is a file but not a .gguf file; pass a .gguf "
                             "file or a model/tokenizer directory")
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    if models.looks_like_path(name):
        raise FileNotFoundError(f"tokenizer: path {name!r} does not exist (relative to "
                                f"{Path.cwd()}); known names: {', '.join(models.KNOWN_MODELS)}")
    if models.HUB_ID.fullmatch(name):
        allow_hub = os.environ.get("WORKBENCH_HUB") == "1"
        try:
            return AutoTokenizer.from_pretrained(name, local_files_only=not allow_hub)
        except OSError as err:
            raise ValueError(
                f"tokenizer: {name!r} looks like a Hugging Face hub id but is not in the "
                f"local cache (hub downloads only with WORKBENCH_HUB=1); known names: "
                f"{', '.join(models.KNOWN_MODELS)}") from err
    raise ValueError(f"tokenizer: unknown model {name!r}; known names: "
                     f"{', '.join(models.KNOWN_MODELS)}, a local model directory, a .gguf "
                     "file or a hub id 'owner/name' in the local cache")


def _sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _tokenizer_dir(tokenizer) -> Path | None:
    """The folder holding ``tokenizer``'s files, when it can be found on disk."""
    name = getattr(tokenizer, "name_or_path", None)
    if not name:
        return None
    path = Path(str(name)).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(name), local_files_only=True))
    except Exception:  # not a cached hub repo: no files to hash
        return None


def vocab_size(tokenizer) -> int:
    """Number of distinct token ids: ``max(len(tokenizer), tokenizer.vocab_size)``."""
    sizes = [getattr(tokenizer, "vocab_size", None)]
    try:
        sizes.append(len(tokenizer))
    except TypeError:
        pass
    sizes = [int(s) for s in sizes if isinstance(s, (int, np.integer))]
    if not sizes:
        raise TypeError(f"tokenizer: {type(tokenizer).__name__} has neither vocab_size nor "
                        "len(); cannot choose the shard dtype")
    return max(sizes)


def _eos_id(tokenizer) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, (list, tuple)) and eos:
        eos = eos[0]
    if isinstance(eos, bool) or not isinstance(eos, (int, np.integer)):
        raise ValueError(f"tokenizer: {type(tokenizer).__name__} "
                         f"{getattr(tokenizer, 'name_or_path', '')!r} has no EOS token id "
                         "(eos_token_id); documents are separated by EOS")
    return int(eos)


def tokenizer_identity(tokenizer, name: str | None = None) -> dict[str, Any]:
    """What the manifest records of a tokenizer (see the module docstring).

    ``sha256`` is the SHA-256 of the tokenizer's canonical serialization: for a fast
    Hugging Face tokenizer ``backend_tokenizer.to_str()`` (normalizer, pre-tokenizer,
    vocabulary, merges, added tokens); for another object with ``get_vocab()`` the sorted
    vocabulary; otherwise the class, vocabulary size and special ids (e.g.
    :class:`~workbench.core.tokenizers.ByteTokenizer`, which has no files). The EOS id is
    always part of it. ``files`` maps each tokenizer file found on disk to its SHA-256.
    """
    check_tokenizer(tokenizer)
    eos = _eos_id(tokenizer)
    cls = type(tokenizer)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and callable(getattr(backend, "to_str", None)):
        canon = {"kind": "tokenizers", "serialized": backend.to_str()}
    elif callable(getattr(tokenizer, "get_vocab", None)):
        canon = {"kind": "vocab", "class": cls.__name__,
                 "vocab": sorted(tokenizer.get_vocab().items())}
    else:
        specials = {k: getattr(tokenizer, k) for k in sorted(dir(tokenizer))
                    if k.endswith("_token_id") and isinstance(getattr(tokenizer, k), int)}
        canon = {"kind": "object", "class": f"{cls.__module__}.{cls.__qualname__}",
                 "vocab_size": vocab_size(tokenizer), "special_ids": specials}
    canon["eos_token_id"] = eos
    digest = hashlib.sha256(json.dumps(canon, sort_keys=True).encode("utf-8")).hexdigest()
    folder = _tokenizer_dir(tokenizer)
    files = ({f: _sha256_file(folder / f) for f in TOKENIZER_FILES if (folder / f).is_file()}
             if folder is not None else {})
    path_name = str(getattr(tokenizer, "name_or_path", "") or "")
    return dict(name=name or path_name or cls.__name__, name_or_path=path_name,
                cls=cls.__name__, vocab_size=vocab_size(tokenizer), eos_token_id=eos,
                eos_token=getattr(tokenizer, "eos_token", None), sha256=digest, files=files)


def _encode_batch(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, no special tokens (the batched call of a HF tokenizer)."""
    try:
        from transformers import PreTrainedTokenizerBase
    except ImportError:  # pragma: no cover
        PreTrainedTokenizerBase = ()  # noqa: N806
    if isinstance(tokenizer, PreTrainedTokenizerBase):
        # verbose=False: no "longer than the maximum sequence length" warning, which is
        # about feeding one sequence to the model, not about storing documents.
        return tokenizer(texts, add_special_tokens=False, return_attention_mask=False,
                         return_token_type_ids=False, verbose=False)["input_ids"]
    out = []
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        out.append(ids.tolist() if hasattr(ids, "tolist") else list(ids))
    return out


# ----------------------------------------------------------------------------- sources
@dataclass
class _Source:
    """A corpus read document by document; ``documents()`` can be called again."""

    spec: str
    kind: str  # builtin | documents | file | folder | huggingface
    files: list[Path] = field(default_factory=list)
    docs: Sequence[str] | None = None
    text_field: str = "text"
    hf: Any = None
    root: Path | None = None

    def documents(self) -> Iterator[str]:
        """Every non-blank document, in source order."""
        if self.docs is not None:
            for doc in self.docs:
                if doc.strip():
                    yield doc
            return
        if self.kind == "huggingface":
            for batch in self.hf.iter(batch_size=1000):
                for doc in batch[self.text_field]:
                    if doc is not None and str(doc).strip():
                        yield str(doc)
            return
        for path in self.files:
            reader = {".txt": _txt_documents, ".jsonl": _jsonl_documents,
                      ".parquet": _parquet_documents}[path.suffix.lower()]
            for doc in reader(path, self.text_field):
                if doc.strip():
                    yield doc

    def describe(self, documents_sha256: str) -> dict[str, Any]:
        """Spec, kind and (for files) each file's size and SHA-256, plus one checksum
        (``documents_sha256``, the hash of the documents read, where there are no files)."""
        out: dict[str, Any] = dict(spec=self.spec, kind=self.kind)
        if self.files:
            rows = []
            for path in self.files:
                rel = path.relative_to(self.root).as_posix() if self.root else str(path)
                rows.append(dict(path=rel, bytes=path.stat().st_size,
                                 sha256=_sha256_file(path)))
            out["files"] = rows
            if len(rows) == 1:
                out["sha256"] = rows[0]["sha256"]
            else:  # the SHA-256 of `sha256sum`'s listing of the files (relative paths)
                listing = "".join(f"{r['sha256']}  {r['path']}\n" for r in rows)
                out["sha256"] = hashlib.sha256(listing.encode("utf-8")).hexdigest()
            out["checksum_of"] = "files"
            if any(p.suffix.lower() != ".txt" for p in self.files):
                out["text_field"] = self.text_field
        else:
            out["sha256"] = documents_sha256
            out["checksum_of"] = "documents (UTF-8, each followed by a NUL byte)"
            if self.kind == "huggingface":
                out["text_field"] = self.text_field
                out["fingerprint"] = getattr(self.hf, "_fingerprint", None)
        return out


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as fh:
        for i, raw in enumerate(fh, start=1):
            yield i, raw


def _decode(path: Path, line_no: int, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"source: {path} is not UTF-8 text: byte 0x{raw[err.start]:02x} on "
                         f"line {line_no} cannot be decoded; re-save the file as UTF-8"
                         ) from None


def _txt_documents(path: Path, _field: str) -> Iterator[str]:
    """Documents separated by blank lines (as :func:`workbench.core.data.load_corpus`)."""
    lines: list[str] = []
    for i, raw in _lines(path):
        line = _decode(path, i, raw)
        if line.strip():
            lines.append(line[:-1] if line.endswith("\n") else line)
        elif lines:
            yield "\n".join(lines).strip()
            lines = []
    if lines:
        yield "\n".join(lines).strip()


def _jsonl_documents(path: Path, text_field: str) -> Iterator[str]:
    """One JSON object per line, the document in ``text_field``."""
    for i, raw in _lines(path):
        if not raw.strip():
            continue
        where = f"{path}, line {i}"
        try:
            obj = json.loads(_decode(path, i, raw))
        except json.JSONDecodeError as err:
            raise ValueError(f"source: {where}: not valid JSON ({err.msg} at column "
                             f"{err.colno})") from None
        if not isinstance(obj, dict) or text_field not in obj:
            fields = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
            raise ValueError(f"source: {where}: expected a JSON object with a "
                             f"{text_field!r} field, got {fields}")
        if not isinstance(obj[text_field], str):
            raise ValueError(f"source: {where}: {text_field!r} must be a string, got "
                             f"{type(obj[text_field]).__name__}")
        yield obj[text_field]


def _parquet_documents(path: Path, text_field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    if text_field not in names:
        raise ValueError(f"source: {path} has no column {text_field!r} (columns: {names}); "
                         "pass text_field=")
    for batch in pf.iter_batches(columns=[text_field], batch_size=1024):
        for doc in batch.column(0).to_pylist():
            if doc is not None:
                yield str(doc)


def _hf_dataset(name: str, config: str | None, split: str):
    try:
        import datasets
    except ImportError as err:
        raise ValueError(f"source: {name!r} reads as a Hugging Face dataset name, but the "
                         "'datasets' package is not installed; accepted: "
                         f"{_accepted_sources()}") from err
    try:
        return datasets.load_dataset(name, config, split=split)
    except Exception as err:  # ConnectionError, FileNotFoundError, DatasetNotFoundError ...
        raise ValueError(
            f"source: Hugging Face dataset {name!r} (config {config!r}, split {split!r}) could "
            f"not be loaded: not in the local cache (hub downloads only with WORKBENCH_HUB=1) "
            f"or no such dataset ({type(err).__name__}: {' '.join(str(err).split())[:200]})"
        ) from err


def _resolve_source(source, text_field: str, hf_config: str | None, hf_split: str) -> _Source:
    if isinstance(source, (list, tuple)):
        for i, doc in enumerate(source):
            if not isinstance(doc, str):
                raise TypeError(f"source[{i}] must be a string (a document), got "
                                f"{type(doc).__name__}")
        return _Source(spec=f"<{len(source)} documents>", kind="documents", docs=source)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a corpus name, a path or a list of documents, got "
                        f"{type(source).__name__}; accepted: {_accepted_sources()}")
    spec = os.fspath(source)
    path = Path(spec).expanduser()
    if spec == "wiki-excerpt":
        return _Source(spec=spec, kind="builtin", docs=data.wiki_documents())
    if spec == "lee":
        return _Source(spec=spec, kind="builtin", docs=data.lee_documents())
    if path.suffix.lower() in SOURCE_SUFFIXES:
        if not path.is_file():
            raise FileNotFoundError(f"source: file {path} does not exist")
        return _Source(spec=spec, kind="file", files=[path], text_field=text_field,
                       root=path.parent)
    if path.is_dir():
        if is_shard_folder(path):
            raise ValueError(f"source: {path} is already a token shard folder; open it with "
                             "open_shards()")
        files = sorted(p for p in path.rglob("*")
                       if p.is_file() and p.suffix.lower() in SOURCE_SUFFIXES)
        if not files:
            raise ValueError(f"source: folder {path} holds no {'/'.join(SOURCE_SUFFIXES)} "
                             f"files; accepted: {_accepted_sources()}")
        return _Source(spec=spec, kind="folder", files=files, text_field=text_field,
                       root=path)
    if path.exists():
        raise ValueError(f"source: {path} is a file of an unsupported type "
                         f"({path.suffix or 'no suffix'}); accepted: {_accepted_sources()}")
    from workbench.core import models

    if models.HUB_ID.fullmatch(spec) and not models.looks_like_path(spec):
        ds = _hf_dataset(spec, hf_config, hf_split)
        if text_field not in ds.column_names:
            raise ValueError(f"source: dataset {spec!r} has no column {text_field!r} "
                             f"(columns: {ds.column_names}); pass text_field=")
        return _Source(spec=spec, kind="huggingface", hf=ds, text_field=text_field)
    if models.looks_like_path(spec):
        raise FileNotFoundError(f"source: path {spec!r} does not exist (relative to "
                                f"{Path.cwd()}); accepted: {_accepted_sources()}")
    raise ValueError(f"source: unknown corpus {spec!r}; accepted: {_accepted_sources()}")


# ----------------------------------------------------------------------------- splits
def _check_fractions(splits) -> tuple[float, float, float]:
    if (isinstance(splits, (str, bytes)) or not isinstance(splits, Sequence)
            or len(splits) != 3):
        raise ValueError(f"splits must be 3 fractions (train, validation, test), got "
                         f"{splits!r}")
    out = tuple(check_range(f"splits[{i}]", f, 0.0, 1.0) for i, f in enumerate(splits))
    if out[0] <= 0 or abs(sum(out) - 1.0) > 1e-9:
        raise ValueError(f"splits must sum to 1 with a positive train fraction, got {splits!r}")
    return tuple(float(f) for f in out)


def split_labels(n: int, fractions=DEFAULT_FRACTIONS, seed: int = 0) -> np.ndarray:
    """Split of each of ``n`` documents (0 train, 1 validation, 2 test), by the rule of
    :func:`workbench.core.data.split_documents` (see the module docstring).

    Returns:
        ``uint8[n]``.

    Raises:
        ValueError: Too few documents for the splits asked for.
    """
    f_train, f_val, f_test = _check_fractions(fractions)
    n_val = max(1, round(n * f_val)) if f_val > 0 else 0
    n_test = max(1, round(n * f_test)) if f_test > 0 else 0
    n_train = n - n_val - n_test
    if n_train < 1:
        raise ValueError(f"source: a corpus needs at least {n_val + n_test + 1} documents for "
                         f"splits {fractions}, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    labels = np.zeros(n, dtype=np.uint8)
    labels[order[n_train : n_train + n_val]] = 1
    labels[order[n_train + n_val :]] = 2
    return labels


# ----------------------------------------------------------------------------- writing
def _progress(progress: bool, **kw):
    from tqdm.auto import tqdm

    return tqdm(disable=not progress, dynamic_ncols=True, **kw)


def prepare_shards(
    source,
    tokenizer,
    out_dir: str | os.PathLike,
    *,
    splits: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    batch_documents: int = 512,
    text_field: str = "text",
    tokenizer_name: str | None = None,
    hf_config: str | None = None,
    hf_split: str = "train",
    overwrite: bool = False,
    progress: bool = True,
) -> "ShardSet":
    """Tokenize a corpus into a shard folder (see the module docstring for the layout).

    Args:
        source: A built-in corpus name (``wiki-excerpt``, ``lee``), a ``.txt`` (documents
            separated by blank lines), ``.jsonl`` (one object per line, the document in
            ``text_field``) or ``.parquet`` (column ``text_field``) file, a folder of such
            files (recursively, sorted by path), a list of strings, or a Hugging Face
            dataset name ``owner/name`` (``hf_config``, split ``hf_split``; needs
            ``datasets`` and a local cache). Blank documents are dropped.
        tokenizer: A tokenizer object, or a model name resolved by :func:`load_tokenizer`.
        out_dir: The folder to create (must not exist unless ``overwrite``).
        splits: Fractions of documents in train / validation / test.
        seed: Seed of the document split.
        batch_documents: Documents tokenized and written at a time (bounds memory).
        text_field: Field / column of the text in JSONL, parquet and datasets.
        tokenizer_name: Name recorded in the manifest (default: the spec, or the
            tokenizer's ``name_or_path``).
        hf_config, hf_split: Config and split of a Hugging Face dataset source.
        overwrite: Replace an existing ``out_dir``.
        progress: A tqdm bar with tokens/s.

    Returns:
        The :class:`ShardSet` of the new folder.

    Raises:
        FileExistsError: ``out_dir`` exists and ``overwrite`` is false.
        ValueError: Unknown source (lists what is accepted), bad ``splits``, too few
            documents, a tokenizer without EOS, a malformed source line (file and line
            named), the source changing between the two passes.
        FileNotFoundError: A source path that does not exist.
    """
    check_range("seed", seed, 0, integer=True)
    check_range("batch_documents", batch_documents, 1, integer=True)
    fractions = _check_fractions(splits)
    if not isinstance(text_field, str) or not text_field:
        raise TypeError(f"text_field must be a non-empty string, got {text_field!r}")
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"out_dir must be a path, got {type(out_dir).__name__}")
    out = Path(out_dir).expanduser()
    if out.exists() and not overwrite:
        raise FileExistsError(f"out_dir: {out} already exists; pick a new folder or pass "
                              "overwrite=True (--overwrite)")
    src = _resolve_source(source, text_field, hf_config, hf_split)
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer_name = tokenizer_name or os.fspath(tokenizer)
        tokenizer = load_tokenizer(tokenizer)
    ident = tokenizer_identity(tokenizer, tokenizer_name)
    eos = ident["eos_token_id"]
    dtype = np.dtype(np.uint16 if ident["vocab_size"] <= _UINT16_VOCAB else np.uint32)

    t0 = time.perf_counter()
    n_docs = 0
    doc_hash = hashlib.sha256()
    with _progress(progress, desc=f"counting documents of {src.spec}", unit="doc") as bar:
        for doc in src.documents():
            n_docs += 1
            if not src.files:
                doc_hash.update(doc.encode("utf-8"))
                doc_hash.update(b"\x00")
            bar.update(1)
    labels = split_labels(n_docs, fractions, seed)
    source_record = src.describe(doc_hash.hexdigest())

    with io.atomic_path(out) as staged:
        staged.mkdir()
        handles = [open(staged / SPLIT_FILES[s], "wb") for s in SPLITS]
        hashers = [hashlib.sha256() for _ in SPLITS]
        tokens = [0, 0, 0]
        documents = [0, 0, 0]
        limit = np.iinfo(dtype).max
        done = 0
        try:
            with _progress(progress, desc=f"tokenizing {src.spec}", unit="tok",
                           unit_scale=True) as bar:
                docs = src.documents()
                while batch := list(itertools.islice(docs, batch_documents)):
                    if done + len(batch) > n_docs:
                        raise ValueError(f"source: {src.spec} changed while it was read "
                                         f"(more than the {n_docs} documents counted)")
                    ids = _encode_batch(tokenizer, batch)
                    lab = labels[done : done + len(batch)]
                    for k in range(3):
                        parts = [x for i, d in enumerate(ids) if lab[i] == k
                                 for x in (d, (eos,))]
                        if not parts:
                            continue
                        count = sum(len(p) for p in parts)
                        arr = np.fromiter(itertools.chain.from_iterable(parts),
                                          dtype=np.int64, count=count)
                        if arr.min() < 0 or arr.max() > limit:
                            raise ValueError(f"tokenizer: id {int(arr.max())} does not fit "
                                             f"{dtype.name} (vocabulary {ident['vocab_size']})")
                        arr = arr.astype(dtype)
                        handles[k].write(arr.tobytes())
                        hashers[k].update(arr.data)
                        tokens[k] += count
                        documents[k] += len(parts) // 2
                    done += len(batch)
                    bar.update(sum(len(d) + 1 for d in ids))
                    bar.set_postfix_str(f"{done}/{n_docs} docs", refresh=False)
            if done != n_docs:
                raise ValueError(f"source: {src.spec} changed while it was read ({done} "
                                 f"documents, {n_docs} counted)")
            for fh in handles:
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            for fh in handles:
                fh.close()
        seconds = time.perf_counter() - t0
        manifest = _manifest(ident, dtype, source_record, fractions, seed, tokens, documents,
                             [h.hexdigest() for h in hashers], seconds)
        io.write_json(staged / MANIFEST, manifest)
    return open_shards(out)


def _versions() -> dict[str, Any]:
    from workbench.core.version import __version__

    out = dict(workbench_version=__version__, numpy=np.__version__)
    for mod in ("tokenizers", "transformers"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:  # pragma: no cover
            pass
    return out


def _manifest(ident, dtype, source, fractions, seed, tokens, documents, hashes,
              seconds) -> dict[str, Any]:
    import datetime as _dt

    total = sum(tokens)
    return dict(
        format=FORMAT, format_version=FORMAT_VERSION, **_versions(),
        created_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        dtype=dtype.name, tokenizer=ident,
        separator=dict(token=ident["eos_token"], id=ident["eos_token_id"],
                       placement="after every document"),
        split_rule=dict(seed=seed, fractions=list(fractions),
                        rule="workbench.core.data.split_documents (by document); source "
                             "order within a split"),
        splits={s: dict(file=SPLIT_FILES[s], tokens=int(tokens[k]),
                        documents=int(documents[k]), sha256=hashes[k])
                for k, s in enumerate(SPLITS)},
        source=source,
        timing=dict(seconds=round(seconds, 3),
                    tokens_per_second=round(total / seconds, 1) if seconds > 0 else None),
    )


# ----------------------------------------------------------------------------- reading
def shard_folder(spec: Any) -> Path | None:
    """The folder a ``corpus:`` value names when it means a shard folder, else ``None``.

    A corpus spec means a shard folder when it is not a built-in corpus name nor a
    ``.txt``/``.jsonl``/``.parquet`` file and either names an existing folder or reads as
    a path (starts with ``.``, ``/`` or ``~``, or has two or more ``/``; the rule of
    :func:`workbench.core.models.load_model`). Relative paths are read against the
    project root (:func:`workbench.core.paths.resolve`), as notebook path parameters are,
    then against the working directory.
    """
    from workbench.core import models, paths

    if not isinstance(spec, (str, os.PathLike)):
        return None
    text = os.fspath(spec)
    if not isinstance(text, str) or not text.strip() or text in KNOWN_CORPORA:
        return None
    if Path(text).suffix.lower() in SOURCE_SUFFIXES:
        return None
    for cand in (paths.resolve(text), Path(text).expanduser()):
        if cand.is_dir():
            return cand
    if models.looks_like_path(text):
        return paths.resolve(text)
    return None


def _canonical_split(split: Any, available: Sequence[str]) -> str:
    name = _SPLIT_ALIASES.get(split, split) if isinstance(split, str) else split
    if name not in available:
        raise ValueError(f"split must be one of {tuple(available)}, got {split!r}")
    return name


@dataclass
class WindowSampler:
    """Random windows of one split of a shard folder, with replacement (nanoGPT's
    ``get_batch``); the split is never loaded whole.

    Attributes:
        file: The split's ``.bin`` file.
        dtype: Its dtype (``uint16`` or ``uint32``).
        n_tokens: Tokens in the split.
        seq_len: Tokens per window.
        split: Split name.
        folder: The shard folder.
        eval_windows: What the lottery cell drew as fixed windows next to this sampler
            (offsets, seed, seq_len per use), for the run's manifest; see :meth:`record`.

    Besides :meth:`sample`, the sampler reads as the split cut into non-overlapping
    ``seq_len`` blocks (like :func:`workbench.core.data.token_blocks` of its tokens):
    ``shape`` is ``(n_tokens // seq_len, seq_len)``, ``sampler[:n]`` the first ``n`` blocks.
    """

    file: Path
    dtype: np.dtype
    n_tokens: int
    seq_len: int
    split: str = "train"
    folder: Path | None = None
    manifest_sha256: str | None = None
    eval_windows: dict = field(default_factory=dict)

    def _data(self) -> np.ndarray:
        # A fresh memmap per call, as nanoGPT's get_batch does (a long-lived one keeps
        # every page it has touched resident).
        return np.memmap(self.file, dtype=self.dtype, mode="r", shape=(self.n_tokens,))

    def starts(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """The window starts :meth:`sample` draws: ``torch.randint(0, n_tokens - seq_len +
        1, (batch_size,), generator=generator)`` (``LongTensor[batch_size]``)."""
        check_range("batch_size", batch_size, 1, integer=True)
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator (on the CPU), got "
                            f"{type(generator).__name__}")
        return torch.randint(0, self.n_tokens - self.seq_len + 1, (batch_size,),
                             generator=generator)

    def windows(self, offsets) -> torch.Tensor:
        """The windows starting at ``offsets``: ``LongTensor[len(offsets), seq_len]``."""
        offs = [int(o) for o in (offsets.tolist() if hasattr(offsets, "tolist") else offsets)]
        bad = [o for o in offs if o < 0 or o + self.seq_len > self.n_tokens]
        if bad:
            raise ValueError(f"offsets must be in [0, {self.n_tokens - self.seq_len}] for "
                             f"seq_len={self.seq_len} in split {self.split!r}, got {bad[:3]}")
        data = self._data()
        out = np.empty((len(offs), self.seq_len), dtype=np.int64)
        for i, o in enumerate(offs):
            out[i] = data[o : o + self.seq_len]
        return torch.from_numpy(out)

    def sample(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """``batch_size`` random windows: ``LongTensor[batch_size, seq_len]`` on the CPU,
        starts from :meth:`starts` (so the draw advances ``generator`` exactly as
        ``torch.randint`` does)."""
        return self.windows(self.starts(batch_size, generator))

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_tokens // seq_len, seq_len)``: the split as non-overlapping blocks."""
        return (self.n_tokens // self.seq_len, self.seq_len)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> torch.Tensor:
        """Non-overlapping block(s) ``index`` (an int or a slice): ``LongTensor``."""
        n = len(self)
        if isinstance(index, slice):
            rows = range(*index.indices(n))
            return self.windows([r * self.seq_len for r in rows])
        if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
            i = int(index) + n if index < 0 else int(index)
            if not 0 <= i < n:
                raise IndexError(f"block {index} out of range for {n} blocks")
            return self.windows([i * self.seq_len])[0]
        raise TypeError(f"index must be an int or a slice, got {type(index).__name__}")

    def record(self) -> dict[str, Any]:
        """JSON-able description for a run's manifest (folder, manifest hash, split,
        seq_len, tokens, dtype, and :attr:`eval_windows`)."""
        return dict(shards=str(self.folder) if self.folder else None,
                    manifest_sha256=self.manifest_sha256, split=self.split,
                    seq_len=self.seq_len, n_tokens=self.n_tokens, dtype=self.dtype.name,
                    sampling="uniform random starts with replacement (nanoGPT get_batch)",
                    eval_windows=self.eval_windows)


@dataclass
class ShardSet:
    """An opened shard folder (from :func:`open_shards`).

    Attributes:
        path: The folder.
        manifest: The manifest (read, or inferred for a nanoGPT folder: ``inferred``
            true, no document counts, tokenizer known by name only).
        dtype: Token dtype.
        manifest_sha256: SHA-256 of ``manifest.json`` (``None`` when inferred).
    """

    path: Path
    manifest: dict
    dtype: np.dtype
    manifest_sha256: str | None = None

    @property
    def splits(self) -> tuple[str, ...]:
        """Names of the splits present (in the order train, validation, test)."""
        return tuple(s for s in SPLITS if s in self.manifest["splits"])

    def file(self, split: str) -> Path:
        """The ``.bin`` file of ``split``."""
        split = _canonical_split(split, self.splits)
        return self.path / self.manifest["splits"][split]["file"]

    def n_tokens(self, split: str) -> int:
        """Tokens in ``split``."""
        split = _canonical_split(split, self.splits)
        return int(self.manifest["splits"][split]["tokens"])

    def tokens(self, split: str) -> np.ndarray:
        """``split`` as a read-only ``np.memmap`` (an empty array for an empty split)."""
        n = self.n_tokens(split)
        if n == 0:
            return np.empty(0, dtype=self.dtype)
        return np.memmap(self.file(split), dtype=self.dtype, mode="r", shape=(n,))

    def _check_seq_len(self, split: str, seq_len: int) -> str:
        split = _canonical_split(split, self.splits)
        check_range("seq_len", seq_len, 2, integer=True)
        n = self.n_tokens(split)
        if seq_len > n:
            raise ValueError(f"seq_len={seq_len} is longer than split {split!r} of {self.path} "
                             f"({n} tokens); use a shorter seq_len or a larger corpus")
        return split

    def sampler(self, split: str, seq_len: int) -> WindowSampler:
        """A :class:`WindowSampler` of ``split`` with windows of ``seq_len`` tokens.

        Raises:
            ValueError: Unknown split, ``seq_len < 2``, or ``seq_len`` longer than the split.
        """
        split = self._check_seq_len(split, seq_len)
        return WindowSampler(file=self.file(split), dtype=self.dtype,
                             n_tokens=self.n_tokens(split), seq_len=seq_len, split=split,
                             folder=self.path, manifest_sha256=self.manifest_sha256)

    def fixed_windows(self, split: str, n: int, seq_len: int,
                      seed: int) -> tuple[torch.Tensor, list[int]]:
        """``n`` fixed windows for evaluation: a seeded subset of the split's
        non-overlapping ``seq_len`` blocks, in file order.

        The subset is ``np.sort(np.random.default_rng(seed).choice(available, n,
        replace=False))`` of the ``available = n_tokens // seq_len`` blocks (all of them
        when ``n == available``), the rule of :func:`workbench.core.data.token_blocks`;
        non-overlapping, so no token is scored twice.

        Returns:
            ``(LongTensor[n, seq_len], offsets)``, ``offsets`` the token offset of each
            window in the split's file (to record in the run's manifest).

        Raises:
            ValueError: ``seq_len`` longer than the split, ``n`` not in ``[1, available]``.
        """
        split = self._check_seq_len(split, seq_len)
        check_range("seed", seed, 0, integer=True)
        available = self.n_tokens(split) // seq_len
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= available:
            raise ValueError(f"n must be an integer in [1, {available}] (non-overlapping "
                             f"blocks of seq_len={seq_len} in split {split!r} of {self.path}), "
                             f"got {n!r}")
        if n == available:
            blocks = np.arange(available)
        else:
            blocks = np.sort(np.random.default_rng(seed).choice(available, size=n,
                                                                replace=False))
        offsets = [int(b) * seq_len for b in blocks]
        return self.sampler(split, seq_len).windows(offsets), offsets

    def check_tokenizer(self, tokenizer, name: str | None = None) -> None:
        """Raise unless ``tokenizer`` is the one the shards were made with (``name``: what
        to call it in the message, e.g. the model name).

        Compares :func:`tokenizer_identity`'s ``sha256``. For a nanoGPT folder opened with
        ``tokenizer_name`` (no hash recorded), the named tokenizer is loaded with
        :func:`load_tokenizer` and hashed.

        Raises:
            ValueError: The tokenizers differ (names, hashes, vocabularies and EOS ids of
                both in the message), or the named tokenizer cannot be loaded.
        """
        have = tokenizer_identity(tokenizer)
        if name:
            have["name"] = f"{name} ({have['name']})"
        want = dict(self.manifest["tokenizer"])
        if not want.get("sha256"):
            try:
                want = tokenizer_identity(load_tokenizer(want["name"]), want["name"])
            except (ValueError, OSError) as err:
                raise ValueError(
                    f"tokenizer: cannot check {have['name']!r} against the tokenizer named "
                    f"for {self.path} ({want['name']!r}), which does not load here: {err}"
                ) from err
        if have["sha256"] != want["sha256"]:
            raise ValueError(
                f"tokenizer: shard folder {self.path} was tokenized with {want['name']!r} "
                f"(sha256 {want['sha256'][:16]}, vocab {want.get('vocab_size')}, eos "
                f"{want.get('eos_token_id')}), but the model's tokenizer is {have['name']!r} "
                f"(sha256 {have['sha256'][:16]}, vocab {have['vocab_size']}, eos "
                f"{have['eos_token_id']}); prepare shards with the model's tokenizer: "
                + _PREPARE_HINT.format(dir="DIR"))

    def verify(self) -> None:
        """Recompute every split file's SHA-256 and compare with the manifest (reads every
        file once; :func:`open_shards` checks sizes only).

        Raises:
            ValueError: A file whose hash differs (named).
        """
        for split, info in self.manifest["splits"].items():
            if info.get("sha256") and _sha256_file(self.file(split)) != info["sha256"]:
                raise ValueError(f"{self.file(split)}: SHA-256 differs from {MANIFEST} "
                                 "(the file was changed after it was written)")

    def record(self) -> dict[str, Any]:
        """JSON-able summary for a run's manifest."""
        tok = self.manifest["tokenizer"]
        return dict(path=str(self.path), manifest_sha256=self.manifest_sha256,
                    dtype=self.dtype.name, tokenizer=tok.get("name"),
                    tokenizer_sha256=tok.get("sha256"),
                    tokens={s: self.n_tokens(s) for s in self.splits},
                    inferred=bool(self.manifest.get("inferred", False)))


def _nanogpt_manifest(path: Path, tokenizer_name: str) -> dict[str, Any]:
    """Manifest inferred from a nanoGPT folder: uint16 ``train.bin``/``val.bin`` (and
    ``test.bin`` if present), token counts from the file sizes."""
    splits = {}
    for split, fname in SPLIT_FILES.items():
        f = path / fname
        if not f.is_file():
            continue
        size = f.stat().st_size
        if size % 2:
            raise ValueError(f"{f}: {size} bytes is not a whole number of uint16 tokens "
                             "(truncated file?)")
        splits[split] = dict(file=fname, tokens=size // 2, documents=None, sha256=None)
    return dict(format=FORMAT, format_version=FORMAT_VERSION, inferred=True,
                origin="nanoGPT data folder (train.bin / val.bin, uint16)", dtype="uint16",
                tokenizer=dict(name=tokenizer_name, sha256=None), splits=splits,
                source=None, **_versions())


def open_shards(path: str | os.PathLike, *, tokenizer_name: str | None = None) -> ShardSet:
    """Open a shard folder, checking its manifest and file sizes.

    Args:
        path: A folder written by :func:`prepare_shards`, or a nanoGPT data folder
            (``train.bin``, ``val.bin``, uint16, no manifest).
        tokenizer_name: Required for a nanoGPT folder without a manifest: the model name of
            its tokenizer (nanoGPT's OpenWebText: GPT-2's, e.g. ``gpt2``). The manifest is
            then inferred in memory (nothing is written; :func:`adopt_nanogpt` writes it).
            With a manifest it must match the recorded name, if given.

    Returns:
        A :class:`ShardSet`.

    Raises:
        FileNotFoundError: ``path`` does not exist (the message gives the ``data prepare``
            command).
        ValueError: No manifest (and not a nanoGPT folder, or one without
            ``tokenizer_name``), a malformed manifest, a truncated split file (named: size
            not a multiple of the dtype, or fewer tokens than the manifest says).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a shard folder path, got {type(path).__name__}")
    folder = Path(path).expanduser()
    if not folder.exists():
        raise FileNotFoundError(f"shard folder {folder} does not exist; create it with: "
                                + _PREPARE_HINT.format(dir=folder))
    if not folder.is_dir():
        raise ValueError(f"shard folder {folder} is a file, not a folder")
    mpath = folder / MANIFEST
    if not mpath.is_file():
        nanogpt = (folder / "train.bin").is_file() and (folder / "val.bin").is_file()
        if nanogpt and tokenizer_name:
            manifest, digest = _nanogpt_manifest(folder, tokenizer_name), None
        elif nanogpt:
            raise ValueError(
                f"shard folder {folder} has no {MANIFEST}; it looks like a nanoGPT folder "
                "(train.bin, val.bin): name its tokenizer with open_shards(path, "
                f"tokenizer_name='gpt2'), or write a manifest once with `workbench data "
                f"adopt {folder} --tokenizer MODEL`")
        else:
            raise ValueError(f"{folder} is not a token shard folder: no {MANIFEST} in it; "
                             "create one with: " + _PREPARE_HINT.format(dir=folder))
    else:
        raw = mpath.read_bytes()
        try:
            manifest = json.loads(raw)
        except json.JSONDecodeError as err:
            raise ValueError(f"{mpath}: not valid JSON ({err.msg}, line {err.lineno})") from None
        digest = hashlib.sha256(raw).hexdigest()
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ValueError(f"{mpath}: not a workbench shard manifest (format "
                             f"{manifest.get('format') if isinstance(manifest, dict) else None!r}"
                             f", expected {FORMAT!r})")
        if manifest.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(f"{mpath}: format_version {manifest['format_version']} is newer "
                             f"than this workbench reads ({FORMAT_VERSION}); update workbench")
        for key in ("dtype", "tokenizer", "splits"):
            if key not in manifest:
                raise ValueError(f"{mpath}: no {key!r} field")
        if tokenizer_name and tokenizer_name != manifest["tokenizer"].get("name"):
            raise ValueError(f"tokenizer_name: {folder} was tokenized with "
                             f"{manifest['tokenizer'].get('name')!r}, not {tokenizer_name!r}")
    if manifest["dtype"] not in ("uint16", "uint32"):
        raise ValueError(f"{mpath}: dtype must be uint16 or uint32, got {manifest['dtype']!r}")
    dtype = np.dtype(manifest["dtype"])
    for split, info in manifest["splits"].items():
        f = folder / info["file"]
        if not f.is_file():
            raise ValueError(f"{f}: file of split {split!r} is missing from {folder}")
        size = f.stat().st_size
        if size % dtype.itemsize:
            raise ValueError(f"{f}: {size} bytes is not a whole number of {dtype.name} tokens "
                             f"({dtype.itemsize} bytes each); the file is truncated")
        if size // dtype.itemsize != int(info["tokens"]):
            raise ValueError(f"{f}: holds {size // dtype.itemsize} tokens but {MANIFEST} says "
                             f"{info['tokens']}; the file is truncated or was replaced")
    if "train" not in manifest["splits"]:
        raise ValueError(f"shard folder {folder} has no train split")
    return ShardSet(path=folder, manifest=manifest, dtype=dtype, manifest_sha256=digest)


def adopt_nanogpt(path: str | os.PathLike, tokenizer, *, tokenizer_name: str | None = None,
                  count_documents: bool = False) -> ShardSet:
    """Write a ``manifest.json`` into a nanoGPT folder (its ``.bin`` files stay as they are).

    The tokenizer is hashed like :func:`prepare_shards` does and must fit uint16. Choice:
    the files' SHA-256 is not computed (nanoGPT's OpenWebText ``train.bin`` is ~17 GB);
    :meth:`ShardSet.verify` then skips them. With ``count_documents`` the EOS ids of each
    file are counted (one pass over every file) to fill ``documents``.

    Args:
        path: The nanoGPT folder (``train.bin``, ``val.bin``).
        tokenizer: Tokenizer object or model name (:func:`load_tokenizer`).
        tokenizer_name: Name to record (default: the spec).
        count_documents: Count documents as EOS ids.

    Returns:
        The :class:`ShardSet`, now opened from its manifest.
    """
    folder = Path(path).expanduser()
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer_name = tokenizer_name or os.fspath(tokenizer)
        tokenizer = load_tokenizer(tokenizer)
    if (folder / MANIFEST).is_file():
        raise FileExistsError(f"{folder / MANIFEST} already exists")
    ident = tokenizer_identity(tokenizer, tokenizer_name)
    if ident["vocab_size"] > _UINT16_VOCAB:
        raise ValueError(f"tokenizer: {ident['name']!r} has {ident['vocab_size']} ids, more "
                         "than a uint16 nanoGPT folder can hold")
    shards = open_shards(folder, tokenizer_name=ident["name"])
    manifest = dict(shards.manifest, tokenizer=ident, inferred=False,
                    separator=dict(token=ident["eos_token"], id=ident["eos_token_id"],
                                   placement="as nanoGPT's prepare.py wrote it"))
    if count_documents:
        for split in manifest["splits"]:
            data = shards.tokens(split)
            step = 1 << 26
            manifest["splits"][split]["documents"] = int(sum(
                int(np.count_nonzero(data[i : i + step] == ident["eos_token_id"]))
                for i in range(0, len(data), step)))
    io.write_json(folder / MANIFEST, manifest)
    return open_shards(folder)


def describe(shards: ShardSet) -> str:
    """A few lines for humans: folder, tokenizer, dtype, tokens and documents per split."""
    m = shards.manifest
    tok = m["tokenizer"]
    lines = [f"{shards.path}: {m['dtype']}, tokenizer {tok.get('name')!r} "
             f"(sha256 {str(tok.get('sha256'))[:16]}, vocab {tok.get('vocab_size')}, eos "
             f"{tok.get('eos_token_id')})"]
    for split in shards.splits:
        info = m["splits"][split]
        docs = info.get("documents")
        lines.append(f"  {split:<10} {info['tokens']:>14,} tokens  "
                     f"{'?' if docs is None else f'{docs:,}':>10} documents  {info['file']}")
    timing = m.get("timing")
    if timing:
        lines.append(f"  prepared in {timing['seconds']:.1f} s "
                     f"({timing['tokens_per_second']:,.0f} tokens/s)")
    return "\n".join(lines)
