"""What a grid found: imports ``design`` and ``running`` (downward), never the reverse.

``stats`` (a leaf: the paired test, :func:`~workbench.experiments.analysis.stats.paired_by_level`
and the one Holm table) <- ``contrasts`` (the declared contrasts computed, verdicts) and
``factors`` (automatic one-factor pairs and one-shot comparisons) <- ``findings``;
``aggregate`` reads the runs, ``plots`` draws, ``oneshot_analysis`` summarises sweeps.
"""
