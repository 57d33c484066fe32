"""Zero-shot accuracy through lm-evaluation-harness, from local task files only.

:func:`evaluate_zeroshot` wraps the in-memory model (pruned or not) in lm-eval's
Hugging Face wrapper (``lm_eval.models.huggingface.HFLM(pretrained=<model>)``) and runs
one lm-eval task read from a local YAML file (``lm_eval.evaluator.evaluate`` on a
``ConfigurableTask``; no task index, no hub). Any lm-eval task YAML works if its data
are local files: ``dataset_path`` must be a local dataset builder (``json``, ``csv``,
``parquet``, ``text``, ``arrow``) with ``dataset_kwargs.data_files``, or a local folder.
Relative ``data_files`` are resolved against the YAML's folder (lm-eval itself resolves
them against the working directory). ``HF_DATASETS_OFFLINE=1`` is set on import.

The project ships one offline task, ``wiki_lastword`` (``data/tasks/wiki_lastword.yaml``
and its JSONL), built deterministically by :func:`build_lastword_task` from held-out text
of the default corpus: LAMBADA-style last-word prediction (Paperno et al. 2016,
"The LAMBADA dataset: Word prediction requiring a broad discourse context"). A request is
``(context, " " + word)``; accuracy is lm-eval's ``acc`` of a ``loglikelihood`` task:
the share of examples whose target tokens are all the model's greedy (argmax) choices,
given the context and the earlier target tokens.

The workbench's byte-level tokenizer of the tiny test models is turned into an
equivalent ``PreTrainedTokenizerFast`` (:func:`hf_tokenizer`), so tests run the same
harness path as the real model.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from workbench.core import io, paths
from workbench.core.checks import check_range

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

#: Folder of the shipped tasks (``<name>.yaml`` + data).
TASKS_DIR = paths.ROOT / "data" / "tasks"
#: The shipped offline task.
DEFAULT_TASK = "wiki_lastword"
#: ``dataset_path`` values that read local files (``datasets`` packaged builders).
LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow")


# ----------------------------------------------------------------------------- tokenizers
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (the ByteLevel alphabet)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def byte_tokenizer_fast():
    """A ``PreTrainedTokenizerFast`` with the same ids as the workbench's byte tokenizer.

    Ids 0-255 are the UTF-8 bytes, 256-259 are ``<bos>``, ``<eos>``, ``<pad>``,
    ``<unk>`` (:class:`workbench.core.tokenizers.ByteTokenizer`); ``encode`` adds no special
    tokens. Built offline with ``tokenizers`` (byte-level BPE without merges).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from workbench.core.tokenizers import ByteTokenizer

    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
    specials = {"<bos>": ByteTokenizer.bos_token_id, "<eos>": ByteTokenizer.eos_token_id,
                "<pad>": ByteTokenizer.pad_token_id, "<unk>": 259}
    vocab.update(specials)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")


def hf_tokenizer(tokenizer):
    """``tokenizer`` as a Hugging Face tokenizer (the byte tokenizer is converted).

    Raises:
        TypeError: Neither a ``transformers`` tokenizer nor the workbench byte tokenizer.
    """
    from transformers import PreTrainedTokenizerBase

    from workbench.core.tokenizers import ByteTokenizer

    if isinstance(tokenizer, PreTrainedTokenizerBase):
        return tokenizer
    if isinstance(tokenizer, ByteTokenizer):
        return byte_tokenizer_fast()
    raise TypeError(f"tokenizer must be a transformers tokenizer or the workbench byte "
                    f"tokenizer (the second value of load_model), got {type(tokenizer).__name__}")


