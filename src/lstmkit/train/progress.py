"""The trainer's progress bar: live on a terminal, a line a minute in a log."""

from __future__ import annotations

import sys
from typing import Any

# Seconds between progress lines where stderr is not a terminal (logs, pipes).
LOG_INTERVAL_S = 60.0


def progress_bar(total: int, initial: int, desc: str | None, position: int) -> Any:
    """A tqdm bar on stderr, or None without tqdm; where stderr is not a terminal (a log file,
    a pipe), one that writes at most once a minute and without cursor movements, so a log gets
    a line a minute rather than two a second per trial."""
    try:
        from tqdm import tqdm
    except ImportError:  # progress is cosmetic; train without it
        return None
    stream = sys.stderr
    try:
        terminal = bool(stream.isatty())
    except (AttributeError, ValueError):  # replaced or closed streams
        terminal = False
    if terminal:
        return tqdm(total=total, initial=initial, unit="seq", dynamic_ncols=True, leave=False,
                    desc=desc, position=position, mininterval=0.5, file=stream)
    # Rows (position) and redraws in place need a terminal: in a log they are escape codes.
    return tqdm(total=total, initial=initial, unit="seq", leave=True, desc=desc,
                mininterval=LOG_INTERVAL_S, maxinterval=LOG_INTERVAL_S, file=stream)


def show_loss(bar: Any, loss: float, accuracy: float) -> None:
    """Put the latest loss and accuracy on ``bar`` without a redraw of its own: the bar's
    interval decides when it is written (a minute in a log)."""
    bar.set_postfix(loss=f"{loss:.4f}", acc=f"{accuracy:.2f}", refresh=False)
