"""Command line of the workbench.

``workbench notebook NAME``      run one notebook through papermill
``workbench grid run SPEC``      run (or resume) an experiment grid
``workbench grid status SPEC``   show the state of every cell of a grid
``workbench pilot``              the main job: the pilot grid, then its analysis notebook
"""

from __future__ import annotations

import argparse
import sys
import time

from workbench.experiments import notebooks

from workbench.core import paths


def _notebook(args: argparse.Namespace) -> int:
    params = {}
    for key, value in args.param or []:
        import yaml

        params[key] = yaml.safe_load(value)
    out = args.output or paths.RUNS_DIR / "notebooks" / f"{args.name}.ipynb"
    t0 = time.perf_counter()
    notebooks.run_notebook(args.name, out, params, progress=True)
    print(f"wrote {out} in {time.perf_counter() - t0:.1f} s")
    return 0


def _profile(value: str) -> str | None:
    return None if value in ("none", "") else value


def _grid_run(args: argparse.Namespace) -> int:
    from workbench.experiments import grid

    t0 = time.perf_counter()
    table = grid.run_grid(args.spec, _profile(args.profile), jobs=args.jobs,
                          executor=args.executor, runs_dir=args.runs_dir,
                          rerun_failed=not args.keep_failed, timeout=args.timeout,
                          mlflow=args.mlflow or False)
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
    import pandas as pd

    from workbench.experiments import grid

    table = grid.status(args.spec, _profile(args.profile), args.runs_dir)
    with pd.option_context("display.max_rows", 500, "display.width", 160,
                           "display.max_colwidth", 60):
        print(table[["experiment", "seed", "state", "seconds", "error"]].to_string(index=False))
    counts = table["state"].value_counts().to_dict()
    print(", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
          f"of {len(table)} cells in {table['directory'].iloc[0].rsplit('/', 2)[0]}")
    return 0


def _pilot(args: argparse.Namespace) -> int:
    """The pilot grid with the profile, then the analysis notebook on its runs."""
    from workbench.experiments import grid

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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``workbench`` command."""
    parser = argparse.ArgumentParser(prog="workbench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    nb = sub.add_parser("notebook", help="run one notebook through papermill")
    nb.add_argument("name")
    nb.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "YAML_VALUE"))
    nb.add_argument("-o", "--output")
    nb.set_defaults(func=_notebook)

    def grid_options(p: argparse.ArgumentParser, run: bool) -> None:
        p.add_argument("--profile", default="cpu",
                       help="profile from data/experiments/profiles.yaml, or 'none'")
        p.add_argument("--runs-dir", default=None, help="root of the runs (default data/runs)")
        if run:
            p.add_argument("--jobs", type=int, default=1, help="cells at the same time")
            p.add_argument("--executor", default="local",
                           choices=["local", "slurm", "submitit-local", "debug"])

    g = sub.add_parser("grid", help="experiment grids from data/experiments/*.yaml")
    gsub = g.add_subparsers(dest="grid_command", required=True)
    run = gsub.add_parser("run", help="run or resume every unfinished cell of a spec")
    run.add_argument("spec", help="spec name (data/experiments/NAME.yaml) or path")
    grid_options(run, True)
    run.add_argument("--keep-failed", action="store_true", help="do not re-run failed cells")
    run.add_argument("--timeout", type=int, default=None, help="per notebook cell, seconds")
    run.add_argument("--mlflow", nargs="?", const=True, default=None, metavar="TRACKING_URI",
                     help="log finished cells to MLflow (needs mlflow installed)")
    run.set_defaults(func=_grid_run)
    st = gsub.add_parser("status", help="state of every cell of a spec")
    st.add_argument("spec")
    grid_options(st, False)
    st.set_defaults(func=_grid_status)

    pilot = sub.add_parser("pilot", help="the main job: pilot grid + analysis")
    grid_options(pilot, True)
    pilot.set_defaults(func=_pilot)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
