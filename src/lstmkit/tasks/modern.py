"""The modern long-range benchmarks of Arjovsky, Shah & Bengio 2016 (uRNN): adding and copy.

They differ from their 1997 ancestors: fixed length, U[0, 1] values, unscaled sum, one marker in
each half (adding); a cross-entropy copy of ten symbols over a blank gap (copy). Both come with
the memoryless baseline the paper states.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Batch, EndTask, PaperReference, Task, float_param, int_param, one_hot

_CODE = ("authors' code (github.com/amarshah/complex_RNN): n_train 1e5, n_test 1e4, RMSProp, "
         "gradient clipping to [-1, 1] for LSTM/RNN")


class Adding(EndTask):
    """``adding``: the adding problem of Arjovsky et al. 2016 §4.2 (after Hochreiter 1997).

    Two input lines of fixed length T: values uniform in [0, 1], and an indicator with exactly
    two 1s, the first uniform in the first half (steps ``0 .. T//2 - 1``), the second uniform
    in the second half (``T//2 .. T - 1``), as in the authors' code. Target at the last step:
    the unscaled sum of the two marked values. One linear output (``outputs`` are identity
    outputs); loss: mean squared error at the last step. ``baseline`` = 1/6: predicting 1
    regardless of the input gives the variance of the sum of two U[0, 1] (the paper: 0.167).

    Choice: the paper reports MSE curves only, no per-sequence criterion; ``evaluate`` counts a
    sequence correct when its absolute error is below ``tolerance`` (default 0.04, H&S 1997's
    ABS(0.04), here on the unscaled sum). Typical T: 100, 200, 400, 750.

    ``info``: ``positions`` long ``[2, B]``, ``operands`` ``[2, B]``.
    """

    name = "adding"
    input_size = 2
    output_size = 1
    output_activation = "identity"
    loss_kind = "mse"
    baseline = 1.0 / 6.0

    def __init__(self, T: int = 100, tolerance: float = 0.04) -> None:
        self.T = int_param(self.name, "T", T, 2)
        self.tolerance = float_param(self.name, "tolerance", tolerance, 0.0, 2.0)
        self._set_params(T=self.T, tolerance=self.tolerance)

    def _sequences(self, batch_size: int, gen: torch.Generator):
        T, B, half = self.T, batch_size, self.T // 2
        values = torch.rand(T, B, generator=gen)
        p1 = torch.randint(0, half, (B,), generator=gen)
        p2 = half + torch.randint(0, T - half, (B,), generator=gen)
        cols = torch.arange(B)
        markers = torch.zeros(T, B)
        markers[p1, cols] = 1.0
        markers[p2, cols] = 1.0
        operands = torch.stack([values[p1, cols], values[p2, cols]])
        info = {"positions": torch.stack([p1, p2]), "operands": operands}
        lengths = torch.full((B,), T)
        return torch.stack([values, markers], -1), lengths, operands.sum(0, keepdim=True).T, info

    REFERENCES = (
        PaperReference("Arjovsky et al. 2016 §4.2", method="predict 1 (memoryless)", mse=0.167,
                       evidence="Q", metrics={"exact": 1.0 / 6.0},
                       notes="results are learning curves, no tables; T in {100, 200, 400, 750} "
                             f"(recalled, matches reproductions); {_CODE}"),
    )


class Copy(Task):
    """``copy``: the copying-memory task of Arjovsky et al. 2016 §4.1.

    Categories a_0..a_9 (input units 0..9): a_0..a_7 data, a_8 blank, a_9 delimiter. Input of
    length T + 20: ten data symbols drawn uniformly with replacement from a_0..a_7, T - 1
    blanks, the delimiter, ten blanks. Output: T + 10 blanks, then the ten data symbols in
    order. ``targets`` are class indices (long ``[T + 20, B]``) over the 9 output classes
    a_0..a_8 (a_9 is never a target, as in the authors' code, which has 9 output classes).

    ``outputs`` are logits (``output_activation = "logits"``, a softmax readout); loss: the
    cross-entropy averaged over all T + 20 steps and the batch ("the average cross entropy of
    category predictions at each time step"). ``baseline`` = 10 ln 8 / (T + 20): predicting the
    blank for T + 10 steps and a uniform guess over a_0..a_7 for the last ten. ``evaluate``:
    a sequence is correct when the argmax is right at every step (the paper reports loss
    curves only).

    ``info``: ``data`` long ``[10, B]``, the symbols to copy.
    """

    name = "copy"
    input_size = 10
    output_size = 9
    output_activation = "logits"
    loss_kind = "ce"

    def __init__(self, T: int = 100) -> None:
        self.T = int_param(self.name, "T", T, 1)
        self.baseline = 10 * math.log(8) / (self.T + 20)
        self._set_params(T=self.T)

    def _sample(self, batch_size: int, gen: torch.Generator) -> Batch:
        T, B = self.T, batch_size
        data = torch.randint(0, 8, (10, B), generator=gen)
        inputs = torch.full((T + 20, B), 8)
        inputs[:10] = data
        inputs[T + 9] = 9
        targets = torch.full((T + 20, B), 8)
        targets[T + 10 :] = data
        mask = torch.ones(T + 20, B, dtype=torch.bool)
        return Batch(one_hot(inputs, 10), targets, mask, torch.full((B,), T + 20), {"data": data})

    def evaluate(self, outputs: Tensor, batch: Batch) -> Tensor:
        outputs = self._check_outputs(outputs, batch).detach()
        hit = outputs.argmax(-1) == batch.targets.to(outputs.device)
        return (hit | ~batch.mask.to(outputs.device)).all(0)

    REFERENCES = (
        PaperReference("Arjovsky et al. 2016 §4.1", method="memoryless baseline",
                       evidence="Q", metrics={"cross_entropy_times_T_plus_20": 10 * math.log(8)},
                       notes="baseline 10 ln 8 / (T + 20); results are learning curves; T in "
                             f"{{100, 200, 300, 500}} (recalled); {_CODE}"),
    )
