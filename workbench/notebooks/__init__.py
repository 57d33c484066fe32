"""Helpers of the notebooks: one module per notebook, the presentation of its sections.

The layer above :mod:`workbench.experiments` (it may use
:mod:`workbench.experiments.analysis.plots`): the tables, figures and sentences a notebook
shows, and the small set-ups and probes only that notebook runs. The algorithms they
present stay in :mod:`workbench.curvature` (and the other layers below).

* :mod:`.section`: :class:`~.section.Section`, what a notebook section shows
  (``table, figure, sentence``).
* :mod:`.fisher_ggn`: notebook ``01_fisher_ggn`` (digits classifier, precision table,
  matrices and spectra, Monte Carlo convergence, LM diagonal per layer).
* :mod:`.fisher_lm`: notebook ``07_fisher_lm`` (true vs empirical Fisher per layer type
  and head, K-FAC spectra, natural-gradient check, capacity).
* :mod:`.fisher_uses`: notebook ``08_fisher_uses`` (percolation, forgetting probes).
"""
