"""Multi-seed one-shot pruning sweeps: curves with error bars and paired tests.

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
* **Statistics**: :func:`paired_comparisons` pairs runs by calibration seed and tests
  perplexity on its logarithm (``val_nll``: paired differences are log perplexity
  ratios) and accuracy as is, with :func:`workbench.experiments.stats.paired_test`
  (paired t, Wilcoxon, d_z, bootstrap CI) and one Holm family
  (:func:`workbench.experiments.stats.holm`).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from workbench.core.checks import check_choice, check_range
from workbench.experiments import stats

#: Columns every row of :func:`oneshot_sweep` has, in order.
COLUMNS = (
    "model", "corpus", "method", "method_label", "allocation", "pattern", "scope",
    "sparsity", "achieved_sparsity", "seed", "depends_on_calibration", "val_ppl", "val_nll",
    "zeroshot_task", "zeroshot_acc", "zeroshot_stderr", "zeroshot_n", "prune_seconds",
    "eval_seconds", "zeroshot_seconds", "eval_split", "eval_context_length",
    "eval_n_blocks", "eval_n_tokens", "eval_hash", "eval_seed", "calibration_split",
    "calibration_n", "calibration_seq_len", "calibration_hash", "dtype", "device",
    "torch_version", "transformers_version", "lm_eval_version",
)
#: Identifies one curve point (a method configuration at one sparsity).
KEYS = ("method", "allocation", "pattern", "sparsity")
#: Factors compared by :func:`paired_comparisons` (``experiment``: grid cells of a spec).
FACTORS = ("method", "allocation", "experiment")
#: Metrics tested by :func:`significance` and which direction is better.
METRICS = {"val_nll": "lower", "zeroshot_acc": "higher"}


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
        from workbench.pruning.masks import parse_scope

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
        eval_seed: Seed of the validation block draw (fixed across calibration seeds).
        zeroshot_task: lm-eval task (shipped name or YAML path) or ``None`` for no
            zero-shot accuracy.
        zeroshot_limit: Examples of the task to evaluate (``None``: all).
        method_options: ``{method: {option: value}}`` passed to :func:`workbench.prune`.
        batch_size: Sequences per forward (calibration, perplexity, zero-shot).
        model_name: Name written in the rows (default the model's ``_name_or_path``).
        dense: Add the unpruned model's rows (``method="dense"``, sparsity 0).
        progress: Show a progress bar.

    Returns:
        DataFrame with the :data:`COLUMNS`, one row per (method, allocation, pattern,
        sparsity, seed); ``attrs["skipped"]`` lists the combinations not run.

    Raises:
        ValueError: Unknown method or allocation (lists the choices), an allocation a
            method does not support, bad sparsities, or bad sizes.
    """
    from tqdm.auto import tqdm

    import workbench as wb
    from workbench.core.data import Corpus, load_corpus
    from workbench.core.evaluate import evaluate_perplexity
    from workbench.core.models import model_device
    from workbench.pruning.masks import prunable_modules, restore
    from workbench.pruning.registry import METHODS

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

    text = corpus if isinstance(corpus, Corpus) else load_corpus(corpus)
    val = wb.token_blocks(tokenizer, text.validation, eval_seq_len, n_blocks=n_eval,
                          seed=eval_seed)
    cals = {s: wb.calibration_windows(tokenizer, text.train, calibration_seq_len,
                                      n_calibration, seed=s) for s in seeds}
    first = next(model.parameters())
    common = dict(model=model_name or _model_name(model), corpus=text.name,
                  eval_split="validation", eval_context_length=eval_seq_len,
                  eval_n_blocks=int(val.shape[0]), eval_hash=tensor_hash(val),
                  eval_seed=eval_seed, calibration_split="train", calibration_n=n_calibration,
                  calibration_seq_len=calibration_seq_len, dtype=str(first.dtype).replace(
                      "torch.", ""), device=str(model_device(model)),
                  zeroshot_task=None if zeroshot_task is None else os.fspath(zeroshot_task),
                  **library_versions())

    def evaluate() -> dict:
        ppl = evaluate_perplexity(model, val, batch_size=batch_size, progress=False)
        out = dict(val_ppl=ppl.perplexity, val_nll=ppl.nll, eval_n_tokens=ppl.n_tokens,
                   eval_seconds=ppl.seconds, zeroshot_acc=math.nan,
                   zeroshot_stderr=math.nan, zeroshot_n=0, zeroshot_seconds=math.nan)
        if zeroshot_task is not None:
            from workbench.core.zeroshot import evaluate_zeroshot

            z = evaluate_zeroshot(model, tokenizer, zeroshot_task, limit=zeroshot_limit,
                                  batch_size=batch_size)
            out.update(zeroshot_acc=z.accuracy, zeroshot_stderr=z.stderr, zeroshot_n=z.n,
                       zeroshot_seconds=z.seconds)
        return out

    jobs, skipped = [], []
    for method, allocation, (label, s, scope) in itertools.product(methods, allocations,
                                                                     patterns):
        if scope is not None and allocation != "uniform":
            skipped.append(dict(method=method, allocation=allocation, pattern=label,
                                reason="N:M fixes every layer's sparsity"))
            continue
        jobs.append((method, allocation, label, s, scope))

    modules = prunable_modules(model)
    originals = {n: mod.weight.detach().clone() for n, mod in modules.items()}
    rows: list[dict] = []
    bar = tqdm(total=len(jobs) * len(seeds) + bool(dense), desc="one-shot sweep",
               disable=not progress)
    try:
        if dense:
            ev = evaluate()
            bar.update(1)
            for seed in seeds:
                rows.append(dict(common, **ev, method="dense", method_label="Dense",
                                 allocation="uniform", pattern="dense", scope=None,
                                 sparsity=0.0, achieved_sparsity=0.0, seed=seed,
                                 depends_on_calibration=False, prune_seconds=0.0,
                                 calibration_hash=tensor_hash(cals[seed])))
        for method, allocation, label, s, scope in jobs:
            entry = METHODS.get(method)
            once = not entry.props["needs_calibration"] and allocation == "uniform"
            done = None
            for seed in seeds:
                if once and done is not None:
                    rows.append(dict(done, seed=seed, calibration_hash=tensor_hash(cals[seed])))
                    bar.update(1)
                    continue
                restore(model, originals)
                res = wb.prune(model, method, s, scope=scope, calibration=cals[seed],
                               allocation=allocation, batch_size=batch_size,
                               **dict(method_options.get(method, {})))
                row = dict(common, **evaluate(), method=method,
                           method_label=entry.props["label"] or method,
                           allocation=allocation, pattern=label,
                           scope=str(res.info.get("scope")), sparsity=s,
                           achieved_sparsity=res.info["achieved_sparsity"], seed=seed,
                           depends_on_calibration=not once,
                           prune_seconds=res.info["seconds"],
                           calibration_hash=tensor_hash(cals[seed]))
                rows.append(row)
                done = row
                bar.update(1)
    finally:
        restore(model, originals)
        bar.close()
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    df.attrs["skipped"] = skipped
    return df


