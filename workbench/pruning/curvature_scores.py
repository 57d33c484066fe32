"""Curvature-based importance kinds and pruning methods (OBD with true / empirical
diagonal Fisher, K-FAC OBS saliency), registered in :mod:`workbench.pruning.registry`.
"""
