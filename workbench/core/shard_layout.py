"""The file names of a token shard folder, and how a folder is recognised as one.

A shard folder (:mod:`workbench.core.shards`, ``workbench data prepare``) holds
``manifest.json`` (:data:`MANIFEST`) and one raw token file per split
(:data:`SPLIT_FILES`: nanoGPT's ``train.bin`` / ``val.bin``, and ``test.bin``). A nanoGPT
data folder (``train.bin`` and ``val.bin``, no manifest) counts as one too.

This is the part of the shard format that :mod:`workbench.core.data` needs (it refuses a
shard folder as a text corpus) while :mod:`workbench.core.shards` needs the corpora of
:mod:`workbench.core.data`: both import it, so neither imports the other both ways.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The folder's description (format, tokenizer, splits, source; see :mod:`workbench.core.shards`).
MANIFEST = "manifest.json"
#: Splits of a shard folder, in file order.
SPLITS = ("train", "validation", "test")
#: File of each split (nanoGPT's names for train and validation).
SPLIT_FILES = {"train": "train.bin", "validation": "val.bin", "test": "test.bin"}


def is_shard_folder(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder with a ``manifest.json`` or nanoGPT's ``train.bin``
    and ``val.bin``."""
    p = Path(path).expanduser()
    return p.is_dir() and ((p / MANIFEST).is_file()
                           or ((p / SPLIT_FILES["train"]).is_file()
                               and (p / SPLIT_FILES["validation"]).is_file()))