# ----------------------------------------------------------------------------- summaries
def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Mean ± sd over seeds per curve point (and mean prune seconds).

    Perplexity is summarised on its logarithm: ``val_ppl`` is the geometric mean
    ``exp(mean(val_nll))`` and ``val_ppl_gsd`` the geometric sd ``exp(sd(val_nll))``
    (the bar is ``val_ppl`` times/divided by it), as in
    :func:`workbench.experiments.plots.plot_sparsity_curve`.

    Returns:
        One row per ``(method, allocation, pattern, sparsity)``: ``n_seeds, val_ppl,
        val_ppl_gsd, val_nll_mean, val_nll_sd, zeroshot_acc_mean, zeroshot_acc_sd,
        achieved_sparsity, prune_seconds``.
    """
    g = df.groupby(list(KEYS), sort=False)
    out = pd.DataFrame({
        "method_label": g["method_label"].first(),
        "n_seeds": g["seed"].nunique(),
        "val_ppl": np.exp(g["val_nll"].mean()),
        "val_ppl_gsd": np.exp(g["val_nll"].std(ddof=1).fillna(0.0)),
        "val_nll_mean": g["val_nll"].mean(),
        "val_nll_sd": g["val_nll"].std(ddof=1).fillna(0.0),
        "zeroshot_acc_mean": g["zeroshot_acc"].mean(),
        "zeroshot_acc_sd": g["zeroshot_acc"].std(ddof=1).fillna(0.0),
        "achieved_sparsity": g["achieved_sparsity"].mean(),
        "prune_seconds": g["prune_seconds"].mean(),
    })
    return out.reset_index()


def results_table(df: pd.DataFrame, *, digits: int = 2) -> pd.DataFrame:
    """A display table: perplexity (geometric mean ×/÷ geometric sd), accuracy mean ± sd
    (in %), prune seconds, one row per curve point."""
    s = summarize(df)
    out = pd.DataFrame({
        "method": s["method_label"], "allocation": s["allocation"], "pattern": s["pattern"],
        "sparsity": s["sparsity"].round(3),
        "perplexity": [f"{p:.{digits}f} ×/÷ {g:.3f}" for p, g in zip(s["val_ppl"],
                                                                     s["val_ppl_gsd"])],
        "zero-shot acc (%)": [("—" if math.isnan(a) else f"{100 * a:.1f} ± {100 * sd:.1f}")
                              for a, sd in zip(s["zeroshot_acc_mean"], s["zeroshot_acc_sd"])],
        "prune s": s["prune_seconds"].round(1),
        "seeds": s["n_seeds"],
    })
    return out


# ----------------------------------------------------------------------------- statistics
def paired_comparisons(df: pd.DataFrame, metric: str = "val_nll", factor: str = "method", *,
                       baseline: str | None = None, alpha: float = 0.05, test: str = "t",
                       **kwargs: Any) -> pd.DataFrame:
    """Paired tests (by calibration seed) between levels of ``factor`` at every point.

    Runs are compared when they agree on the other factors of :data:`FACTORS` present in
    the rows and on the pattern and sparsity, and are paired by seed (only seeds present
    in both). ``factor="method"`` compares every pair of methods (or each against
    ``baseline``); ``factor="allocation"`` compares each allocation against ``baseline``
    (default ``"uniform"``); ``factor="experiment"`` compares the experiments of a grid
    (rows of several cells concatenated; the grid's seed is the calibration seed). Dense
    rows are left out.

    Args:
        df: Rows of :func:`oneshot_sweep`.
        metric: ``"val_nll"`` (log perplexity: differences are log ratios) or
            ``"zeroshot_acc"`` (or any numeric column).
        factor: ``"method"``, ``"allocation"`` or ``"experiment"``.
        baseline: Reference level (``a``); ``None``: all pairs for methods, ``"uniform"``
            for allocations.
        alpha: Family-wise error rate of the Holm correction over this table's rows.
        test: ``"t"`` (paired t-test) or ``"wilcoxon"``: whose p-values are corrected.
        **kwargs: Passed to :func:`workbench.experiments.stats.paired_test`.

    Returns:
        The columns of :data:`workbench.experiments.stats.TABLE_COLUMNS` (so
        :func:`workbench.experiments.stats.describe` reads it) plus ``pattern``,
        ``context`` (the shared level of the other factor) and the ``paired_test`` fields.
    """
    check_choice("factor", factor, FACTORS)
    check_choice("test", test, stats.TESTS)
    if metric not in df:
        raise ValueError(f"metric={metric!r} is not a column; allowed: "
                         f"{sorted(df.select_dtypes('number').columns)}")
    if factor not in df:
        raise ValueError(f"factor={factor!r} is not a column of the rows")
    data = df[(df["method"] != "dense") & df[metric].notna()]
    if baseline is None and factor == "allocation":
        baseline = "uniform"
    others = [c for c in FACTORS if c != factor and c in data
              and (c != "experiment" or data[c].nunique() > 1)]
    rows = []
    for key, part in data.groupby(others + ["pattern", "sparsity"], sort=False):
        ctx = ", ".join(str(v) for v in key[:len(others)])
        pattern, s = key[len(others):]
        levels = list(dict.fromkeys(part[factor]))
        if baseline is not None:
            pairs = [(baseline, b) for b in levels if b != baseline and baseline in levels]
        else:
            pairs = list(itertools.combinations(levels, 2))
        values = part.pivot_table(index="seed", columns=factor, values=metric, aggfunc="first")
        for a, b in pairs:
            both = values[[a, b]].dropna()
            if len(both) == 0:
                continue
            res = stats.paired_test(both[a].to_numpy(), both[b].to_numpy(), alpha=alpha,
                                    **kwargs)
            rows.append(dict(factor=factor, baseline=a, level_b=b,
                             experiment_a=f"{a} ({ctx}, {pattern})",
                             experiment_b=f"{b} ({ctx}, {pattern})", metric=metric,
                             at="sparsity", level=float(s), pattern=pattern, context=ctx,
                             **res))
    if not rows:
        return pd.DataFrame(columns=list(stats.TABLE_COLUMNS) + ["pattern", "context"])
    out = pd.DataFrame(rows)
    reject, padj = stats.holm(out["p_t" if test == "t" else "p_wilcoxon"], alpha=alpha)
    out["test"], out["p_holm"], out["significant"] = test, padj, reject
    front = list(stats.TABLE_COLUMNS)
    return out[front + [c for c in out if c not in front]]


def significance(df: pd.DataFrame, *, metrics: Sequence[str] = ("val_nll", "zeroshot_acc"),
                 factors: Sequence[str] = FACTORS, alpha: float = 0.05,
                 test: str = "t", **kwargs: Any) -> pd.DataFrame:
    """:func:`paired_comparisons` for every factor x metric, Holm-corrected as one family.

    Metrics with no values (zero-shot not run) and factors absent or with one level are
    skipped.
    """
    tables = []
    for factor in factors:
        if factor not in df or df.loc[df["method"] != "dense", factor].nunique() < 2:
            continue
        for metric in metrics:
            if metric in df and df[metric].notna().any():
                t = paired_comparisons(df, metric, factor, alpha=alpha, test=test, **kwargs)
                if len(t):
                    tables.append(t)
    if not tables:
        return pd.DataFrame(columns=list(stats.TABLE_COLUMNS) + ["pattern", "context"])
    out = pd.concat(tables, ignore_index=True)
    reject, padj = stats.holm(out["p_t" if test == "t" else "p_wilcoxon"], alpha=alpha)
    out["p_holm"], out["significant"] = padj, reject
    return out


def findings(table: pd.DataFrame, *, alpha: float = 0.05) -> str:
    """One sentence per significant difference (and the count of the others).

    Perplexity differences (``val_nll``) are reported as the ratio of geometric mean
    perplexities ``exp(mean paired difference)``; accuracy differences in points.
    """
    if table is None or len(table) == 0:
        return "No paired comparisons (need two methods or allocations with shared seeds)."
    n = int(table["n"].min())
    sig = table[table["significant"].astype(bool)]
    parts = []
    for _, r in sig.iterrows():
        where = f"{r['pattern']} {r['level']:.0%}" if r["pattern"] == "unstructured" else (
            r["pattern"])
        if r["metric"] == "val_nll":
            what = (f"perplexity {math.exp(r['mean_b']):.2f} vs {math.exp(r['mean_a']):.2f} "
                    f"(ratio {math.exp(r['mean_diff']):.3f})")
        elif r["metric"] == "zeroshot_acc":
            what = (f"zero-shot accuracy {100 * r['mean_b']:.1f}% vs {100 * r['mean_a']:.1f}% "
                    f"({100 * r['mean_diff']:+.1f} points)")
        else:
            what = f"{r['metric']} {r['mean_b']:.3g} vs {r['mean_a']:.3g}"
        parts.append(f"{r['level_b']} vs {r['baseline']} ({r['context']}, {where}): {what}, "
                     f"d_z = {r['d_z']:.2f}, Holm p = {r['p_holm']:.3g}")
    head = (f"{len(table)} paired comparisons over n = {n} calibration seeds "
            f"({table['test'].iloc[0]}-test, Holm at alpha = {alpha:g}): ")
    if parts:
        text = head + f"{len(sig)} significant — " + "; ".join(parts) + "."
    else:
        text = head + "none is significant."
    rest = len(table) - len(sig)
    if parts and rest:
        text += f" The other {rest} are not significant."
    if stats.wilcoxon_min_p(n) >= alpha:
        text += (f" (With n = {n} the exact Wilcoxon test cannot reach p < {alpha:g}; only "
                 "the t-test can.)")
    return text


# ----------------------------------------------------------------------------- figure
def curve_style(method: str, allocation: str) -> tuple[str, str]:
    """``(colour, label)`` of a curve: the method's registered colour and label
    (:func:`workbench.experiments.plots.method_style`), ``+ OWL`` for non-uniform
    allocations; the dense model is black."""
    from workbench.experiments.plots import method_style

    if method == "dense":
        return "#000000", "Dense"
    c, lab = method_style(method)
    return c, lab if allocation == "uniform" else f"{lab} + {allocation.upper()}"


def plot_oneshot(df: pd.DataFrame, metric: str = "val_ppl", *, axes=None, seeds: bool = True):
    """Metric vs sparsity, mean ± sd over seeds with the seeds overlaid, per method.

    One panel for the unstructured curves and one per N:M pattern, drawn by
    :func:`workbench.experiments.plots.plot_sparsity_curve` (perplexity: geometric mean
    ×/÷ geometric sd) with the methods' registered colours (:func:`curve_style`);
    non-uniform allocations (OWL) are dashed; the dense model is a reference line.

    Returns:
        ``(fig, axes)``.
    """
    import matplotlib.pyplot as plt

    from workbench.experiments.plots import plot_sparsity_curve

    pruned = df[df["method"] != "dense"]
    panels = sorted(set(pruned["pattern"]), key=lambda p: (p != "unstructured", p))
    if axes is None:
        widths = [3.2 if p == "unstructured" else 1.4 for p in panels]
        fig, axes = plt.subplots(1, len(panels), figsize=(sum(widths) + 1.0, 3.4),
                                 gridspec_kw=dict(width_ratios=widths), squeeze=False,
                                 sharey=True)
        axes = list(axes[0])
    fig = axes[0].figure
    data = df.assign(round=df["sparsity"], curve=df["method"] + "/" + df["allocation"])
    styles = {k: curve_style(*k.split("/", 1)) for k in data["curve"].unique()}
    # dodge the curves sideways a little so that error bars at one sparsity stay apart
    order = {k: i for i, k in enumerate(sorted(styles))}
    width = 0.004 if len(set(data["sparsity"])) > 2 else 0.01
    data["sparsity"] = data["sparsity"] + [
        0.0 if k.startswith("dense/") else width * (order[k] - (len(order) - 1) / 2)
        for k in data["curve"]]
    dense_keys = [k for k in styles if k.startswith("dense/")]
    for ax, pattern in zip(axes, panels):
        part = data[(data["pattern"] == pattern) | (data["method"] == "dense")]
        plot_sparsity_curve(part, metric, x="sparsity", hue="curve", ax=ax, seeds=seeds,
                            styles=styles, references=dense_keys,
                            logy="ppl" in metric, title=pattern)
        dashed = {styles[k][1] for k in styles if not k.endswith("/uniform")}
        for cont in ax.containers:
            if str(cont.get_label()).split(" (n=")[0] in dashed:
                cont.lines[0].set_linestyle("--")
        if ax is not axes[0]:
            ax.set_ylabel("")
        if pattern != "unstructured":
            ax.set_xlabel("")
            ax.set_xticks([float(part.loc[part["pattern"] == pattern, "round"].iloc[0])])
        ax.legend().remove()
    handles, labels = axes[0].get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    for ax in axes[1:]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    fig.legend(list(seen.values()), list(seen), fontsize=7, frameon=False,
               loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig, axes


__all__ = ["oneshot_sweep", "summarize", "results_table", "paired_comparisons",
           "significance", "findings", "plot_oneshot", "curve_style", "default_seeds", "parse_pattern",
           "tensor_hash", "library_versions", "COLUMNS"]
