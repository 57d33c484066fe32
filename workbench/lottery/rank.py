"""A rank's entry point: ``python -m workbench.lottery.rank --config JSON [--run-dir D]
[--progress]``.

:func:`workbench.lottery.distributed.launch` starts every rank of a local N-process cell
with this module (torchrun can too): each runs :func:`workbench.lottery.cell.run` as rank
k of N in the process group the environment describes (``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ...). On ranks > 0 writes into the run folder are forbidden first
(:func:`workbench.lottery.distributed.forbid_writes_under`): only rank 0 writes.

It is a module of its own because it runs the cell: :mod:`workbench.lottery.cell` uses
:mod:`workbench.lottery.distributed` to launch the ranks, so the entry point cannot live
there without an import cycle.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from workbench.lottery import cell
from workbench.lottery.distributed import RANK_MODULE, forbid_writes_under


def main(argv: Sequence[str] | None = None) -> int:
    """Run the cell as this process's rank; see the module docstring.

    Args:
        argv: Command-line arguments (default ``sys.argv[1:]``): ``--config`` (the
            :class:`~workbench.lottery.schema.IMPConfig` as JSON), ``--run-dir`` (the
            cell folder; rank 0 writes its checkpoints there), ``--progress`` (progress
            bars on rank 0).

    Returns:
        The exit status, 0.
    """
    parser = argparse.ArgumentParser(prog=f"python -m {RANK_MODULE}")
    parser.add_argument("--config", required=True, help="IMPConfig as JSON")
    parser.add_argument("--run-dir", default=None)
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    if args.run_dir is not None and int(os.environ.get("RANK", "0")) > 0:
        forbid_writes_under(Path(args.run_dir))
    cell.run(json.loads(args.config), args.run_dir,
             progress=args.progress and os.environ.get("RANK", "0") == "0", nproc=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
