"""H&S 1997 Exp. 6: temporal order, classifying the order of widely separated X/Y symbols."""

from __future__ import annotations

import torch

from .base import (
    Criterion,
    EndTask,
    PaperReference,
    PaperSetting,
    abs_criterion,
    choice_param,
    one_hot,
    uniform_int,
)

#: Input symbols, in input-unit order.
SYMBOLS = ("E", "B", "X", "Y", "a", "b", "c", "d")
_E, _B, _X = 0, 1, 2
#: 1-based windows of the relevant positions, 6a (2 positions) and 6b (3 positions).
WINDOWS = {2: ((10, 20), (50, 60)), 3: ((10, 20), (33, 43), (66, 76))}
#: Class names in output-unit order; the class index reads the X/Y sequence as a binary
#: number, X = 0, Y = 1, first position most significant (6a: XX->Q, XY->R, YX->S, YY->U).
CLASSES = {2: ("Q", "R", "S", "U"), 3: ("Q", "R", "S", "U", "V", "A", "B", "C")}


def _setting(positions: int) -> PaperSetting:
    a = positions == 2
    return PaperSetting(
        source="H&S 1997 §5.6, Tables 10-11", row="6a" if a else "6b",
        blocks=positions, cells_per_block=2, input_size=8, output_size=2**positions,
        weights=156 if a else 308, connectivity="F", learning_rate=0.5 if a else 0.1,
        init_range=0.1, output_gate_bias="random",
        input_gate_bias=(-2.0, -4.0) if a else (-2.0, -4.0, -6.0), biased="all",
        stopping=(Criterion("ST3", {"beta": 0.1, "window": 2000}),),
        success=abs_criterion(0.3),
        test_set_size=2560, trials=20 if a else 10,
    )


class TemporalOrder(EndTask):
    """``temporal_order``: H&S 1997 Exp. 6 (§5.6): 6a with ``positions=2``, 6b with 3.

    One-hot input over :data:`SYMBOLS`. A sequence starts with E and ends with the trigger B;
    every other element is drawn uniformly from {a, b, c, d}, except ``positions`` elements that
    are X or Y (probability 0.5 each), at 1-based times t1 in 10-20, t2 in 50-60 (6a) or t1 in
    10-20, t2 in 33-43, t3 in 66-76 (6b), each uniform in its window. Length uniform in
    100-110. Target at the end: one-hot class (:data:`CLASSES`), so 4 (6a) or 8 (6b) outputs.

    Choices: the windows are read as 1-based times with E at t=1 (``info["positions"]`` holds
    0-based steps, i.e. t - 1); this matches Table 10's minimal lags (40 for 6a, 24 for 6b).

    Sigmoid output activations; squared-error loss at the end; correct: absolute error of every
    output unit below 0.3 (ABS(0.3)). Compare with Table 9: 6a 31,390 sequences (1 wrong of
    2560, 20 trials), 6b 571,100 (2 wrong, 10 trials). Gers et al. 2000 §4.5.1 reran 6b with
    forget gates (no numbers extracted).

    ``info``: ``label`` long ``[B]``, ``positions`` long ``[positions, B]``, ``order`` long
    ``[positions, B]`` (0 = X, 1 = Y).
    """

    name = "temporal_order"
    input_size = len(SYMBOLS)
    tolerance = 0.3
    one_hot_targets = True

    def __init__(self, positions: int = 2) -> None:
        self.positions = choice_param(self.name, "positions", positions, (2, 3))
        self.output_size = 2**self.positions
        self._set_params(positions=self.positions)

    def _sequences(self, batch_size: int, gen: torch.Generator):
        B, n = batch_size, self.positions
        lengths = uniform_int(100, 110, (B,), gen)
        steps = int(lengths.max())
        cols = torch.arange(B)
        symbols = torch.randint(4, 8, (steps, B), generator=gen)  # a..d
        symbols[0] = _E
        symbols[lengths - 1, cols] = _B
        pos = torch.stack([uniform_int(lo - 1, hi - 1, (B,), gen) for lo, hi in WINDOWS[n]])
        order = torch.randint(0, 2, (n, B), generator=gen)
        symbols.scatter_(0, pos, _X + order)
        label = (order * (2 ** torch.arange(n - 1, -1, -1)).unsqueeze(1)).sum(0)
        info = {"label": label, "positions": pos, "order": order}
        return one_hot(symbols, len(SYMBOLS)), lengths, one_hot(label, self.output_size), info

    REFERENCES = (
        PaperReference("H&S 1997 Table 9", params={"positions": 2}, sequences=31_390, wrong=1,
                       test_size=2560, trials=20, weights=156, criterion="ST3(0.1)",
                       setting=_setting(2)),
        PaperReference("H&S 1997 Table 9", params={"positions": 3}, sequences=571_100, wrong=2,
                       test_size=2560, trials=10, weights=308, criterion="ST3(0.1)",
                       setting=_setting(3)),
    )
