"""Experiment layer: specs, the grid runner, run layout, aggregation, statistics,
plots and papermill notebooks. The top of the stack: nothing below imports it.
"""
