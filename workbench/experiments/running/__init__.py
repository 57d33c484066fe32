"""How a grid runs: the run layout, cells and their states, notebooks, schedulers, SLURM, the grid."""