# ----------------------------------------------------------------------------- task files
def task_path(task: str | os.PathLike) -> Path:
    """The YAML file of ``task``: a shipped task name (``data/tasks/<name>.yaml``) or a path.

    Raises:
        TypeError: ``task`` not a string or path.
        FileNotFoundError: The file does not exist (the message names the path).
    """
    if not isinstance(task, (str, os.PathLike)):
        raise TypeError(f"task must be a shipped task name or a path to an lm-eval task "
                        f"YAML, got {type(task).__name__} {task!r}")
    text = os.fspath(task)
    path = Path(text).expanduser()
    if path.suffix.lower() not in (".yaml", ".yml") and not path.is_file():
        shipped = sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))
        path = TASKS_DIR / f"{text}.yaml"
        if not path.is_file():
            raise FileNotFoundError(f"task: lm-eval task file {path} does not exist; shipped "
                                    f"tasks: {shipped}, or pass a path to a task YAML")
    if not path.is_file():
        raise FileNotFoundError(f"task: lm-eval task file {path} does not exist (relative "
                                f"paths are relative to {Path.cwd()})")
    return path


def _yaml(path: Path) -> dict:
    try:
        from lm_eval.tasks._yaml_loader import load_yaml
    except ImportError:  # pragma: no cover - older lm-eval
        import yaml

        return yaml.safe_load(path.read_text(encoding="utf-8"))
    return load_yaml(path, resolve_func=True, recursive=True)


def load_task_config(task: str | os.PathLike) -> dict:
    """Read an lm-eval task YAML and make its data files absolute and checked.

    Args:
        task: Shipped task name or path to the YAML.

    Returns:
        The task config (a dict lm-eval's ``ConfigurableTask`` takes), with every
        ``dataset_kwargs.data_files`` entry an absolute path that exists.

    Raises:
        FileNotFoundError: The YAML or one of its data files is missing (named).
        ValueError: The task reads from the hub (``dataset_path`` neither a local builder
            nor a local folder), has no ``task`` name, or is a group of tasks.
    """
    path = task_path(task)
    cfg = dict(_yaml(path))
    if "task" not in cfg or not isinstance(cfg["task"], str):
        raise ValueError(f"task: {path} is not a single lm-eval task (no 'task: <name>' "
                         "entry); groups are not supported, pass one task YAML")
    source = cfg.get("dataset_path")
    kwargs = dict(cfg.get("dataset_kwargs") or {})
    if source in LOCAL_BUILDERS:
        files = kwargs.get("data_files")
        if not files:
            raise ValueError(f"task: {path} uses dataset_path={source!r} without "
                             "dataset_kwargs.data_files; name the local data files")

        def fix(f):
            p = Path(f).expanduser()
            p = p if p.is_absolute() else (path.parent / p)
            if not p.is_file():
                raise FileNotFoundError(f"task: data file {p} of task {path} does not exist"
                                        + (" (build it with workbench.core.zeroshot."
                                           "build_lastword_task)" if p.parent == TASKS_DIR
                                           else ""))
            return str(p.resolve())

        if isinstance(files, Mapping):
            files = {k: ([fix(f) for f in v] if isinstance(v, (list, tuple)) else fix(v))
                     for k, v in files.items()}
        elif isinstance(files, (list, tuple)):
            files = [fix(f) for f in files]
        else:
            files = fix(files)
        kwargs["data_files"] = files
        cfg["dataset_kwargs"] = kwargs
    elif source is not None and (path.parent / source).is_dir():
        cfg["dataset_path"] = str((path.parent / source).resolve())
    elif source is not None and Path(source).expanduser().is_dir():
        cfg["dataset_path"] = str(Path(source).expanduser().resolve())
    else:
        raise ValueError(f"task: {path} reads dataset_path={source!r}, which is not local; "
                         f"tasks are read from local files only: use dataset_path one of "
                         f"{list(LOCAL_BUILDERS)} with dataset_kwargs.data_files, or a local "
                         "folder")
    return cfg


