"""What a notebook section shows: a table, a figure and one sentence."""

from __future__ import annotations

from typing import Any, NamedTuple


class Section(NamedTuple):
    """The output of one notebook section.

    Attributes:
        table: The ``pandas.DataFrame`` the notebook displays (``None`` when it shows none).
        figure: The ``matplotlib`` figure the notebook saves (``None`` when it has none);
            the house style is applied by
            :func:`~workbench.experiments.analysis.plots.save_figure`.
        sentence: One sentence stating the section's result with its numbers.
    """

    table: Any
    figure: Any
    sentence: str
