"""Two SLURM jobs on one node without CPU binding: torch threads capped or not.

Each job has one CPU (``-c 1``) and starts a child Python process (as a grid job starts
its notebook kernel) that runs a fixed torch workload. ``uncapped``: the child keeps
torch's default (every CPU of the node, since ``TaskPlugin=task/none`` binds nothing);
``capped``: the job first calls :func:`workbench.experiments.running.scheduler.limit_threads` with
:func:`workbench.experiments.running.scheduler.allocated_cpus`, as ``run_leased_cell`` does.

    python benchmarks/bench_slurm_threads.py            # needs SLURM (scripts/slurm_up.sh)

Prints per mode the child's torch threads and the mean wall time of the two jobs, then the
ratio uncapped / capped. On a node with many cores the oversubscription is large (issue 13
measured 5x); on a 2-core node it can only be small.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import json, time, torch
a = torch.randn(384, 384)
t0 = time.perf_counter()
for _ in range({reps}):
    a = torch.tanh(a @ a.T / 384)
print(json.dumps({{"threads": torch.get_num_threads(), "seconds": time.perf_counter() - t0}}))
"""


def job(mode: str, reps: int) -> None:
    if mode == "capped":
        from workbench.experiments.running import scheduler

        scheduler.limit_threads(scheduler.allocated_cpus())
    out = subprocess.run([sys.executable, "-c", CHILD.format(reps=reps)], check=True,
                         capture_output=True, text=True).stdout
    print(out.strip().splitlines()[-1], flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--job", choices=["capped", "uncapped"])
    p.add_argument("--reps", type=int, default=1500)
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args()
    if args.job:
        return job(args.job, args.reps)
    if shutil.which("sinfo") is None or subprocess.run(
            ["sinfo", "-h"], capture_output=True, timeout=30).returncode != 0:
        print("bench_slurm_threads: skipped (no reachable SLURM controller; bring one up "
              "with scripts/slurm_up.sh)")
        return None
    tmp = Path(tempfile.mkdtemp(prefix="bench_slurm_threads_"))
    results = {}
    for mode in ("uncapped", "capped"):
        ids = []
        for k in range(args.jobs):
            cmd = f"{sys.executable} {Path(__file__).resolve()} --job {mode} --reps {args.reps}"
            ids.append(subprocess.run(
                ["sbatch", "--parsable", "-c", "1", "-J", f"bench-{mode}", "-o",
                 str(tmp / f"{mode}-{k}.out"), "--wrap", cmd],
                check=True, capture_output=True, text=True).stdout.strip())
        while subprocess.run(["squeue", "-h", "-j", ",".join(ids)], capture_output=True,
                             text=True).stdout.strip():
            time.sleep(1)
        rows = [json.loads((tmp / f"{mode}-{k}.out").read_text().strip().splitlines()[-1])
                for k in range(args.jobs)]
        results[mode] = rows
        mean = sum(r["seconds"] for r in rows) / len(rows)
        print(f"{mode:9s} torch threads {[r['threads'] for r in rows]}  "
              f"mean {mean:.2f} s over {len(rows)} concurrent jobs", flush=True)
    ratio = (sum(r["seconds"] for r in results["uncapped"])
             / sum(r["seconds"] for r in results["capped"]))
    print(f"uncapped / capped wall time: {ratio:.2f}x (node CPUs: {os.cpu_count()})")


if __name__ == "__main__":
    main()
