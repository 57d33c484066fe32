"""Command line of the workbench.

``workbench notebook NAME``      run one notebook through papermill
``workbench grid run SPEC``      run (or resume) an experiment grid
``workbench grid status SPEC``   show the state of every cell of a grid
``workbench pilot``              the main job: the pilot grid, then its analysis notebook
``workbench reproduce TABLE``    a published table's methods and protocol on a local model
``workbench data prepare SOURCE --tokenizer MODEL --out DIR``   token shards of a corpus
``workbench data adopt DIR --tokenizer MODEL``   a manifest for a nanoGPT folder
``workbench data info DIR``      what a shard folder holds (``--verify``: file hashes)

A user error (a bad argument, a missing file, a malformed spec, a notebook parameter the
notebook rejects) prints one line ``workbench: error: ...`` on stderr and exits with
status 2; ``--debug`` (or ``WORKBENCH_DEBUG=1``) shows the full traceback instead.
Ctrl-C exits with 130. Anything else is a bug and keeps its traceback.

Paths: ``-o`` is relative to the working directory (as for any command); notebook
parameters that are paths (``-p output_dir data/runs/x``) are read by the notebook
against the project root (``workbench.core.paths.resolve``), wherever it runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from workbench.core import io, paths
from workbench.experiments.running import notebooks

#: Exceptions that mean "the user asked for something wrong", not "the workbench broke".
USER_ERRORS = (ValueError, TypeError, LookupError, OSError)
#: Exception names inside an executed notebook that count as user errors.
_USER_ERROR_NAMES = {"ValueError", "TypeError", "KeyError", "LookupError", "FileNotFoundError",
                     "IsADirectoryError", "NotADirectoryError", "PermissionError"}


class UserError(Exception):
    """A user error found by the command line itself (exit status 2)."""


def _parse_params(pairs) -> dict:
    import yaml

    params = {}
    for key, value in pairs or []:
        try:
            params[key] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            first = str(err).splitlines()[0]
            raise UserError(f"-p {key}: value {value!r} is not valid YAML ({first})") from err
    return params


def _notebook(args: argparse.Namespace) -> int:
    params = _parse_params(args.param)
    # A path typed on the command line is relative to the shell's working directory.
    out = Path(args.output).resolve() if args.output else (
        paths.RUNS_DIR / "notebooks" / f"{args.name}.ipynb")
    t0 = time.perf_counter()
    notebooks.run_notebook(args.name, out, params, progress=True)
    print(f"wrote {out} in {time.perf_counter() - t0:.1f} s")
    return 0


def _profile(value: str) -> str | None:
    return None if value in ("none", "") else value


def _check_spec_name(spec: str) -> None:
    """A spec name or path exists (cheap: no torch, no spec parsing), else a UserError
    listing the specs under ``data/experiments/``."""
    p = Path(spec)
    for c in (p, paths.EXPERIMENTS_DIR / p, paths.EXPERIMENTS_DIR / f"{p}.yaml"):
        if c.is_file():
            return
    names = sorted(q.stem for q in paths.EXPERIMENTS_DIR.glob("*.yaml")
                   if q.name != "profiles.yaml")
    raise UserError(f"spec {spec!r} not found (neither a file nor a spec under "
                    f"{paths.EXPERIMENTS_DIR}); available: {names}")


def _check_executor(executor: str) -> None:
    """``--executor slurm`` needs SLURM's ``sbatch`` on this machine."""
    import shutil

    if executor == "slurm" and shutil.which("sbatch") is None:
        raise UserError("--executor slurm: SLURM is not available here (no 'sbatch' on "
                        "PATH); use --executor local, submitit-local or debug")


def _check_runs_dir(runs_dir: str | None) -> None:
    """An explicit ``--runs-dir`` to read must exist (else every cell reads as pending)."""
    if runs_dir is not None and not Path(runs_dir).is_dir():
        raise UserError(f"--runs-dir {runs_dir!r} does not exist or is not a folder "
                        f"(relative to {Path.cwd()}); omit it for the default "
                        f"{paths.RUNS_DIR}")


def _grid_run(args: argparse.Namespace) -> int:
    _check_spec_name(args.spec)
    _check_executor(args.executor)
    from workbench.experiments.running import grid

    t0 = time.perf_counter()
    table = grid.run_grid(args.spec, _profile(args.profile), jobs=args.jobs,
                          executor=args.executor, runs_dir=args.runs_dir,
                          rerun_failed=not args.keep_failed, timeout=args.timeout,
                          mlflow=args.mlflow or False, nproc=args.nproc,
                          allow_repeats=args.allow_repeats)
    return _report(table, time.perf_counter() - t0)


