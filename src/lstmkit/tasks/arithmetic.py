"""H&S 1997 Exps. 4 and 5: the adding and multiplication problems on marked pairs.

Both share one generator (:class:`MarkerTask`): a sequence of pairs (value, marker) of random
length in [T, T + T/10]; two pairs are marked with 1.0, the first and the final pair carry -1.0,
and the target at the end combines the two marked values.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import (
    Criterion,
    EndTask,
    PaperReference,
    PaperSetting,
    abs_criterion,
    int_param,
    step_mask,
    uniform_int,
)


def _setting(row: str, lr: float, igb: tuple[float, ...] | str, stopping: Criterion,
             notes: str = "") -> PaperSetting:
    return PaperSetting(
        source="H&S 1997 §5.4-5.5, Tables 10-11", row=row, blocks=2, cells_per_block=2,
        input_size=2, output_size=1, weights=93, connectivity="F", learning_rate=lr,
        init_range=0.1, output_gate_bias="random", input_gate_bias=igb, biased="all",
        stopping=(stopping,), success=abs_criterion(0.04), test_set_size=2560, trials=10,
        notes=notes,
    )


class MarkerTask(EndTask):
    """Marked-pair sequences as in H&S 1997 §5.4 (shared by Exps. 4 and 5).

    Generation, following the paper's text: length L uniform in [T, T + T//10]; first
    components uniform in [``low``, ``high``]; "randomly select and mark one of the first ten
    pairs (X1). Then randomly select and mark one of the first T/2 - 1 still unmarked pairs
    (X2)" (so X2 is uniform over positions ``0 .. T//2 - 1`` other than X1's); marked pairs
    have second component 1.0, the first and final pair -1.0 (the first one 1.0 if marked), all
    others 0.0.

    Choice: "in the rare case where the first pair gets marked, we set X1 to zero" (Exp. 5: to
    1.0) is applied to whichever of X1, X2 lands on the first pair, i.e. a marked first pair
    contributes the neutral element of the operation (0 for +, 1 for x); the paper's wording
    names only X1 but X2 can land there too (probability 0.9 / (T/2 - 1)).

    ``info``: ``positions`` long ``[2, B]`` (X1's and X2's 0-based steps), ``operands`` float
    ``[2, B]`` (X1 and X2 as used in the target).
    """

    input_size = 2
    output_size = 1
    tolerance = 0.04
    low: float
    high: float
    neutral: float

    def __init__(self, T: int = 100) -> None:
        # T >= 20 keeps X1's window (first ten pairs) inside X2's (first T/2 pairs).
        self.T = int_param(self.name, "T", T, 20)
        self._set_params(T=self.T)

    def combine(self, x1: Tensor, x2: Tensor) -> Tensor:
        raise NotImplementedError

    def _sequences(self, batch_size: int, gen: torch.Generator):
        T, B = self.T, batch_size
        lengths = uniform_int(T, T + T // 10, (B,), gen)
        steps = int(lengths.max())
        values = self.low + (self.high - self.low) * torch.rand(steps, B, generator=gen)
        p1 = uniform_int(0, 9, (B,), gen)
        r = uniform_int(0, T // 2 - 2, (B,), gen)
        p2 = r + (r >= p1).long()  # skip X1's pair: "still unmarked"
        cols = torch.arange(B)
        markers = torch.zeros(steps, B)
        markers[0] = -1.0
        markers[lengths - 1, cols] = -1.0
        markers[p1, cols] = 1.0
        markers[p2, cols] = 1.0
        values[0] = torch.where(markers[0] == 1.0, self.neutral, values[0])
        values = values * step_mask(lengths, steps)
        x1, x2 = values[p1, cols], values[p2, cols]
        inputs = torch.stack([values, markers], -1)
        info = {"positions": torch.stack([p1, p2]), "operands": torch.stack([x1, x2])}
        return inputs, lengths, self.combine(x1, x2).unsqueeze(-1), info


class Adding1997(MarkerTask):
    """``adding1997``: H&S 1997 Exp. 4 (§5.4), the adding problem.

    Values uniform in [-1, 1]; target at the end ``0.5 + (X1 + X2) / 4`` (the sum scaled to
    [0, 1]); a marked first pair has value 0. Output: one sigmoid unit, ``outputs`` are its
    activations. Loss: squared error at the last step (summed over sequence, averaged over the
    batch). Correct: absolute error at the end below 0.04 (Table 11 ABS(0.04)). Compare with
    Table 7: T=100 -> 74,000 training sequences until ST3(0.01), 1 wrong of 2560 test sequences;
    T=500 -> 209,000, 0 wrong; T=1000 -> 853,000, 1 wrong (means of 10 trials). ``baseline`` is
    None: the paper defines none (predicting 0.5 would give MSE 1/24).
    """

    name = "adding1997"
    low, high, neutral = -1.0, 1.0, 0.0

    def combine(self, x1: Tensor, x2: Tensor) -> Tensor:
        return 0.5 + (x1 + x2) / 4.0

    REFERENCES = tuple(
        PaperReference(
            "H&S 1997 Table 7", params={"T": T}, sequences=seq, wrong=wrong, test_size=2560,
            trials=10, weights=93, criterion="ST3(0.01)", metrics={"minimal_lag": T // 2},
            setting=_setting(row, 0.5, (-3.0, -6.0), Criterion("ST3", {"beta": 0.01,
                                                                       "window": 2000})),
            notes=note,
        )
        for T, seq, wrong, row, note in [
            (100, 74_000, 1, "4-1", ""),
            (500, 209_000, 0, "4-2", ""),
            (1000, 853_000, 1, "4-3", "varies between 370,000 and 2,020,000; exceeds 700,000 "
             "in only 3 cases"),
        ]
    )


class Multiplication1997(MarkerTask):
    """``multiplication1997``: H&S 1997 Exp. 5 (§5.5), the multiplication problem.

    As ``adding1997`` but values uniform in [0, 1], a marked first pair has value 1.0, and the
    target is ``X1 * X2``. Sigmoid output activations; squared-error loss at the end; correct:
    absolute error below 0.04. Compare with Table 8 (T=100, 10 trials): stopping at n_seq=140 ->
    482,000 sequences, 139 wrong of 2560, MSE 0.0223; n_seq=13 -> 1,273,000, 14 wrong, MSE
    0.0139. The paper gives both rows for T=100 only; ``setting`` is the n_seq=140 one.
    """

    name = "multiplication1997"
    low, high, neutral = 0.0, 1.0, 1.0

    def combine(self, x1: Tensor, x2: Tensor) -> Tensor:
        return x1 * x2

    REFERENCES = tuple(
        PaperReference(
            "H&S 1997 Table 8", params={"T": 100}, sequences=seq, wrong=wrong, test_size=2560,
            mse=mse, trials=10, weights=93, criterion=f"RECENT(n_seq={n})",
            metrics={"minimal_lag": 50, "n_seq": n},
            setting=_setting("5", 0.1, "random", Criterion(
                "RECENT", {"n_seq": n, "window": 2000, "tolerance": 0.04})),
            notes=f"test error always below {bound}",
        )
        for n, seq, wrong, mse, bound in [
            (140, 482_000, 139, 0.0223, "0.026, never more than 170 wrong"),
            (13, 1_273_000, 14, 0.0139, "0.013, never more than 15 wrong"),
        ]
    )
