"""lstmkit: every LSTM-family cell behind one torch.nn.LSTM-compatible API.

``lstmkit.LSTM``, ``lstmkit.GRU`` and ``lstmkit.RNN`` are drop-in replacements for their torch
counterparts; ``variant=`` picks any cell from :data:`lstmkit.cells.PRESETS` or a
:class:`lstmkit.CellSpec`.
"""

from .cells import PRESETS, CellSpec, get_spec, lstm1997
from .layers import GRU, LSTM, RNN
from .models import SequenceModel

__version__ = "0.1.0"

__all__ = ["GRU", "LSTM", "PRESETS", "RNN", "CellSpec", "SequenceModel", "get_spec", "lstm1997"]