def _report(table, seconds: float) -> int:
    counts = table["state"].value_counts().to_dict()
    print(f"grid finished in {seconds / 60:.1f} min: "
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if len(table):
        print(f"runs: {table['directory'].iloc[0].rsplit('/', 2)[0]}")
    for _, row in table[table["state"] != "done"].iterrows():
        print(f"  {row['experiment']}/seed{row['seed']}: {row['state']} {row['error'] or ''}"
              f" -> {row['notebook'] or row['directory']}")
    return 0 if counts.get("done", 0) == len(table) else 1


def _grid_status(args: argparse.Namespace) -> int:
    _check_spec_name(args.spec)
    _check_runs_dir(args.runs_dir)
    import pandas as pd

    from workbench.experiments.running import grid

    table = grid.status(args.spec, _profile(args.profile), args.runs_dir)
    with pd.option_context("display.max_rows", 500, "display.width", 160,
                           "display.max_colwidth", 60):
        shown = table[["experiment", "seed", "state", "seconds", "round", "step", "elapsed",
                       "heartbeat", "doing", "error"]].copy()
        shown["elapsed"] = [None if v is None or v != v else f"{v / 60:.1f} min"
                            for v in shown["elapsed"]]
        shown["heartbeat"] = [None if v is None or v != v else f"{v:.0f} s ago"
                              for v in shown["heartbeat"]]
        print(shown.astype(object).where(shown.notna(), "").to_string(index=False))
    counts = table["state"].value_counts().to_dict()
    print(", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
          f"of {len(table)} cells in {table['directory'].iloc[0].rsplit('/', 2)[0]}")
    return 0


def _pilot(args: argparse.Namespace) -> int:
    """The pilot grid with the profile, then the analysis notebook on its runs."""
    _check_executor(args.executor)
    from workbench.experiments.running import grid

    profile = _profile(args.profile)
    t0 = time.perf_counter()
    print(f"[pilot] step 1/2: grid 'pilot' with profile {profile!r}, {args.jobs} job(s)",
          flush=True)
    table = grid.run_grid("pilot", profile, jobs=args.jobs, executor=args.executor,
                          runs_dir=args.runs_dir)
    grid_seconds = time.perf_counter() - t0
    _report(table, grid_seconds)
    root = table["directory"].iloc[0].rsplit("/", 2)[0]
    print("[pilot] step 2/2: analysis notebook 05_pilot_analysis", flush=True)
    out = f"{root}/analysis/05_pilot_analysis.ipynb"
    params = {"spec": "pilot", "profile": profile or "none", "runs": root,
              "out_dir": str(paths.FIGURES_DIR / "pilot")}
    notebooks.run_notebook("05_pilot_analysis", out, params, progress=True)
    total = time.perf_counter() - t0
    print(f"[pilot] done in {total / 60:.1f} min (grid {grid_seconds / 60:.1f} min); "
          f"figures and tables in {paths.FIGURES_DIR / 'pilot'}; notebook {out}")
    return 0 if (table["state"] == "done").all() else 1


def _reproduce(args: argparse.Namespace) -> int:
    """A published table's methods with its protocol cards on a local model."""
    from workbench.pruning import reproduce  # imported on use: it loads torch

    reproduce.check_reproduce_arguments(  # before the model loads
        args.table, data=args.data, seq_len=args.seq_len, n_eval=args.n_eval,
        n_calibration=args.n_calibration, seeds=args.seeds, batch_size=args.batch_size)
    model = Path(args.model)
    if not model.exists():
        raise FileNotFoundError(f"--model: model folder {model} does not exist")
    t0 = time.perf_counter()
    result = reproduce.reproduce(args.table, str(model), data=args.data, seq_len=args.seq_len,
                                 n_eval=args.n_eval, n_calibration=args.n_calibration,
                                 seeds=args.seeds, batch_size=args.batch_size)
    out = Path(args.output).resolve() if args.output else (
        paths.RUNS_DIR / "reproduce" / args.table)
    io.write_parquet(out / "rows.parquet", result.rows)
    io.write_parquet(out / "comparison.parquet", result.comparison)
    print(result.text())
    print(f"\nwrote {out} in {time.perf_counter() - t0:.0f} s")
    return 0


def _fractions(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be three comma-separated fractions such as "
                                         f"0.8,0.1,0.1, got {text!r}") from None


def _data_prepare(args: argparse.Namespace) -> int:
    from workbench.core import shards

    out = Path(args.out).expanduser().resolve()  # relative to the working directory
    result = shards.prepare_shards(
        args.source, args.tokenizer, out, splits=args.splits, seed=args.seed,
        batch_documents=args.batch_documents, text_field=args.text_field,
        hf_config=args.hf_config, hf_split=args.hf_split, overwrite=args.overwrite,
        progress=not args.no_progress)
    print(shards.describe(result))
    print(f"wrote {out / shards.MANIFEST}")
    return 0


def _data_adopt(args: argparse.Namespace) -> int:
    from workbench.core import shards

    result = shards.adopt_nanogpt(args.folder, args.tokenizer,
                                  count_documents=args.count_documents)
    print(shards.describe(result))
    print(f"wrote {result.path / shards.MANIFEST}")
    return 0


def _data_info(args: argparse.Namespace) -> int:
    from workbench.core import shards

    result = shards.open_shards(args.folder, tokenizer_name=args.tokenizer_name)
    print(shards.describe(result))
    if args.verify:
        result.verify()
        print("verified: every split file matches its SHA-256 in the manifest")
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (status 2), like the others."""

    def error(self, message: str):  # noqa: D102
        self.exit(2, f"workbench: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``workbench`` command."""
    debug = _Parser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback of an error")
    parser = _Parser(prog="workbench", description=__doc__, parents=[debug],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    nb = sub.add_parser("notebook", help="run one notebook through papermill", parents=[debug])
    nb.add_argument("name")
    nb.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "YAML_VALUE"))
    nb.add_argument("-o", "--output")
    nb.set_defaults(func=_notebook)

    def grid_options(p: argparse.ArgumentParser, run: bool) -> None:
        p.add_argument("--profile", default="cpu",
                       help="profile from data/experiments/profiles.yaml, or 'none'")
        p.add_argument("--runs-dir", default=None, help="root of the runs (default data/runs)")
        if run:
            p.add_argument("--jobs", type=_positive_int, default=1,
                           help="cells at the same time")
            p.add_argument("--executor", default="local",
                           choices=["local", "slurm", "submitit-local", "debug"])

    g = sub.add_parser("grid", help="experiment grids from data/experiments/*.yaml",
                       parents=[debug])
    gsub = g.add_subparsers(dest="grid_command", required=True)
    run = gsub.add_parser("run", help="run or resume every unfinished cell of a spec",
                          parents=[debug])
    run.add_argument("spec", help="spec name (data/experiments/NAME.yaml) or path")
    grid_options(run, True)
    run.add_argument("--keep-failed", action="store_true", help="do not re-run failed cells")
    run.add_argument("--timeout", type=_positive_int, default=None,
                     help="per notebook cell, seconds")
    run.add_argument("--mlflow", nargs="?", const=True, default=None, metavar="TRACKING_URI",
                     help="log finished cells to MLflow (needs mlflow installed)")
    run.add_argument("--nproc", type=_positive_int, default=1,
                     help="processes per cell (torch.distributed DDP; gloo on CPU, NCCL on "
                          "CUDA); on SLURM use the spec's slurm.tasks_per_node instead")
    run.add_argument("--allow-repeats", action="store_true",
                     help="run plans over max_epochs passes of the training split anyway")
    run.set_defaults(func=_grid_run)
    st = gsub.add_parser("status", help="state of every cell of a spec", parents=[debug])
    st.add_argument("spec")
    grid_options(st, False)
    st.set_defaults(func=_grid_status)

    pilot = sub.add_parser("pilot", help="the main job: pilot grid + analysis", parents=[debug])
    grid_options(pilot, True)
    pilot.set_defaults(func=_pilot)

    rep = sub.add_parser("reproduce", parents=[debug],
                         help="a published table's methods and protocol on a local model")
    rep.add_argument("table", help="published table, e.g. wanda-llama2-7b (data/tables/*.yaml)")
    rep.add_argument("--model", required=True, help="local model folder")
    rep.add_argument("--data", default=None,
                     help="folder holding the protocol cards' files (as the hub distributes "
                          "them); default: the datasets cache")
    rep.add_argument("--seq-len", type=_positive_int, default=None,
                     help="window length (default the table's, e.g. 4096)")
    rep.add_argument("--n-eval", type=_positive_int, default=None,
                     help="evaluate only the first N windows (default all)")
    rep.add_argument("--n-calibration", type=_positive_int, default=None,
                     help="calibration windows per seed (default the table's, 128)")
    rep.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    rep.add_argument("--batch-size", type=_positive_int, default=8)
    rep.add_argument("-o", "--output", help="folder for rows.parquet and comparison.parquet")
    rep.set_defaults(func=_reproduce)
    d = sub.add_parser("data", help="token shards on disk (workbench.core.shards)",
                       parents=[debug])
    dsub = d.add_subparsers(dest="data_command", required=True)
    prep = dsub.add_parser("prepare", help="tokenize a corpus into a shard folder",
                           parents=[debug])
    prep.add_argument("source", help="wiki-excerpt, lee, a .txt/.jsonl/.parquet file, a folder "
                      "of them, or a Hugging Face dataset 'owner/name' in the local cache")
    prep.add_argument("--tokenizer", required=True, metavar="MODEL",
                      help="model spec whose tokenizer to use (smollm2-135m, tiny-llama, a "
                      "local model directory, ...); the weights are not loaded")
    prep.add_argument("--out", required=True, metavar="DIR",
                      help="shard folder to create (relative to the working directory)")
    prep.add_argument("--seed", type=int, default=0, help="seed of the document split")
    prep.add_argument("--splits", type=_fractions, default=(0.8, 0.1, 0.1),
                      metavar="TRAIN,VAL,TEST", help="fractions of documents (default "
                      "0.8,0.1,0.1)")
    prep.add_argument("--batch-documents", type=_positive_int, default=512,
                      help="documents tokenized at a time (bounds memory)")
    prep.add_argument("--text-field", default="text",
                      help="field of the text in .jsonl/.parquet/datasets")
    prep.add_argument("--hf-config", default=None, help="Hugging Face dataset config")
    prep.add_argument("--hf-split", default="train", help="Hugging Face dataset split to read")
    prep.add_argument("--overwrite", action="store_true", help="replace an existing DIR")
    prep.add_argument("--no-progress", action="store_true", help="no progress bar")
    prep.set_defaults(func=_data_prepare)
    adopt = dsub.add_parser("adopt", help="write a manifest.json into a nanoGPT folder "
                            "(train.bin, val.bin, uint16); the .bin files stay as they are",
                            parents=[debug])
    adopt.add_argument("folder")
    adopt.add_argument("--tokenizer", required=True, metavar="MODEL",
                       help="the tokenizer the folder was made with (nanoGPT: GPT-2's)")
    adopt.add_argument("--count-documents", action="store_true",
                       help="count documents as EOS tokens (reads every file once)")
    adopt.set_defaults(func=_data_adopt)
    info = dsub.add_parser("info", help="what a shard folder holds", parents=[debug])
    info.add_argument("folder")
    info.add_argument("--tokenizer-name", default=None,
                      help="tokenizer of a nanoGPT folder without a manifest")
    info.add_argument("--verify", action="store_true", help="check every file's SHA-256")
    info.set_defaults(func=_data_info)
    return parser


