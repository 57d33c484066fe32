"""Findings by question: everything the analysis notebook shows, computed in one place.

:func:`analyse` reads the finished runs of a spec (or of a runs folder, whose
``spec.json`` carries the questions), and computes

* the per-round summary (mean ± sd over seeds, n) of every experiment, controls included;
* the sweet spot per experiment: ``optimal_sparsity``, ``critical_sparsity`` and
  ``winning_ticket_score`` of each run (:func:`workbench.lottery.imp.robustness_summary`)
  aggregated as mean ± sd over seeds;
* exactly the declared contrasts
  (:func:`workbench.experiments.analysis.contrasts.compute_contrasts`, one Holm family), and the automatic one-factor pairs of questions that ask for them
  (``auto:``, :func:`workbench.experiments.analysis.factors.significance_table`, their own
  family);
* the run-to-run variance of the ``describe:`` metrics (sd and coefficient of variation
  over seeds at each experiment's last round);
* the scale actually run: the profile and the real steps per round next to the design's.

:func:`findings_markdown` writes ``findings.md`` organised by the spec's questions: for
each contrast and metric the numbers (mean ± sd, n per arm), the test, the effect size
``d_z``, the Holm-corrected p and a one-line verdict
(:func:`workbench.experiments.analysis.contrasts.verdict`, with the power caveat for n = 3).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from workbench.core import io
from workbench.experiments.analysis import aggregate, contrasts, plots
from workbench.experiments.analysis.factors import describe, significance_table
from workbench.experiments.design.specs import Spec, load_spec

#: Metrics of the per-round summary table (those present are shown).
SUMMARY_METRICS = ("val_ppl", "val_nll", "sw_survival", "train_loss")
#: Sweet-spot scalars per run.
SWEET_SPOT = ("optimal_sparsity", "critical_sparsity", "winning_ticket_score")
#: Factors paired automatically when no spec declares questions.
DEFAULT_FACTORS = ("init", "steps_per_round", "schedule", "scope", "lr_schedule",
                   "protect_sw", "control")


@dataclass
class Analysis:
    """Everything :func:`findings_markdown` and the analysis notebook show.

    Attributes:
        name: Spec name. profile: Profile the runs were made with (``None``: as written).
        runs_dir: The runs folder. spec: The spec (``None`` for a bare folder).
        parameters: ``{experiment: parameters}`` the runs were made with.
        design: ``{experiment: parameters}`` as written in the spec.
        records, losses, summaries: From :mod:`workbench.experiments.analysis.aggregate`.
        summary: Wide per-round summary. sweet_spot: Wide per-experiment sweet spot.
        contrasts: Declared contrasts (:data:`workbench.experiments.analysis.contrasts.COLUMNS`).
        auto: Automatic one-factor pairs
            (:func:`workbench.experiments.analysis.factors.significance_table`).
        variance: Run-to-run variance of the ``describe:`` metrics.
        alpha, test: Family-wise error rate and the test of the Holm family.
    """

    name: str
    profile: str | None
    runs_dir: Path
    spec: Spec | None
    parameters: dict[str, dict[str, Any]]
    design: dict[str, dict[str, Any]]
    records: pd.DataFrame
    losses: pd.DataFrame
    summaries: pd.DataFrame
    summary: pd.DataFrame = field(default_factory=pd.DataFrame)
    sweet_spot: pd.DataFrame = field(default_factory=pd.DataFrame)
    contrasts: pd.DataFrame = field(default_factory=pd.DataFrame)
    auto: pd.DataFrame = field(default_factory=pd.DataFrame)
    variance: pd.DataFrame = field(default_factory=pd.DataFrame)
    alpha: float = 0.05
    test: str = "t"

    @property
    def questions(self) -> dict:
        return dict(self.spec.questions) if self.spec is not None else {}

    def label(self, experiment: str) -> str:
        return self.spec.label(experiment) if self.spec is not None else str(experiment)


def _source(source, profile, runs_dir):
    """(spec, folder, parameters under the profile, design as written)."""
    if isinstance(source, Spec) or not Path(str(source)).is_dir():
        spec = load_spec(source)
        folder = spec.runs_dir(profile, runs_dir)
        return spec, folder, spec.resolve(profile), spec.resolve(None)
    folder = Path(source)
    record = aggregate.run_info(folder)
    if not record:
        return None, folder, {}, {}
    spec = Spec.from_record(record)
    return (spec, folder, dict(record.get("experiments") or {}),
            dict(record.get("design") or record.get("experiments") or {}))


def analyse(source: str | os.PathLike | Spec, profile: str | None = "cpu", *,
            runs_dir: str | os.PathLike | None = None, alpha: float = 0.05,
            test: str = "t", factors: Sequence[str] | None = None,
            metrics: Sequence[str] = ("val_nll", "sw_survival"),
            n_resamples: int = 9999) -> Analysis:
    """Read the runs and compute every table of the findings (see the module docstring).

    Args:
        source: Spec name/path/:class:`~workbench.experiments.design.specs.Spec`, or a runs folder.
        profile: Profile the grid ran with (ignored for a folder, which records it).
        runs_dir: Root of the runs folders (default ``data/runs``).
        alpha: Family-wise error rate of the Holm corrections.
        test: ``"t"`` or ``"wilcoxon"`` for the Holm families.
        factors: Factors of the automatic one-factor pairs when the spec declares no
            question with ``auto:`` (default :data:`DEFAULT_FACTORS`, those present).
        metrics: Metrics of those automatic pairs.
        n_resamples: Bootstrap resamples of the CIs.

    Returns:
        An :class:`Analysis`.

    Raises:
        RuntimeError: If no run has finished (naming the folder).
    """
    spec, folder, parameters, design = _source(source, profile, runs_dir)
    if isinstance(source, (str, os.PathLike)) and Path(str(source)).is_dir():
        profile = aggregate.run_info(folder).get("profile", profile)
    df = aggregate.load_runs(folder)
    if df.empty:
        raise RuntimeError(f"no finished runs in {folder}: run the grid first")
    losses = aggregate.load_runs(folder, table="losses")
    summaries = aggregate.load_summaries(folder)
    a = Analysis(name=spec.name if spec else folder.name, profile=profile, runs_dir=folder,
                 spec=spec, parameters=parameters, design=design, records=df,
                 losses=losses, summaries=summaries, alpha=alpha, test=test)
    shown = [m for m in SUMMARY_METRICS if m in df]
    a.summary = aggregate.summarize(df, metrics=shown, wide=True)
    present = [m for m in SWEET_SPOT if m in summaries]
    if present:
        a.sweet_spot = aggregate.summarize(summaries, metrics=present, by=("experiment",),
                                           wide=True)
    questions = a.questions
    if questions and parameters:
        a.contrasts = contrasts.compute_contrasts(df, questions, parameters,
                                                  summaries=summaries, alpha=alpha,
                                                  test=test, n_resamples=n_resamples)
    auto_qs = [q for q in questions.values() if q.auto]
    if auto_qs:
        tables = [significance_table(df, q.auto, [m for m in (q.metrics or metrics)
                                                  if m in df], alpha=alpha, test=test,
                                     n_resamples=n_resamples).assign(question=q.name)
                  for q in auto_qs]
        a.auto = pd.concat(tables, ignore_index=True)
    elif not questions:
        fs = [f for f in (factors or DEFAULT_FACTORS) if f in df]
        a.auto = significance_table(df, fs, [m for m in metrics if m in df],
                                    alpha=alpha, test=test, n_resamples=n_resamples)
    described = sorted({m for q in questions.values() for m in q.describe})
    a.variance = variance_table(df, summaries, described or [m for m in metrics if m in df])
    return a


def variance_table(df: pd.DataFrame, summaries: pd.DataFrame,
                   metrics: Sequence[str]) -> pd.DataFrame:
    """Run-to-run spread per experiment: mean, sd (ddof=1), coefficient of variation
    ``sd / |mean|`` and n over seeds, at each experiment's last round (record metrics) or
    per run (summary scalars)."""
    rows = []
    last = df[df["round"] == df.groupby("experiment")["round"].transform("max")]
    for metric in metrics:
        source = last if metric in last else summaries if metric in summaries else None
        if source is None:
            continue
        for exp, vals in source.groupby("experiment")[metric]:
            v = pd.to_numeric(vals, errors="coerce").dropna()
            mean = float(v.mean()) if len(v) else math.nan
            sd = float(v.std(ddof=1)) if len(v) > 1 else math.nan
            rows.append(dict(experiment=exp, metric=metric, mean=mean, sd=sd,
                             cv=sd / abs(mean) if mean else math.nan, n=len(v)))
    return pd.DataFrame(rows, columns=["experiment", "metric", "mean", "sd", "cv", "n"])


# ----------------------------------------------------------------------------- scale
def scale_pairs(a: Analysis) -> list[tuple[Any, Any, list[str]]]:
    """``(real steps per round, design steps per round, experiments)``, by design size."""
    groups: dict[tuple, list[str]] = {}
    for exp, params in a.parameters.items():
        real = params.get("steps_per_round")
        design = a.design.get(exp, {}).get("steps_per_round", real)
        groups.setdefault((real, design), []).append(exp)
    return sorted(((r, d, e) for (r, d), e in groups.items()),
                  key=lambda t: (t[1] is None, t[1] or 0))


def _k(steps: Any) -> str:
    if isinstance(steps, (int, float)) and steps >= 1000 and steps % 1000 == 0:
        return f"{int(steps) // 1000}k"
    return str(steps)


def scale_title(a: Analysis) -> str:
    """One line for figure titles: spec, profile and the real steps per round."""
    pairs = scale_pairs(a)
    prof = a.profile or "as written"
    if not pairs:
        return f"{a.name}, profile {prof}"
    steps = ", ".join(f"{r} ({_k(d)} in the design)" if r != d else f"{r}"
                      for r, d, _ in pairs)
    epochs = epochs_range(a)
    tail = "" if epochs is None else f", {_epochs_text(epochs)} epochs/round"
    return f"{a.name}, profile {prof}: steps/round {steps}{tail}"


def epochs_range(a: Analysis) -> tuple[float, float] | None:
    """``(min, max)`` passes over the training split per round in the runs' records
    (``epochs_round``, :mod:`workbench.lottery.budget`); ``None`` for older records."""
    rec = a.records
    if rec is None or not len(rec) or "epochs_round" not in rec:
        return None
    e = pd.to_numeric(rec["epochs_round"], errors="coerce").dropna()
    return (float(e.min()), float(e.max())) if len(e) else None


def _epochs_text(epochs: tuple[float, float]) -> str:
    lo, hi = epochs
    return f"{lo:.3g}" if math.isclose(lo, hi, rel_tol=1e-3) else f"{lo:.3g}-{hi:.3g}"


def repeats_note(a: Analysis) -> str | None:
    """A sentence naming the experiments that trained more passes per round than their
    ``max_epochs`` (run with ``--allow-repeats``), or ``None``."""
    rec = a.records
    if rec is None or not len(rec) or not {"epochs_round", "max_epochs"} <= set(rec):
        return None
    over = rec[pd.to_numeric(rec["epochs_round"]) > pd.to_numeric(rec["max_epochs"])]
    if not len(over):
        return None
    worst = over.groupby("experiment")["epochs_round"].max()
    return ("Repeats allowed (--allow-repeats): " + ", ".join(
        f"{e} trains {v:.3g} epochs per round" for e, v in worst.items())
        + f", over max_epochs = {over['max_epochs'].iloc[0]:g}: perplexities there measure "
        "memorisation of the training split as much as what survives pruning.")


def scale_note(a: Analysis) -> str:
    """A paragraph stating the scale actually run (for findings.md)."""
    pairs = scale_pairs(a)
    prof = a.profile or "none (the spec as written)"
    parts = [f"Profile **{prof}**."]
    if pairs:
        parts.append("Real optimizer steps per round: " + "; ".join(
            f"{r} for {', '.join(sorted(e))} (design: {d})" for r, d, e in pairs) + ".")
    any_params = next(iter(a.parameters.values()), {})
    sizes = [f"{k} = {any_params[k]}" for k in ("batch_size", "seq_len", "grad_accum",
                                                 "n_val_blocks", "val_seq_len")
             if k in any_params]
    if sizes:
        parts.append("Sizes: " + ", ".join(sizes) + ".")
    epochs = epochs_range(a)
    if epochs is not None:
        parts.append(f"Passes over the training split per round: {_epochs_text(epochs)} "
                     "epochs (records: tokens_per_step, tokens_round, epochs_round).")
    repeats = repeats_note(a)
    if repeats:
        parts.append(repeats)
    if any(r != d for r, d, _ in pairs):
        parts.append("These are scaled-down budgets: every number below is a pilot of the "
                     "procedure, not a result at the design's scale.")
    return " ".join(parts)


# ----------------------------------------------------------------------------- super weights
#: Parameters of the super-weight detector (defaults: :class:`workbench.lottery.schema.IMPConfig`).
SW_SETTINGS = ("sw_threshold", "sw_spike_ratio", "sw_blocks", "sw_seq_len")


def sw_settings(a: Analysis) -> dict[str, list]:
    """The detector settings the runs used: ``{parameter: sorted distinct values}`` over
    the experiments (a run's parameters, else the schema default), plus ``max_iter`` and
    ``module`` of :func:`workbench.lottery.superweights.find_super_weights` (its
    defaults; the run cell does not override them)."""
    import dataclasses
    import inspect

    from workbench.lottery import superweights
    from workbench.lottery.schema import IMPConfig

    defaults = {f.name: f.default for f in dataclasses.fields(IMPConfig)}
    params = list(a.parameters.values()) or [{}]
    out = {key: sorted({p.get(key, defaults[key]) for p in params}) for key in SW_SETTINGS}
    sig = inspect.signature(superweights.find_super_weights).parameters
    out["max_iter"] = [sig["max_iter"].default]
    out["module"] = [superweights.DEFAULT_MODULE]
    return out


def _one(values: list) -> str:
    return "/".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def sw_definition(a: Analysis, *, short: bool = False) -> str:
    """What these runs call a super weight and how its pruning is detected.

    Yu et al. 2024 ("The Super Weight in Large Language Models"), as implemented in
    :func:`workbench.lottery.superweights.find_super_weights`, with the settings read
    from the runs (:func:`sw_settings`). ``short``: one line for a figure caption.
    """
    st = {k: _one(v) for k, v in sw_settings(a).items()}
    if short:
        return (f"SW (Yu et al. 2024): {st['module']}[row, col] with max |input| and "
                f"|output| >= {st['sw_threshold']}, output spike >= {st['sw_spike_ratio']}x "
                f"the next channel; detector on {st['sw_blocks']} val. blocks x "
                f"{st['sw_seq_len']} tokens; SW survival = share of the pre-trained SW "
                "coordinates the mask keeps")
    return (
        "**Super weight (SW)** (Yu et al. 2024, `workbench.lottery.superweights`): one "
        f"scalar `weight[row, col]` of a block's MLP output projection (`{st['module']}`; "
        "`mlp.c_proj` for GPT-2) where, in one forward pass, the largest absolute "
        "activation entering the projection (channel `col`) and the largest leaving it "
        f"(channel `row`) both reach **sw_threshold = {st['sw_threshold']}**, and that "
        f"output maximum is at least **sw_spike_ratio = {st['sw_spike_ratio']}** times the "
        "largest of any other output channel. Found SWs are zeroed and the pass repeated "
        f"(at most {st['max_iter']} passes), the model restored afterwards. Detector input: "
        f"**{st['sw_blocks']} validation blocks of {st['sw_seq_len']} tokens**. "
        "A SW counts as *pruned* when the round's mask is False at its coordinate: "
        "`sw_survival` is the share of the pre-trained model's SW coordinates the mask "
        "keeps; `esw_survival` the same for the SWs that emerged after the previous "
        "round's training (same detector and settings).")


# ----------------------------------------------------------------------------- markdown
def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return f"{float(x):.{digits}g}"


def _level(row) -> str:
    if row["at"] == "run":
        return "per run"
    if row["at"] == "round":
        return f"round {int(row['level'])}"
    return f"sparsity {float(row['level']):.3g}"


def contrast_lines(a: Analysis, rows: pd.DataFrame) -> list[str]:
    """Markdown table rows (one per level) and a verdict line for one contrast x metric."""
    first = rows.iloc[0]
    head = (f"**{first['contrast']}**: {a.label(first['b'])} (b) vs {a.label(first['a'])} "
            f"(a) on `{first['metric']}`")
    tested = rows[rows["n"].fillna(0) > 0]
    if not len(tested):
        return [f"- {head}: not tested ({first.get('note') or 'no data'})."]
    out = [f"- {head}:", "",
           "  | level | rounds a/b | a: mean ± sd | b: mean ± sd | n | diff b-a [95% CI] | "
           "d_z | p (t) | p (Wilcoxon) | Holm p |",
           "  |---|---|---|---|---|---|---|---|---|---|"]
    for _, r in tested.iterrows():
        out.append(
            f"  | {_level(r)} | {_fmt(r['round_a'])}/{_fmt(r['round_b'])} | "
            f"{_fmt(r['mean_a'])} ± {_fmt(r['sd_a'], 2)} | {_fmt(r['mean_b'])} ± "
            f"{_fmt(r['sd_b'], 2)} | {_fmt(r['n'])} | {_fmt(r['mean_diff'])} "
            f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}] | {_fmt(r['d_z'], 2)} | "
            f"{_fmt(r['p_t'])} | {_fmt(r['p_wilcoxon'])} | {_fmt(r['p_holm'])} |")
    out += ["", f"  Verdict: {contrasts.verdict(rows, first['expect'], alpha=a.alpha)}."]
    return out


def question_section(a: Analysis, question) -> str:
    """The findings.md section of one question."""
    lines = [f"## {question.text}", "", f"Question id `{question.name}`."]
    table = a.contrasts
    if question.contrasts:
        lines += ["", f"Test: paired {'t-test' if a.test == 't' else 'Wilcoxon test'} over "
                  f"seeds (Wilcoxon alongside), Holm-corrected over all "
                  f"{int(table['p_holm'].notna().sum())} declared tests at alpha = "
                  f"{a.alpha:g}; effect size d_z = mean(b - a) / sd(b - a).", ""]
        for c in question.contrasts:
            for metric in c.metrics:
                rows = table[(table["contrast"] == c.name) & (table["metric"] == metric)]
                if len(rows):
                    lines += contrast_lines(a, rows)
    if question.name == "sweet_spot" or set(question.metrics) & set(SWEET_SPOT):
        if len(a.sweet_spot):
            lines += ["", "Sweet spot per experiment (mean ± sd over seeds; "
                      "critical sparsity is missing for runs whose perplexity never "
                      "doubled):", "", _markdown_table(a.sweet_spot.assign(
                          experiment=[a.label(e) for e in a.sweet_spot["experiment"]]
                      ).replace("nan", "never reached"))]
    if question.describe and len(a.variance):
        v = a.variance[a.variance["metric"].isin(question.describe)]
        lines += ["", "Run-to-run variance at each experiment's last round (sd over "
                  "seeds, cv = sd / |mean|):", "", _markdown_table(v.round(4))]
    if question.auto and len(a.auto):
        t = a.auto[a.auto["question"] == question.name] if "question" in a.auto else a.auto
        lines += ["", describe(t, alpha=a.alpha)]
    return "\n".join(lines)


def _markdown_table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    rows = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        rows.append("| " + " | ".join(_fmt(v) if isinstance(v, (float, np.floating))
                                      else str(v) for v in r) + " |")
    return "\n".join(rows)


def findings_markdown(a: Analysis) -> str:
    """``findings.md``: header with the scale, then one section per question."""
    n_runs = a.records.groupby(["experiment", "seed"]).ngroups
    exps = sorted(a.records["experiment"].unique())
    lines = [f"# Findings: {a.name} (profile {a.profile or 'as written'})", "",
             scale_note(a), "",
             f"{n_runs} finished runs of {len(exps)} experiments ({', '.join(exps)}), seeds "
             f"{sorted(int(s) for s in a.records['seed'].unique())}, from `{a.runs_dir}`. "
             "Perplexity is tested on its logarithm (`val_nll`, nats per token): a paired "
             "difference of log-perplexities is a log perplexity ratio.", "",
             sw_definition(a), ""]
    if a.spec is not None and a.spec.references():
        refs = [e for e in a.spec.references() if e in exps]
        if refs:
            lines += ["Controls (reference lines in the figures): " + "; ".join(
                f"{a.label(e)}: final val_ppl {_fmt(_final(a.records, e, 'val_ppl'))}"
                for e in refs) + ".", ""]
    for q in a.questions.values():
        lines += [question_section(a, q), ""]
    if not a.questions:
        lines += ["## One-factor pairs", "", describe(a.auto, alpha=a.alpha), ""]
    lines += ["## Summary (mean ± sd over seeds, per experiment and round)", "",
              _markdown_table(a.summary), ""]
    return "\n".join(lines)


def _final(df: pd.DataFrame, experiment: str, metric: str) -> float:
    sub = df[df["experiment"] == experiment]
    if metric not in sub or sub.empty:
        return math.nan
    return float(sub[sub["round"] == sub["round"].max()][metric].mean())


def write_findings(a: Analysis, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``findings.md`` and the tables (``summary.csv``, ``sweet_spot.csv``,
    ``contrasts.csv``, ``significance.csv``, ``variance.csv``) to ``out_dir``."""
    out = Path(out_dir)
    paths = {"findings": io.write_text(out / "findings.md", findings_markdown(a))}
    for name, table in (("summary", a.summary), ("sweet_spot", a.sweet_spot),
                        ("contrasts", a.contrasts), ("significance", a.auto),
                        ("variance", a.variance)):
        paths[name] = io.write_text(out / f"{name}.csv", table.to_csv(index=False))
    return paths


def figures(a: Analysis, out_dir: str | os.PathLike, *, prefix: str | None = None) -> dict:
    """Sparsity vs perplexity and SW survival (controls as reference lines) and the loss
    curves, titled with the profile and real steps per round; saved as PDF + PNG."""
    import matplotlib.pyplot as plt

    prefix = prefix or a.name
    title = scale_title(a)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.0))
    plots.plot_sparsity_curve(a.records, "val_ppl", ax=axes[0], spec=a.spec)
    plots.plot_sw_survival(a.records, ax=axes[1], spec=a.spec)
    fig.suptitle(title, fontsize=9)
    fig.text(0.5, 0.005, sw_definition(a, short=True), ha="center", va="bottom", fontsize=6,
             wrap=True)
    fig.subplots_adjust(bottom=0.2)
    out = {"sparsity": plots.save_figure(fig, f"{prefix}_sparsity", folder=out_dir)}
    if not a.losses.empty:
        fig2, _ = plots.plot_loss_curves(a.losses, spec=a.spec, title=title)
        out["losses"] = plots.save_figure(fig2, f"{prefix}_losses", folder=out_dir)
    return out


def contrast_table(a: Analysis, digits: int = 4) -> pd.DataFrame:
    """The declared contrasts as a compact display table (tested rows only)."""
    t = a.contrasts
    if t is None or not len(t):
        return pd.DataFrame()
    cols = ["question", "contrast", "b", "a", "metric", "at", "level", "n", "mean_b",
            "mean_a", "mean_diff", "d_z", "p_t", "p_holm", "significant"]
    return t[t["n"].fillna(0) > 0][cols].round(digits)


def verdicts(a: Analysis) -> pd.DataFrame:
    """One row per (question, contrast, metric) with its one-line verdict."""
    rows = []
    for q in a.questions.values():
        for c in q.contrasts:
            for metric in c.metrics:
                sub = a.contrasts[(a.contrasts["contrast"] == c.name)
                                  & (a.contrasts["metric"] == metric)]
                rows.append(dict(question=q.name, contrast=c.name, metric=metric,
                                 verdict=contrasts.verdict(sub, c.expect, alpha=a.alpha)))
    return pd.DataFrame(rows, columns=["question", "contrast", "metric", "verdict"])