# ----------------------------------------------------------------------------- evaluation
@dataclass
class ZeroShotResult:
    """Result of :func:`evaluate_zeroshot`.

    Attributes:
        task: The lm-eval task name.
        accuracy: ``acc`` (fraction in [0, 1]; NaN when the task has no ``acc`` metric).
        stderr: lm-eval's standard error of ``acc``.
        n: Number of examples evaluated.
        seconds: Wall time of the evaluation.
        metrics: Every metric lm-eval reported (``{"acc": .., "acc_stderr": .., ...}``).
        path: The task YAML.
        samples: Per-example records (``doc``, ``acc``, loglikelihood) when asked.
    """

    task: str
    accuracy: float
    stderr: float
    n: int
    seconds: float
    metrics: dict = field(default_factory=dict)
    path: str = ""
    samples: list | None = None


def _quiet_lm_eval():
    for name in ("lm-eval", "lm_eval", "lm_eval.models.huggingface", "lm_eval.evaluator"):
        logging.getLogger(name).setLevel(logging.ERROR)


def evaluate_zeroshot(
    model: nn.Module,
    tokenizer,
    task: str | os.PathLike = DEFAULT_TASK,
    *,
    limit: int | None = None,
    batch_size: int = 8,
    samples: bool = False,
) -> ZeroShotResult:
    """Zero-shot accuracy of the in-memory ``model`` on one local lm-eval task.

    Args:
        model: A Hugging Face causal LM (``PreTrainedModel``), e.g. after pruning.
        tokenizer: Its tokenizer (a ``transformers`` tokenizer or the byte tokenizer of
            the tiny models).
        task: Shipped task name (default ``"wiki_lastword"``) or path to an lm-eval task
            YAML with local data files.
        limit: Evaluate only the first ``limit`` examples (lm-eval's ``limit``).
        batch_size: Requests per forward.
        samples: Keep per-example records in the result.

    Returns:
        A :class:`ZeroShotResult`.

    Raises:
        FileNotFoundError: Missing task YAML or data file (the message names the path).
        ValueError: A non-local task, or bad ``limit`` / ``batch_size``.
    """
    if not isinstance(model, nn.Module) or not hasattr(model, "config"):
        raise TypeError(f"model must be a Hugging Face causal LM (with .config), got "
                        f"{type(model).__name__}")
    if limit is not None:
        check_range("limit", limit, 1, integer=True)
    check_range("batch_size", batch_size, 1, integer=True)
    cfg = load_task_config(task)
    hf_tok = hf_tokenizer(tokenizer)
    _quiet_lm_eval()
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM

    was_training = model.training
    t0 = time.perf_counter()
    try:
        lm = HFLM(pretrained=model, tokenizer=hf_tok, batch_size=batch_size)
        name = cfg["task"]
        out = evaluate(lm, {name: ConfigurableTask(config=cfg)}, limit=limit,
                       log_samples=samples, verbosity="ERROR")
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - t0
    raw = out["results"][name]
    metrics = {k.split(",")[0]: float(v) for k, v in raw.items()
               if "," in k and isinstance(v, (int, float))}
    n = int(out.get("n-samples", {}).get(name, {}).get("effective", 0)) or int(
        raw.get("sample_len", 0))
    return ZeroShotResult(task=name, accuracy=metrics.get("acc", float("nan")),
                          stderr=metrics.get("acc_stderr", float("nan")), n=n,
                          seconds=seconds, metrics=metrics, path=str(task_path(task)),
                          samples=out["samples"][name] if samples else None)


# ----------------------------------------------------------------------------- the task
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_TARGET = re.compile(r"^([A-Za-z][a-z]{2,})[.!?]$")


