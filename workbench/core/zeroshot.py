"""Zero-shot accuracy through lm-evaluation-harness, from local task files only.

:func:`evaluate_zeroshot` wraps the in-memory model (pruned or not) in lm-eval's
Hugging Face wrapper (``lm_eval.models.huggingface.HFLM(pretrained=<model>)``) and runs
one lm-eval task read from a local YAML file (``lm_eval.evaluator.evaluate`` on a
``ConfigurableTask``; no task index, no hub). Any lm-eval task YAML works if its data
are local files: ``dataset_path`` must be a local dataset builder (``json``, ``csv``,
``parquet``, ``text``, ``arrow``) with ``dataset_kwargs.data_files``, or a local folder.
Relative ``data_files`` are resolved against the YAML's folder (lm-eval itself resolves
them against the working directory). ``HF_DATASETS_OFFLINE``, ``HF_EVALUATE_OFFLINE``
and ``HF_HUB_OFFLINE`` are set to ``1`` on import (unless ``WORKBENCH_HUB=1``).

Task files are data here, not code: they are parsed with ``yaml.SafeLoader``, validated,
and ``!function`` references are imported only when the caller passes
``trust_task_code=True``; Jinja templates (``doc_to_text`` ...) are rendered in
``jinja2.sandbox.SandboxedEnvironment`` (lm-eval's own environment is not sandboxed), so
a template cannot reach ``__globals__`` and ``os.system``.

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
from torch import nn

from workbench.core import io, paths
from workbench.core.checks import check_range

if os.environ.get("WORKBENCH_HUB") != "1":
    for _var in ("HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE", "HF_HUB_OFFLINE"):
        os.environ.setdefault(_var, "1")

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


@dataclass(frozen=True)
class TaskCode:
    """A ``!function module.name`` reference read from a task file, **not** imported.

    Attributes:
        spec: The reference as written (``"helpers.fn"``).
        file: The task YAML that holds it.
    """

    spec: str
    file: Path

    def resolve(self):
        """Import the function (runs the module's code: only for trusted task files)."""
        from lm_eval.tasks._yaml_loader import _import_func_in_yml

        return _import_func_in_yml(self.spec, self.file.parent)


def _task_loader(path: Path):
    """A YAML loader that reads data only: ``!function`` becomes a :class:`TaskCode`, any
    other tag that builds a Python object (``!!python/...``) is refused by ``SafeLoader``."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def function(loader, node):
        return TaskCode(str(loader.construct_scalar(node)), path)

    Loader.add_constructor("!function", function)
    return Loader


def read_task_yaml(path: str | os.PathLike, *, _seen: frozenset = frozenset()) -> dict:
    """Parse an lm-eval task YAML as data (no code is imported), merging ``include``.

    Follows lm-eval's ``load_yaml`` (included files first, the file's own keys win) but
    with ``yaml.SafeLoader``: ``!function`` references stay :class:`TaskCode` objects
    until :func:`load_task_config` resolves them after validation (and only with
    ``trust_task_code=True``).

    Raises:
        ValueError: Not YAML, not a mapping, an include cycle, or a tag that builds a
            Python object (the message names the file and line).
        FileNotFoundError: An included file is missing.
    """
    import yaml

    path = Path(path).expanduser().resolve()
    if path in _seen:
        raise ValueError(f"task: include cycle at {path}")
    if not path.is_file():
        raise FileNotFoundError(f"task: lm-eval task file {path} does not exist")
    try:
        cfg = yaml.load(path.read_text(encoding="utf-8"), Loader=_task_loader(path))  # noqa: S506
    except yaml.constructor.ConstructorError as err:
        mark = err.problem_mark
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"task: {path}{where}: {err.problem}; task files are data: the only "
                         "code tag allowed is '!function' (with trust_task_code=True)") from None
    except yaml.YAMLError as err:
        raise ValueError(f"task: {path} is not valid YAML: {err}") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"task: {path} is not UTF-8 text ({err})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"task: {path} must hold a YAML mapping (task: ..., dataset_path: "
                         f"...), got {type(cfg).__name__}")
    if "include" not in cfg:
        return cfg
    includes = cfg.pop("include")
    merged: dict = {}
    for inc in includes if isinstance(includes, list) else [includes]:
        if not isinstance(inc, str):
            raise ValueError(f"task: {path}: include must be a file name or a list of them, "
                             f"got {inc!r}")
        inc_path = Path(inc) if Path(inc).is_absolute() else path.parent / inc
        sub = read_task_yaml(inc_path, _seen=_seen | {path})
        sub.pop("task_list", None)
        merged.update(sub)
    merged.update(cfg)
    return merged


def task_code_references(cfg: Any, where: str = "") -> list[tuple[str, TaskCode]]:
    """Every ``!function`` reference in a task config, as ``(key path, TaskCode)``."""
    if isinstance(cfg, TaskCode):
        return [(where or "<top>", cfg)]
    if isinstance(cfg, Mapping):
        return [ref for k, v in cfg.items()
                for ref in task_code_references(v, f"{where}.{k}" if where else str(k))]
    if isinstance(cfg, (list, tuple)):
        return [ref for i, v in enumerate(cfg) for ref in task_code_references(v, f"{where}[{i}]")]
    return []


def _resolve_task_code(cfg: Any) -> Any:
    if isinstance(cfg, TaskCode):
        return cfg.resolve()
    if isinstance(cfg, dict):
        return {k: _resolve_task_code(v) for k, v in cfg.items()}
    if isinstance(cfg, list):
        return [_resolve_task_code(v) for v in cfg]
    return cfg


#: lm-eval output types a task may declare.
OUTPUT_TYPES = ("loglikelihood", "loglikelihood_rolling", "multiple_choice", "generate_until")
#: Config keys that name a split.
SPLIT_KEYS = ("test_split", "validation_split", "training_split", "fewshot_split")
#: Config keys that are Jinja templates (rendered in a sandbox).
TEMPLATE_KEYS = ("doc_to_text", "doc_to_target", "doc_to_choice", "gen_prefix",
                 "description", "doc_to_decontamination_query")


def _registered(kind: str) -> list[str]:
    import lm_eval.api.metrics  # noqa: F401  (fills the registries)
    from lm_eval.api import registry

    table = registry.metric_registry if kind == "metric" else registry.aggregation_registry
    return sorted(table.keys())


def sandboxed_environment():
    """lm-eval's Jinja environment, rebuilt as ``jinja2.sandbox.SandboxedEnvironment``.

    Same options as ``lm_eval.utils.env`` (``StrictUndefined``, trailing newline kept,
    the ``regex_replace`` filter); the sandbox refuses attributes such as ``__globals__``
    or ``__class__`` (``jinja2.exceptions.SecurityError``), so a template cannot reach
    ``os.system``.
    """
    from jinja2 import BaseLoader, StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(loader=BaseLoader, undefined=StrictUndefined,
                               keep_trailing_newline=True)
    from lm_eval import utils as lm_utils

    env.filters["regex_replace"] = lm_utils.regex_replace
    return env


def sandbox_lm_eval_templates() -> None:
    """Make lm-eval render every template (``utils.apply_template``) in the sandbox."""
    from jinja2.sandbox import SandboxedEnvironment
    from lm_eval import utils as lm_utils

    if not isinstance(lm_utils.env, SandboxedEnvironment):
        lm_utils.env = sandboxed_environment()


def validate_task_config(cfg: dict, path: Path, *, trust_task_code: bool = False) -> None:
    """Check a parsed task config before any of its code or data is used.

    Raises:
        ValueError: Code references (``!function``, ``trust_remote_code``) without
            ``trust_task_code=True``; an unknown ``output_type``, metric or aggregation;
            a split that the data files do not provide; a template that does not parse.
    """
    from jinja2.exceptions import TemplateSyntaxError

    refs = task_code_references(cfg)
    if refs and not trust_task_code:
        listed = ", ".join(f"{k}: !function {r.spec}" for k, r in refs)
        raise ValueError(f"task: {path} runs Python code ({listed}); task files are data and "
                         "code in them is refused: pass trust_task_code=True only for a task "
                         "file you have read and trust, or use built-in metrics and Jinja "
                         "templates")
    kwargs = cfg.get("dataset_kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"task: {path}: dataset_kwargs must be a mapping, got {kwargs!r}")
    if kwargs.get("trust_remote_code") and not trust_task_code:
        raise ValueError(f"task: {path} sets dataset_kwargs.trust_remote_code (runs a dataset "
                         "script); refused unless trust_task_code=True")
    out = cfg.get("output_type", "generate_until")
    if out not in OUTPUT_TYPES:
        raise ValueError(f"task: {path}: output_type={out!r} is not one of {list(OUTPUT_TYPES)}")
    metrics = cfg.get("metric_list") or []
    if not isinstance(metrics, list):
        raise ValueError(f"task: {path}: metric_list must be a list of {{metric: name}}, got "
                         f"{metrics!r}")
    for i, entry in enumerate(metrics):
        if not isinstance(entry, Mapping) or "metric" not in entry:
            raise ValueError(f"task: {path}: metric_list[{i}] must be a mapping with a "
                             f"'metric' key, got {entry!r}")
        if entry.get("hf_evaluate"):
            raise ValueError(f"task: {path}: metric_list[{i}] asks for hf_evaluate (loads a "
                             "metric script from the hub); use one of lm-eval's built-in "
                             f"metrics {_registered('metric')}")
        name = entry["metric"]
        if not isinstance(name, TaskCode) and name not in _registered("metric"):
            raise ValueError(f"task: {path}: metric_list[{i}].metric={name!r} is not a built-in "
                             f"lm-eval metric (lm-eval would look for it in Hugging Face "
                             f"'evaluate', which needs the network); allowed: "
                             f"{_registered('metric')}")
        agg = entry.get("aggregation")
        if agg is not None and not isinstance(agg, TaskCode) and agg not in _registered("agg"):
            raise ValueError(f"task: {path}: metric_list[{i}].aggregation={agg!r} is not a "
                             f"built-in lm-eval aggregation; allowed: {_registered('agg')}")
    files = kwargs.get("data_files")
    if cfg.get("dataset_path") in LOCAL_BUILDERS and files is not None:
        provided = list(files) if isinstance(files, Mapping) else ["train"]
        for key in SPLIT_KEYS:
            split = cfg.get(key)
            if split is not None and split not in provided:
                raise ValueError(f"task: {path}: {key}={split!r} is not a split of its "
                                 f"dataset_kwargs.data_files; splits there: {provided}")
        if not any(cfg.get(k) is not None for k in ("test_split", "validation_split")):
            raise ValueError(f"task: {path} names no split to evaluate: set test_split or "
                             f"validation_split to one of {provided}")
    env = sandboxed_environment()
    for key in TEMPLATE_KEYS:
        value = cfg.get(key)
        if isinstance(value, str):
            try:
                env.parse(value)
            except TemplateSyntaxError as err:
                raise ValueError(f"task: {path}: {key} is not a valid Jinja template "
                                 f"({err.message}): {value!r}") from None


def _check_data_file(p: Path, path: Path) -> None:
    """A data file must hold something (an empty one gives n = 0)."""
    size = p.stat().st_size
    if size == 0 or (size <= 65536 and not p.read_bytes().strip()):
        raise ValueError(f"task: data file {p} of task {path} is empty; it must hold the "
                         "task's examples (one JSON object per line for dataset_path: json)")


def load_task_config(task: str | os.PathLike, *, trust_task_code: bool = False) -> dict:
    """Read an lm-eval task YAML **as data**, validate it, make its data files absolute.

    Task files are code in lm-eval (``!function`` imports a ``.py`` beside the YAML); here
    the YAML is parsed with ``yaml.SafeLoader`` (:func:`read_task_yaml`), validated
    (:func:`validate_task_config`: local data, splits, built-in metrics, templates) and
    only then, and only with ``trust_task_code=True``, are ``!function`` references
    imported. Templates are rendered later in a Jinja sandbox.

    Args:
        task: Shipped task name or path to the YAML.
        trust_task_code: Allow ``!function`` references (and ``trust_remote_code``) in the
            task file: they run Python code from the task's folder. Only for task files
            you have read.

    Returns:
        The task config (a dict lm-eval's ``ConfigurableTask`` takes), with every
        ``dataset_kwargs.data_files`` entry an absolute path that exists.

    Raises:
        TypeError: ``trust_task_code`` not a bool.
        FileNotFoundError: The YAML or one of its data files is missing (named).
        ValueError: The task reads from the hub (``dataset_path`` neither a local builder
            nor a local folder), has no ``task`` name, is a group of tasks, holds code
            without ``trust_task_code=True``, names a missing split, an unknown metric,
            or an empty data file.
    """
    if not isinstance(trust_task_code, bool):
        raise TypeError(f"trust_task_code must be True or False, got "
                        f"{type(trust_task_code).__name__} {trust_task_code!r}")
    path = task_path(task)
    cfg = dict(read_task_yaml(path))
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
            _check_data_file(p, path)
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
    validate_task_config(cfg, path, trust_task_code=trust_task_code)
    return _resolve_task_code(cfg) if trust_task_code else cfg


def build_task(cfg: dict, path: Path):
    """lm-eval's ``ConfigurableTask`` for ``cfg``, with its templates tried on one document.

    The dataset (local files) is read and the first evaluation document is rendered
    through every template (in the Jinja sandbox) before any model runs, so a template
    that reaches for ``__globals__`` or names a missing field, and a split with no
    examples, fail here with the task file named.

    Raises:
        ValueError: The split has no examples, or a template fails or is refused.
    """
    from jinja2.exceptions import SecurityError, TemplateError
    from lm_eval.api.task import ConfigurableTask

    sandbox_lm_eval_templates()
    try:
        task = ConfigurableTask(config=cfg)
    except SecurityError as err:
        attr = re.search(r"attribute '([^']+)'", str(err))
        keys = [k for k in TEMPLATE_KEYS if isinstance(cfg.get(k), str)
                and (attr is None or attr.group(1) in cfg[k])] or ["a template"]
        raise ValueError(f"task: {path}: {' / '.join(keys)} was refused by the Jinja sandbox "
                         f"({err}); templates may read the document's fields, not Python "
                         "attributes") from None
    except TemplateError as err:
        word = re.search(r"'([^']+)'", str(err))
        keys = [k for k in TEMPLATE_KEYS if isinstance(cfg.get(k), str)
                and (word is None or word.group(1) in cfg[k])] or ["a template"]
        raise ValueError(f"task: {path}: {' / '.join(keys)} cannot be rendered on the task's "
                         f"documents ({type(err).__name__}: {err}); templates may use the "
                         "fields of the data files") from None
    split = cfg.get("test_split") or cfg.get("validation_split")
    docs = task.eval_docs
    if len(docs) == 0:
        raise ValueError(f"task: {path}: split {split!r} has no examples (empty data)")
    doc = docs[0]
    steps = [("doc_to_text", task.doc_to_text), ("doc_to_target", task.doc_to_target)]
    if cfg.get("output_type") == "multiple_choice":
        steps.append(("doc_to_choice", task.doc_to_choice))
    for key, render in steps:
        try:
            render(doc)
        except SecurityError as err:
            raise ValueError(f"task: {path}: {key} was refused by the Jinja sandbox ({err}); "
                             "templates may read the document's fields "
                             f"{sorted(doc)}, not Python attributes") from None
        except (TemplateError, KeyError) as err:
            raise ValueError(f"task: {path}: {key} cannot be rendered on the first document "
                             f"of split {split!r} ({type(err).__name__}: {err}); the "
                             f"document's fields are {sorted(doc)}") from None
    return task


def check_computed_metrics(cfg: dict, metrics: Mapping[str, float], n: int, path: Path) -> None:
    """Every metric the task asks for was computed on at least one example.

    Raises:
        RuntimeError: ``n == 0`` or a requested metric is missing or NaN (never reported
            as a NaN accuracy).
    """
    for entry in cfg.get("metric_list") or []:
        name = entry["metric"]
        name = name if isinstance(name, str) else getattr(name, "__name__", str(name))
        value = metrics.get(name)
        if value is None or not np.isfinite(value):
            raise RuntimeError(f"task: {path}: metric {name!r} could not be computed (got "
                               f"{value}); metrics computed: {sorted(metrics)}")
    if n <= 0:
        raise RuntimeError(f"task: {path}: lm-eval evaluated no examples (n = 0); check the "
                           "split and limit")


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
    trust_task_code: bool = False,
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
        trust_task_code: Allow ``!function`` code in the task file (see
            :func:`load_task_config`); templates are sandboxed either way.

    Returns:
        A :class:`ZeroShotResult`.

    Raises:
        FileNotFoundError: Missing task YAML or data file (the message names the path).
        ValueError: A non-local task, code in the task file without
            ``trust_task_code=True``, a template refused by the sandbox, a split with no
            examples, a metric that could not be computed, or bad ``limit`` /
            ``batch_size``.
    """
    if not isinstance(model, nn.Module) or not hasattr(model, "config"):
        raise TypeError(f"model must be a Hugging Face causal LM (with .config), got "
                        f"{type(model).__name__}")
    if limit is not None:
        check_range("limit", limit, 1, integer=True)
    check_range("batch_size", batch_size, 1, integer=True)
    cfg = load_task_config(task, trust_task_code=trust_task_code)
    hf_tok = hf_tokenizer(tokenizer)
    _quiet_lm_eval()
    sandbox_lm_eval_templates()
    built = build_task(cfg, task_path(task))
    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM

    was_training = model.training
    t0 = time.perf_counter()
    try:
        lm = HFLM(pretrained=model, tokenizer=hf_tok, batch_size=batch_size)
        name = cfg["task"]
        out = evaluate(lm, {name: built}, limit=limit,
                       log_samples=samples, verbosity="ERROR")
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - t0
    raw = out["results"][name]
    metrics = {k.split(",")[0]: float(v) for k, v in raw.items()
               if "," in k and isinstance(v, (int, float))}
    n = int(out.get("n-samples", {}).get(name, {}).get("effective", 0)) or int(
        raw.get("sample_len", 0))
    check_computed_metrics(cfg, metrics, n, task_path(task))
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
           "read_task_yaml", "validate_task_config", "TaskCode", "build_task",
           "build_lastword_task", "lastword_examples", "hf_tokenizer", "byte_tokenizer_fast",
           "DEFAULT_TASK", "TASKS_DIR"]


