"""Multi-seed one-shot pruning sweeps: one tidy row per configuration and seed.

:func:`oneshot_sweep` prunes one model, from the same dense weights every time, for every
``method x allocation x sparsity pattern x calibration seed`` and evaluates validation
perplexity (and, when asked, zero-shot accuracy through
:func:`workbench.core.zeroshot.evaluate_zeroshot`). It returns one tidy row per
``(method, allocation, pattern, sparsity, seed)`` carrying the evaluation settings that
make a number reproducible (context length, split, tokens, calibration hash, library
versions, prune seconds).

Choices (stated once):

* **Seeds are calibration draws.** Seed ``s`` draws ``n_calibration`` random windows of
  the train split with :func:`workbench.core.data.calibration_windows` (Wanda's
  protocol) using seed ``s``; the evaluation blocks are one fixed draw (``eval_seed``),
  so differences between seeds come from calibration only, and runs with the same seed
  are paired. Default: 3 seeds on CPU, 5 with CUDA (:func:`default_seeds`).
* **Methods that read no calibration** (registered ``needs_calibration=False``, e.g.
  magnitude) under the uniform allocation give the same model for every seed: they are
  pruned and evaluated once and the row is repeated per seed
  (``depends_on_calibration=False``), so their sd is exactly 0.
* **Patterns**: a number in ``[0, 1)`` is unstructured pruning at the method's registered
  default scope; a string ``"N:M"`` is N:M sparsity (sparsity ``1 - N/M``). Non-uniform
  allocations (OWL) set per-layer sparsities, which N:M fixes, so N:M patterns run the
  uniform allocation only (the other combinations are skipped, listed in
  ``DataFrame.attrs["skipped"]``).
* **Protocols** (:mod:`workbench.core.protocols`): ``eval_card`` / ``calibration_card``
  name the perplexity and calibration cards (``wikitext2`` + ``c4`` as in the papers,
  their files from ``data``); left ``None``, validation blocks and calibration windows
  of ``corpus`` are drawn as before, which for ``corpus="wiki-excerpt"`` *is* the
  ``wiki-excerpt`` card. Every row records its protocol: ``eval_card``,
  ``eval_fingerprint`` (SHA-256 + count of the evaluated tokens), ``eval_context_length``
  (the ``seq_len``), ``eval_ppl_level`` (``token``), ``calibration_card``,
  ``zeroshot_metric`` (``acc``) and ``lm_eval_version``.
* **Statistics** (summaries, paired tests, findings and the figure) are in
  :mod:`workbench.experiments.analysis.oneshot_analysis`: runs are paired by calibration seed,
  perplexity is tested on its logarithm (``val_nll``) and accuracy as is.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import pandas as pd
import torch
from torch import nn

from workbench.core.checks import check_choice, check_range
from workbench.core import heartbeat, protocols
from workbench.core.data import Corpus, calibration_windows, load_corpus, token_blocks
from workbench.core.devices import model_device
from workbench.core.evaluate import evaluate_perplexity
from workbench.core.protocols import encode
from workbench.core.zeroshot import evaluate_zeroshot
from workbench.pruning.masks import parse_scope, prunable_modules, restore
from workbench.pruning.methods import prune
from workbench.pruning.registry import METHODS

#: Columns every row of :func:`oneshot_sweep` has, in order.
COLUMNS = (
    "model", "corpus", "method", "method_label", "allocation", "pattern", "scope",
    "sparsity", "achieved_sparsity", "seed", "depends_on_calibration", "val_ppl", "val_nll",
    "zeroshot_task", "zeroshot_acc", "zeroshot_stderr", "zeroshot_n", "prune_seconds",
    "eval_seconds", "zeroshot_seconds", "eval_split", "eval_context_length",
    "eval_n_blocks", "eval_n_tokens", "eval_hash", "eval_seed", "calibration_split",
    "calibration_n", "calibration_seq_len", "calibration_hash", "dtype", "device",
    "torch_version", "transformers_version", "lm_eval_version",
    "eval_card", "eval_fingerprint", "eval_ppl_level", "eval_n_available", "eval_source",
    "calibration_card", "zeroshot_metric",
)


def default_seeds() -> list[int]:
    """Calibration seeds: ``[0, 1, 2]`` on CPU, ``[0, ..., 4]`` when CUDA is present."""
    return list(range(5 if torch.cuda.is_available() else 3))


def tensor_hash(tokens: torch.Tensor) -> str:
    """First 16 hex digits of the SHA-256 of a token tensor (shape and int64 values)."""
    t = tokens.detach().to("cpu", torch.int64).contiguous()
    h = hashlib.sha256(str(tuple(t.shape)).encode())
    h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def library_versions() -> dict[str, str | None]:
    """Versions of torch, transformers and lm-eval (``None`` when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"torch_version": torch.__version__}
    for col, dist in (("transformers_version", "transformers"), ("lm_eval_version", "lm_eval")):
        try:
            out[col] = version(dist)
        except PackageNotFoundError:
            out[col] = None
    return out


