"""How a grid runs: the run layout, cells and their states, notebooks, schedulers, SLURM, the grid.

Modules, each importing only those above it:

* :mod:`.runs`: the run layout (every file name of a grid, run and cell folder; writing
  and reading a finished run, the completion rule);
* :mod:`.cell_state`: a cell folder's state, the dead-owner check, leftovers;
* :mod:`.notebooks`: executing a notebook (papermill, the kernel, heartbeat bars; the
  contract it checks is :mod:`workbench.experiments.design.notebook_contract`);
* :mod:`.cell`: one cell of a grid: running its notebook once, recording a lost attempt;
* :mod:`.scheduler`: asking SLURM about jobs, capping threads;
* :mod:`.slurm`: SLURM cells exactly once (leases; runs :mod:`.cell`, never the grid);
* :mod:`.grid`: planning and running a spec's cells on an executor.
"""