# ----------------------------------------------------------------------------- 7-task card
@dataclass(frozen=True)
class StandardTask:
    """One task of the pruning papers' zero-shot set, as lm-eval defines it.

    Attributes:
        name: lm-eval task name.
        yaml: The task YAML inside the installed ``lm_eval/tasks`` folder.
        split: The split lm-eval evaluates (its ``test_split``, else ``validation_split``).
        dataset: Hub dataset id of lm-eval's ``dataset_path``.
        hub_file: The split's parquet file in that hub repository (the layout
            ``datasets`` converts hub datasets to; not checked against the hub here).
        columns: The columns lm-eval's definition reads (the schema of a local file).
    """

    name: str
    yaml: str
    split: str
    dataset: str
    hub_file: str
    columns: tuple[str, ...]


#: The 7-task set of the pruning papers (Wanda, SparseGPT, OWL), 0-shot.
STANDARD_TASKS = {t.name: t for t in (
    StandardTask("boolq", "super_glue/boolq/default.yaml", "validation", "aps/super_glue",
                 "boolq/validation-00000-of-00001.parquet", ("question", "passage", "label")),
    StandardTask("rte", "glue/rte/default.yaml", "validation", "nyu-mll/glue",
                 "rte/validation-00000-of-00001.parquet", ("sentence1", "sentence2", "label")),
    StandardTask("hellaswag", "hellaswag/hellaswag.yaml", "validation", "Rowan/hellaswag",
                 "data/validation-00000-of-00001.parquet",
                 ("activity_label", "ctx_a", "ctx_b", "endings", "label")),
    StandardTask("winogrande", "winogrande/default.yaml", "validation", "allenai/winogrande",
                 "winogrande_xl/validation-00000-of-00001.parquet",
                 ("sentence", "option1", "option2", "answer")),
    StandardTask("arc_easy", "arc/arc_easy.yaml", "test", "allenai/ai2_arc",
                 "ARC-Easy/test-00000-of-00001.parquet", ("question", "choices", "answerKey")),
    StandardTask("arc_challenge", "arc/arc_challenge.yaml", "test", "allenai/ai2_arc",
                 "ARC-Challenge/test-00000-of-00001.parquet",
                 ("question", "choices", "answerKey")),
    StandardTask("openbookqa", "openbookqa/openbookqa.yaml", "test", "allenai/openbookqa",
                 "main/test-00000-of-00001.parquet", ("question_stem", "choices", "answerKey")),
)}