def parse_pattern(pattern: float | str) -> tuple[str, float, str | None]:
    """``0.5 -> ("unstructured", 0.5, None)``; ``"2:4" -> ("2:4", 0.5, "2:4")``.

    Returns:
        ``(pattern label, target sparsity, scope or None for the method's default)``.

    Raises:
        ValueError: A number outside ``[0, 1)`` or a string that is not ``"N:M"``.
    """
    if isinstance(pattern, str):
        scope, n, m = parse_scope(pattern)
        if scope != "n:m":
            raise ValueError(f"sparsities entries must be numbers in [0, 1) or 'N:M' "
                             f"strings like '2:4', got {pattern!r}")
        return f"{n}:{m}", 1 - n / m, f"{n}:{m}"
    check_range("sparsity", pattern, 0.0, 1.0, hi_open=True)
    return "unstructured", float(pattern), None


def _model_name(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "_name_or_path", "") or type(model).__name__)


def oneshot_sweep(
    model: nn.Module,
    tokenizer,
    corpus,
    *,
    methods: Sequence[str] = ("magnitude", "wanda"),
    sparsities: Sequence[float | str] = (0.5,),
    allocations: Sequence[str] = ("uniform",),
    seeds: Sequence[int] | None = None,
    n_calibration: int = 32,
    calibration_seq_len: int = 128,
    n_eval: int = 16,
    eval_seq_len: int = 256,
    eval_seed: int = 0,
    zeroshot_task: str | os.PathLike | None = None,
    zeroshot_limit: int | None = None,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    batch_size: int = 8,
    model_name: str | None = None,
    dense: bool = True,
    progress: bool = True,
    eval_card: str | None = None,
    calibration_card: str | None = None,
    data: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Prune from the same dense weights for every configuration and seed, and evaluate.

    Args:
        model: A causal LM; pruned in place and restored to its dense weights at the end
            (also on error).
        tokenizer: Its tokenizer.
        corpus: A :class:`workbench.core.data.Corpus` or a corpus spec for
            :func:`workbench.core.data.load_corpus`. Calibration reads ``train``,
            perplexity ``validation``.
        methods: Registered method names (:data:`workbench.pruning.registry.METHODS`).
        sparsities: Numbers in ``[0, 1)`` (unstructured) and/or ``"N:M"`` strings.
        allocations: Layer-sparsity allocations (``"uniform"``, ``"owl"``); each must be
            registered for every method (its ``allocations`` property).
        seeds: Calibration seeds (default :func:`default_seeds`).
        n_calibration, calibration_seq_len: Calibration windows per seed and their length.
        n_eval, eval_seq_len: Validation blocks and their length (the context length).
            With ``eval_card``, ``n_eval=None`` evaluates every window the card defines.
        eval_seed: Seed of the validation block draw (fixed across calibration seeds).
        zeroshot_task: lm-eval task (shipped name or YAML path) or ``None`` for no
            zero-shot accuracy.
        zeroshot_limit: Examples of the task to evaluate (``None``: all).
        method_options: ``{method: {option: value}}`` passed to :func:`workbench.prune`;
            a ``scope`` there replaces the method's default scope for the unstructured
            levels (an N:M pattern fixes the scope; setting one too is an error).
        batch_size: Sequences per forward (calibration, perplexity, zero-shot).
        model_name: Name written in the rows (default the model's ``_name_or_path``).
        dense: Add the unpruned model's rows (``method="dense"``, sparsity 0).
        progress: Show a progress bar.
        eval_card: Perplexity card (:data:`workbench.core.protocols.PERPLEXITY_CARDS`)
            evaluated instead of ``corpus``' validation split.
        calibration_card: Calibration card
            (:data:`workbench.core.protocols.CALIBRATION_CARDS`) drawn instead of
            ``corpus``' train split (seed ``s`` per calibration seed).
        data: File or folder holding the cards' files (parquet / json.gz as the hub
            distributes them).

    Returns:
        DataFrame with the :data:`COLUMNS`, one row per (method, allocation, pattern,
        sparsity, seed); ``attrs["skipped"]`` lists the combinations not run.

    Raises:
        ValueError: Unknown method or allocation (lists the choices), an allocation a
            method does not support, bad sparsities, or bad sizes.
    """
    from tqdm.auto import tqdm

    methods, patterns, seeds, method_options = _check_arguments(
        methods, sparsities, allocations, seeds, n_calibration,
        1 if (n_eval is None and eval_card is not None) else n_eval, batch_size,
        method_options)
    text, val, cals, protocol = _draw_tokens(
        tokenizer, corpus, seeds, n_calibration, calibration_seq_len, n_eval, eval_seq_len,
        eval_seed, eval_card, calibration_card, data)
    common = _common_fields(model, model_name, text, val, eval_seq_len, eval_seed,
                            n_calibration, calibration_seq_len, zeroshot_task)
    common.update(protocol)
    if eval_card is not None:
        common["eval_split"] = protocol["eval_source"]
    if calibration_card is not None:
        common["calibration_split"] = protocol.pop("_calibration_source")
    common.pop("_calibration_source", None)
    jobs, skipped = _jobs(methods, allocations, patterns)
    originals = {n: mod.weight.detach().clone() for n, mod in prunable_modules(model).items()}
    run = _Sweep(model, tokenizer, val, cals, common, originals, batch_size, zeroshot_task,
                 zeroshot_limit, method_options)
    rows: list[dict] = []
    bar = tqdm(total=len(jobs) * len(seeds) + bool(dense), desc="one-shot sweep",
               disable=not progress)
    heartbeat.start("one-shot sweep", total=bar.total, unit="model",
                    item="dense model" if dense else "")
    try:
        if dense:
            rows += run.dense_rows(seeds)
            bar.update(1)
            heartbeat.beat(force=True, done=bar.n)
        for job in jobs:
            rows += run.job_rows(*job, seeds, bar)
    finally:
        restore(model, originals)
        bar.close()
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    df.attrs["skipped"] = skipped
    return df


def _check_arguments(methods, sparsities, allocations, seeds, n_calibration, n_eval,
                     batch_size, method_options):
    """Validate the sweep's arguments; ``(methods, patterns, seeds, method_options)``."""
    if isinstance(methods, str) or isinstance(sparsities, (str, float, int)):
        raise TypeError("methods and sparsities must be lists (e.g. ['wanda'], [0.5, '2:4'])")
    methods = [METHODS.check(m) for m in methods]
    all_allocations = sorted({a for e in METHODS for a in e.props["allocations"]})
    for a in allocations:
        check_choice("allocations", a, all_allocations)
    for m in methods:
        bad = [a for a in allocations if a not in METHODS.get(m).props["allocations"]]
        if bad:
            raise ValueError(f"method {m!r} does not support allocation(s) {bad}; it "
                             f"supports {list(METHODS.get(m).props['allocations'])}")
    patterns = [parse_pattern(p) for p in sparsities]
    seeds = default_seeds() if seeds is None else [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct non-negative integers, got {seeds}")
    for s in seeds:
        check_range("seeds", s, 0, integer=True)
    for arg, v in (("n_calibration", n_calibration), ("n_eval", n_eval),
                   ("batch_size", batch_size)):
        check_range(arg, v, 1, integer=True)
    method_options = dict(method_options or {})
    unknown = sorted(set(method_options) - set(methods))
    if unknown:
        raise ValueError(f"method_options names methods {unknown} that are not in "
                         f"methods={methods}")
    return methods, patterns, seeds, method_options


def _draw_tokens(tokenizer, corpus, seeds, n_calibration, calibration_seq_len, n_eval,
                 eval_seq_len, eval_seed, eval_card=None, calibration_card=None, data=None):
    """One fixed evaluation draw and one calibration draw per seed, and their protocol.

    Without cards: the validation split of ``corpus`` (blocks) and windows of its train
    split. With cards: :func:`workbench.core.protocols.perplexity_windows` /
    :func:`workbench.core.protocols.calibration_windows`; both are checked (files found,
    texts long enough) before anything is pruned.

    Returns:
        ``(corpus name, evaluation tokens, {seed: calibration windows}, protocol columns)``.
    """
    if eval_card is not None:
        w = protocols.perplexity_windows(eval_card, tokenizer, eval_seq_len, data=data,
                                         n_windows=n_eval, seed=eval_seed)
        val = w.tokens
        protocol = dict(eval_card=w.card, eval_ppl_level=w.level,
                        eval_n_available=w.n_available, eval_source=w.source)
    text = None
    if eval_card is None or calibration_card is None:
        text = corpus if isinstance(corpus, Corpus) else load_corpus(corpus)
    if eval_card is None:
        val = token_blocks(tokenizer, text.validation, eval_seq_len, n_blocks=n_eval,
                              seed=eval_seed)
        available = len(token_blocks_ids(tokenizer, text.validation)) // eval_seq_len
        protocol = dict(eval_card="wiki-excerpt" if text.name == "wiki-excerpt"
                        else f"corpus-blocks:{text.name}", eval_ppl_level="token",
                        eval_n_available=available, eval_source=f"{text.name}:validation")
    protocol["eval_fingerprint"] = str(protocols.fingerprint(val))
    if calibration_card is not None:
        drawn = {s: protocols.calibration_windows(calibration_card, tokenizer,
                                                  calibration_seq_len, n_windows=n_calibration,
                                                  seed=s, data=data) for s in seeds}
        cals = {s: d.tokens for s, d in drawn.items()}
        protocol.update(calibration_card=protocols.calibration_card(calibration_card).name,
                        _calibration_source=next(iter(drawn.values())).source)
    else:
        cals = {s: calibration_windows(tokenizer, text.train, calibration_seq_len,
                                          n_calibration, seed=s) for s in seeds}
        protocol["calibration_card"] = ("wiki-excerpt" if text.name == "wiki-excerpt"
                                        else f"corpus-windows:{text.name}")
    protocol["zeroshot_metric"] = "acc"
    name = text.name if text is not None else f"cards:{eval_card}+{calibration_card}"
    return name, val, cals, protocol


def token_blocks_ids(tokenizer, documents) -> list[int]:
    """The token stream :func:`workbench.core.data.token_blocks` cuts (documents joined by
    blank lines, no special tokens)."""
    return encode(tokenizer, "\n\n".join(documents), False)


def _common_fields(model, model_name, corpus_name, val, eval_seq_len, eval_seed,
                   n_calibration, calibration_seq_len, zeroshot_task) -> dict:
    """The columns every row shares: names, evaluation settings, dtype, device, versions."""
    first = next(model.parameters())
    return dict(model=model_name or _model_name(model), corpus=corpus_name,
                eval_split="validation", eval_context_length=eval_seq_len,
                eval_n_blocks=int(val.shape[0]), eval_hash=tensor_hash(val),
                eval_seed=eval_seed, calibration_split="train", calibration_n=n_calibration,
                calibration_seq_len=calibration_seq_len, dtype=str(first.dtype).replace(
                    "torch.", ""), device=str(model_device(model)),
                zeroshot_task=None if zeroshot_task is None else os.fspath(zeroshot_task),
                **library_versions())


def _jobs(methods, allocations, patterns) -> tuple[list[tuple], list[dict]]:
    """The runs ``(method, allocation, label, sparsity, scope)`` and the skipped ones.

    N:M patterns fix every layer's sparsity, so they run the uniform allocation only.
    """
    jobs, skipped = [], []
    for method, allocation, (label, s, scope) in itertools.product(methods, allocations,
                                                                     patterns):
        if scope is not None and allocation != "uniform":
            skipped.append(dict(method=method, allocation=allocation, pattern=label,
                                reason="N:M fixes every layer's sparsity"))
            continue
        jobs.append((method, allocation, label, s, scope))
    return jobs, skipped


@dataclass
class _Sweep:
    """What the runs of one sweep share.

    The model and its dense weights, the token draws, the common columns and the
    evaluation settings.
    """

    model: nn.Module
    tokenizer: Any
    val: torch.Tensor
    cals: dict[int, torch.Tensor]
    common: dict
    originals: dict[str, torch.Tensor]
    batch_size: int
    zeroshot_task: str | os.PathLike | None
    zeroshot_limit: int | None
    method_options: dict

    def evaluate(self) -> dict:
        """Perplexity (and zero-shot accuracy when asked) of the model as it is now."""
        ppl = evaluate_perplexity(self.model, self.val, batch_size=self.batch_size,
                                  progress=False)
        out = dict(val_ppl=ppl.perplexity, val_nll=ppl.nll, eval_n_tokens=ppl.n_tokens,
                   eval_seconds=ppl.seconds, zeroshot_acc=math.nan,
                   zeroshot_stderr=math.nan, zeroshot_n=0, zeroshot_seconds=math.nan)
        if self.zeroshot_task is not None:
            z = evaluate_zeroshot(self.model, self.tokenizer, self.zeroshot_task,
                                  limit=self.zeroshot_limit, batch_size=self.batch_size)
            out.update(zeroshot_acc=z.accuracy, zeroshot_stderr=z.stderr, zeroshot_n=z.n,
                       zeroshot_seconds=z.seconds)
        return out

    def dense_rows(self, seeds: Sequence[int]) -> list[dict]:
        """The unpruned model, evaluated once, one row per seed."""
        ev = self.evaluate()
        return [dict(self.common, **ev, method="dense", method_label="Dense",
                     allocation="uniform", pattern="dense", scope=None, sparsity=0.0,
                     achieved_sparsity=0.0, seed=seed, depends_on_calibration=False,
                     prune_seconds=0.0, calibration_hash=tensor_hash(self.cals[seed]))
                for seed in seeds]

    def prune_fresh(self, method: str, allocation: str, s: float, scope: str | None,
                    seed: int):
        """Restore the dense weights, then prune with seed ``seed``'s calibration draw."""
        restore(self.model, self.originals)
        options = dict(self.method_options.get(method, {}))
        if scope is None:  # unstructured: a scope in method_options replaces the default
            scope = options.pop("scope", None)
        elif "scope" in options:
            raise ValueError(f"method_options[{method!r}] sets scope={options['scope']!r}, "
                             f"but the sparsity pattern {scope!r} fixes the scope")
        return prune(self.model, method, s, scope=scope, calibration_tokens=self.cals[seed],
                     allocation=allocation, batch_size=self.batch_size, **options)

    def job_rows(self, method: str, allocation: str, label: str, s: float,
                 scope: str | None, seeds: Sequence[int], bar) -> list[dict]:
        """One row per seed for one (method, allocation, pattern).

        Pruned and evaluated once, the row repeated per seed, when the result cannot
        depend on the calibration draw (no calibration read, uniform allocation).
        """
        entry = METHODS.get(method)
        once = not entry.props["needs_calibration"] and allocation == "uniform"
        rows: list[dict] = []
        for seed in seeds:
            if once and rows:
                rows.append(dict(rows[-1], seed=seed,
                                 calibration_hash=tensor_hash(self.cals[seed])))
                bar.update(1)
                heartbeat.beat(done=bar.n)
                continue
            heartbeat.beat(force=True, item=f"{method} {allocation} {label} seed {seed}",
                           done=bar.n)
            res = self.prune_fresh(method, allocation, s, scope, seed)
            rows.append(dict(self.common, **self.evaluate(), method=method,
                             method_label=entry.props["label"] or method,
                             allocation=allocation, pattern=label,
                             scope=str(res.info.get("scope")), sparsity=s,
                             achieved_sparsity=res.info["achieved_sparsity"], seed=seed,
                             depends_on_calibration=not once,
                             prune_seconds=res.info["seconds"],
                             calibration_hash=tensor_hash(self.cals[seed])))
            bar.update(1)
            heartbeat.beat(force=True, done=bar.n)
        return rows


__all__ = ["oneshot_sweep", "default_seeds", "parse_pattern", "tensor_hash",
           "library_versions", "COLUMNS"]