def _one_line(exc: BaseException) -> str:
    """The error as one line: the message, or the type name when there is none."""
    text = " ".join(str(exc).split())
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        text = f"unknown key {exc.args[0]!r}"
    if isinstance(exc, OSError) and exc.filename is not None and str(exc.filename) not in text:
        text = f"{text}: {exc.filename}"
    return text or type(exc).__name__


def _notebook_error(exc: BaseException) -> tuple[str, int] | None:
    """Message and exit status for a failure inside a notebook run by papermill."""
    if "papermill" not in sys.modules:  # no notebook ran: do not import papermill (slow)
        return None
    try:
        from papermill.exceptions import PapermillExecutionError
    except ImportError:  # pragma: no cover
        return None
    if not isinstance(exc, PapermillExecutionError):
        return None
    message = " ".join(str(exc.evalue).split())
    status = 2 if exc.ename in _USER_ERROR_NAMES else 1
    return (f"notebook cell {exc.exec_count} raised {exc.ename}: {message}", status)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``workbench`` command (returns the exit status)."""
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors: argparse prints them and exits 2
    debug = getattr(args, "debug", False) or os.environ.get("WORKBENCH_DEBUG") == "1"
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print("workbench: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        import yaml

        failed = _notebook_error(exc)
        if failed is not None:
            message, status = failed
        elif isinstance(exc, (UserError, yaml.YAMLError, *USER_ERRORS)):
            message, status = _one_line(exc), 2
        else:
            raise
        print(f"workbench: error: {message} (run with --debug for the traceback)",
              file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