#: Zero-shot cards: tasks, shots, and which metric each paper reports per task.
#: Wanda reports ``acc`` for every task (author's answer in locuslab/wanda issue #31:
#: "In the paper, we report the acc metric"; HellaSwag LLaMA-2-7B acc 57.17 vs acc_norm
#: 76.00). Which metric OWL reports was not verified: ``None``.
ZEROSHOT_CARDS = {
    "zeroshot-7": dict(
        tasks=tuple(STANDARD_TASKS), num_fewshot=0,
        reported_metric={"wanda": {t: "acc" for t in STANDARD_TASKS},
                         "owl": {t: None for t in STANDARD_TASKS}},
        reference="task list of eval_zero_shot in locuslab/wanda main.py; lm-eval's own "
                  "task YAMLs"),
}

_LOCAL_SUFFIXES = (".parquet", ".jsonl", ".json")


def _lm_eval_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def lm_eval_version() -> str | None:
    """The installed lm-eval version (``None`` when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm_eval")
    except PackageNotFoundError:
        return None


def standard_task_file(task: str, data: str | os.PathLike) -> Path:
    """The local data file of standard task ``task`` under the folder (or file) ``data``.

    Looked for, in order: ``data`` itself when it is a file; ``<data>/<dataset id>/<hub
    file>``, ``<data>/<hub file>``, ``<data>/<task>.parquet|.jsonl|.json``.

    Raises:
        ValueError: Unknown task (lists the 7).
        FileNotFoundError: No file (names the card, the task, the expected names).
    """
    if task not in STANDARD_TASKS:
        raise ValueError(f"task: {task!r} is not in the zero-shot card zeroshot-7; tasks: "
                         f"{', '.join(STANDARD_TASKS)}")
    t = STANDARD_TASKS[task]
    root = Path(data).expanduser()
    if root.is_file():
        return root
    candidates = [root / t.dataset / t.hub_file, root / t.hub_file] + [
        root / f"{task}{s}" for s in _LOCAL_SUFFIXES]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(
        f"card 'zeroshot-7', task {task!r}: no data file in {root}; put the {t.split} split "
        f"of hub dataset {t.dataset!r} at {root / t.dataset / t.hub_file} (or {root}/{task}"
        f".jsonl with the columns {list(t.columns)})")


def standard_task_config(task: str, data_file: str | os.PathLike) -> dict:
    """lm-eval's own definition of ``task`` with its data read from ``data_file``.

    The installed YAML (``lm_eval/tasks/<...>.yaml``, its ``include`` and ``!function``
    hooks resolved by lm-eval's own loader: it is lm-eval's code, not a user file) is kept
    as it is, except: ``dataset_path`` becomes the local builder of the file (``parquet``
    or ``json``) with the file as the split lm-eval evaluates, the other splits are
    dropped (0-shot reads no training docs), and ``acc_norm`` is added to
    ``metric_list`` where the definition lists only ``acc``, so both are always
    reported (for winogrande, whose choices share one continuation, they coincide).
    """
    from lm_eval.tasks._yaml_loader import load_yaml

    t = STANDARD_TASKS[task]
    cfg = dict(load_yaml(_lm_eval_tasks_dir() / t.yaml, resolve_func=True, recursive=True))
    path = Path(data_file).expanduser().resolve()
    builder = "parquet" if path.suffix == ".parquet" else "json"
    cfg.pop("tag", None)
    cfg.update(dataset_path=builder, dataset_name=None,
               dataset_kwargs={"data_files": {t.split: str(path)}}, training_split=None,
               validation_split=t.split if t.split == "validation" else None,
               test_split=t.split if t.split == "test" else None, num_fewshot=0)
    metrics = [dict(m) for m in cfg.get("metric_list") or [{"metric": "acc"}]]
    names = {m["metric"] for m in metrics}
    for name in ("acc", "acc_norm"):
        if name not in names:
            metrics.append({"metric": name, "aggregation": "mean", "higher_is_better": True})
    cfg["metric_list"] = metrics
    return cfg


def evaluate_zeroshot_card(
    model: nn.Module,
    tokenizer,
    data: str | os.PathLike,
    *,
    card: str = "zeroshot-7",
    tasks: list[str] | None = None,
    limit: int | None = None,
    batch_size: int = 16,
) -> list[dict]:
    """The zero-shot card's tasks on the in-memory ``model``, through lm-eval.

    Args:
        model, tokenizer: A Hugging Face causal LM and its tokenizer.
        data: Folder holding the tasks' local files (:func:`standard_task_file`).
        card: Zero-shot card name (``"zeroshot-7"``).
        tasks: A subset of the card's tasks (default all 7).
        limit: First ``limit`` examples per task (lm-eval's ``limit``; recorded).
        batch_size: Requests per forward (lm-eval ``batch_size``).

    Returns:
        One row per task: ``task, acc, acc_stderr, acc_norm, acc_norm_stderr, n, seconds,
        reported_metric_wanda, reported_metric_owl, zeroshot_card, num_fewshot, limit,
        data_file, lm_eval_version, batch_size`` (``seconds`` is the whole run's wall
        time divided over tasks by example count).

    Raises:
        ValueError: Unknown card or task; bad ``limit`` / ``batch_size``.
        FileNotFoundError: A task's data file is missing (named).
    """
    if card not in ZEROSHOT_CARDS:
        raise ValueError(f"card: unknown zero-shot card {card!r}; known: {list(ZEROSHOT_CARDS)}")
    spec = ZEROSHOT_CARDS[card]
    tasks = list(spec["tasks"] if tasks is None else tasks)
    for t in tasks:
        if t not in spec["tasks"]:
            raise ValueError(f"tasks: {t!r} is not in card {card!r}; tasks: {list(spec['tasks'])}")
    if limit is not None:
        check_range("limit", limit, 1, integer=True)
    check_range("batch_size", batch_size, 1, integer=True)
    if not isinstance(model, nn.Module) or not hasattr(model, "config"):
        raise TypeError(f"model must be a Hugging Face causal LM (with .config), got "
                        f"{type(model).__name__}")
    files = {t: standard_task_file(t, data) for t in tasks}  # all checked before any run
    hf_tok = hf_tokenizer(tokenizer)
    _quiet_lm_eval()
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM

    task_dict = {t: ConfigurableTask(config=standard_task_config(t, files[t])) for t in tasks}
    was_training = model.training
    t0 = time.perf_counter()
    try:
        lm = HFLM(pretrained=model, tokenizer=hf_tok, batch_size=batch_size)
        out = evaluate(lm, task_dict, limit=limit, verbosity="ERROR")
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - t0
    rows = []
    counts = {t: int(out.get("n-samples", {}).get(t, {}).get("effective", 0)) for t in tasks}
    total = max(sum(counts.values()), 1)
    for t in tasks:
        raw = out["results"][t]
        m = {k.split(",")[0]: float(v) for k, v in raw.items()
             if "," in k and isinstance(v, (int, float))}
        rows.append(dict(
            task=t, acc=m.get("acc", float("nan")), acc_stderr=m.get("acc_stderr", float("nan")),
            acc_norm=m.get("acc_norm", float("nan")),
            acc_norm_stderr=m.get("acc_norm_stderr", float("nan")), n=counts[t],
            seconds=seconds * counts[t] / total,
            reported_metric_wanda=spec["reported_metric"]["wanda"][t],
            reported_metric_owl=spec["reported_metric"]["owl"][t], zeroshot_card=card,
            num_fewshot=spec["num_fewshot"], limit=limit, data_file=str(files[t]),
            lm_eval_version=lm_eval_version(), batch_size=batch_size))
    return rows


__all__ += ["evaluate_zeroshot_card", "standard_task_config", "standard_task_file",
            "STANDARD_TASKS", "ZEROSHOT_CARDS", "lm_eval_version"]
