"""Shared figure helpers for the analysis commands: a new figure, one colour per cell, one save.

Figures are drawn with matplotlib's object-oriented API (:class:`matplotlib.figure.Figure`,
rendered by the Agg canvas when saved as PNG), never through pyplot: drawing needs no display,
and the backend a user chose (``matplotlib.use``, ``MPLBACKEND``) stays as it was. Importing this
module imports matplotlib; ``import lstmkit`` alone never does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.figure import Figure

# Fixed colours, so a cell looks the same in every figure of a report; one per preset, all
# different (from matplotlib's tab20 palette), so any set of presets can share a plot.
_CELL_COLOURS = {
    "lstm": "#1f77b4",
    "np": "#aec7e8",
    "peephole": "#ff7f0e",
    "fgr": "#ffbb78",
    "lstm1997": "#2ca02c",
    "rnn": "#d62728",
    "rnn_relu": "#ff9896",
    "gru": "#9467bd",
    "gru_cho": "#c5b0d5",
    "vanilla": "#8c564b",
    "nig": "#c49c94",
    "nfg": "#e377c2",
    "nog": "#f7b6d2",
    "layernorm": "#7f7f7f",
    "niaf": "#bcbd22",
    "noaf": "#dbdb8d",
    "cifg": "#17becf",
    "cifg_peephole": "#9edae5",
}
_FALLBACK = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]


def cell_colour(cell: str, index: int = 0) -> str:
    """The colour of ``cell`` (a preset name); other names cycle through matplotlib's colours."""
    return _CELL_COLOURS.get(cell, _FALLBACK[index % len(_FALLBACK)])


def new_figure(figsize: tuple[float, float], **kwargs: Any) -> Figure:
    """A figure of ``figsize`` inches with constrained layout, attached to no window or
    backend (``kwargs`` go to :class:`matplotlib.figure.Figure`)."""
    return Figure(figsize=figsize, layout="constrained", **kwargs)


def save(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` as a PNG (creating the folder); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


__all__ = ["cell_colour", "new_figure", "save"]
