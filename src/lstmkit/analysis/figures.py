"""Shared figure helpers for the analysis commands: one backend, one colour per cell, one save.

matplotlib is an optional extra; importing this module selects the non-interactive Agg backend
first, so figures render on servers and CI machines without a display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: no screen on CI or servers
import matplotlib.pyplot as plt  # noqa: E402

# Fixed colours, so a cell looks the same in every figure of a report.
_CELL_COLOURS = {
    "rnn": "#d62728",
    "rnn_relu": "#ff9896",
    "lstm": "#1f77b4",
    "lstm1997": "#2ca02c",
    "gru": "#9467bd",
    "gru_cho": "#c5b0d5",
    "peephole": "#ff7f0e",
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
