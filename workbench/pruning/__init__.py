"""Pruning layer: importance scores, masks and thresholds, calibration statistics,
weight corrections, the gradient probe, and the one-shot methods built from them.

Imports only :mod:`workbench.core` and :mod:`workbench.curvature`.
"""
