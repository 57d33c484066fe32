"""Lottery-ticket layer: iterative magnitude pruning with rewinding, masked training,
super-weight detection and tracking.

Imports :mod:`workbench.core`, :mod:`workbench.pruning` and :mod:`workbench.curvature`.
"""
