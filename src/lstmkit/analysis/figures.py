"""Shared figure helpers for the analysis commands: one backend, one colour per cell, one save.

Importing this module imports matplotlib and selects the non-interactive Agg backend first, so
figures render on servers and CI machines without a display; ``import lstmkit`` alone never
imports it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: no screen on CI or servers
import matplotlib.pyplot as plt  # noqa: E402

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
_FALLBACK = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def cell_colour(cell: str, index: int = 0) -> str:
    """The colour of ``cell`` (a preset name); other names cycle through matplotlib's colours."""
    return _CELL_COLOURS.get(cell, _FALLBACK[index % len(_FALLBACK)])


def save(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` as a PNG (creating the folder) and close it; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


__all__ = ["cell_colour", "plt", "save"]