def lastword_examples(documents, *, max_context_words: int = 40,
                      min_context_words: int = 12) -> list[dict]:
    """Candidate last-word examples from documents, in document order.

    A candidate is a sentence whose last word (before the final ``.``/``!``/``?``) is
    alphabetic, lower-case after the first letter, at least 3 letters long and occurs
    (case-insensitively, as a whole word) earlier in the context, LAMBADA's defining
    property: the word is predictable from the discourse, not from the sentence alone.
    The context is the paragraph's text before the target word, cut on the left to at
    most ``max_context_words`` words (at a word boundary).

    Returns:
        ``[{"context": str, "target": str, "doc": int, "paragraph": int}, ...]``; the
        request is ``(context, " " + target)``.
    """
    out = []
    for d, doc in enumerate(documents):
        for p, para in enumerate(doc.split("\n")):
            sentences = _SENTENCE_END.split(para.strip())
            done: list[str] = []
            for sent in sentences:
                words = sent.split(" ")
                m = _TARGET.match(words[-1]) if words else None
                if m and len(words) >= 2:
                    before = " ".join(done + [" ".join(words[:-1])]).split(" ")
                    context = " ".join(before[-max_context_words:])
                    target = m.group(1)
                    seen = re.search(rf"\b{re.escape(target)}\b", context, flags=re.I)
                    if seen and len(before) >= min_context_words:
                        out.append(dict(context=context, target=target, doc=d, paragraph=p))
                done.append(sent)
    return out


def build_lastword_task(
    corpus: str = "wiki-excerpt",
    *,
    split: str = "test",
    n_examples: int = 500,
    max_context_words: int = 40,
    seed: int = 0,
    name: str = DEFAULT_TASK,
    folder: str | os.PathLike | None = None,
) -> Path:
    """Build the LAMBADA-style last-word task from held-out text; write JSONL + YAML.

    Deterministic: the corpus split is fixed by ``load_corpus(corpus, seed=0)``; the
    candidates (:func:`lastword_examples`) of ``split`` are subsampled with ``seed`` to
    ``n_examples`` and kept in document order. The default uses the **test** split:
    calibration reads train and perplexity reads validation, so the task text is seen by
    neither.

    Args:
        corpus: Corpus spec for :func:`workbench.core.data.load_corpus`.
        split: Split whose documents are used.
        n_examples: Examples kept (all candidates when fewer).
        max_context_words: Words of context before the target.
        seed: Seed of the subsample.
        name: Task name (file stem and lm-eval ``task``).
        folder: Where to write (default ``data/tasks/``).

    Returns:
        Path of the YAML file (the JSONL sits beside it as ``<name>.jsonl``).
    """
    from workbench.core.data import load_corpus

    check_range("n_examples", n_examples, 1, integer=True)
    folder = Path(folder) if folder is not None else TASKS_DIR
    docs = load_corpus(corpus, seed=0).split(split)
    cands = lastword_examples(docs, max_context_words=max_context_words)
    if not cands:
        raise ValueError(f"corpus {corpus!r} split {split!r} gives no last-word examples")
    if len(cands) > n_examples:
        keep = np.sort(np.random.default_rng(seed).choice(len(cands), n_examples,
                                                          replace=False))
        cands = [cands[i] for i in keep]
    lines = "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in cands)
    io.write_text(folder / f"{name}.jsonl", lines)
    yaml_text = (
        f"# Built by workbench.core.zeroshot.build_lastword_task(corpus={corpus!r}, "
        f"split={split!r},\n#   n_examples={n_examples}, max_context_words="
        f"{max_context_words}, seed={seed}): LAMBADA-style last-word\n"
        "# prediction on held-out text; acc = all target tokens are the greedy choice.\n"
        f"task: {name}\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    test: {name}.jsonl\n"
        "output_type: loglikelihood\n"
        "test_split: test\n"
        "doc_to_text: \"{{context}}\"\n"
        "doc_to_target: \"{{' ' + target}}\"\n"
        "metric_list:\n"
        "  - metric: acc\n"
        "    aggregation: mean\n"
        "    higher_is_better: true\n"
        "metadata:\n"
        "  version: 1.0\n"
    )
    return io.write_text(folder / f"{name}.yaml", yaml_text)


__all__ = ["evaluate_zeroshot", "ZeroShotResult", "load_task_config", "task_path",
           "build_lastword_task", "lastword_examples", "hf_tokenizer", "byte_tokenizer_fast",
           "DEFAULT_TASK", "TASKS_DIR"]
