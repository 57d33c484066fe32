"""Foundation layer: models, token data, evaluation, reproducibility, file I/O, paths.

Nothing here imports from the layers above (pruning, curvature, lottery, experiments).
"""
