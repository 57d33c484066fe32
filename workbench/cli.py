"""Command line: ``workbench notebook NAME`` and ``workbench pilot``."""

from __future__ import annotations

import argparse
import sys
import time

from . import notebooks, paths


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


def _pilot(args: argparse.Namespace) -> int:
    # Until the experiment grid exists, the main job is the quickstart notebook.
    ns = argparse.Namespace(name="00_quickstart", param=[], output=None)
    return _notebook(ns)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``workbench`` command."""
    parser = argparse.ArgumentParser(prog="workbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    nb = sub.add_parser("notebook", help="run one notebook through papermill")
    nb.add_argument("name")
    nb.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "YAML_VALUE"))
    nb.add_argument("-o", "--output")
    nb.set_defaults(func=_notebook)
    pilot = sub.add_parser("pilot", help="the main job: pilot grid + analysis")
    pilot.add_argument("--profile", default="cpu")
    pilot.add_argument("--jobs", type=int, default=1)
    pilot.set_defaults(func=_pilot)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
