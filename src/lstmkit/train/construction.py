"""Sequential network construction (H&S 1997 Exp. 2a/2b): add the memory cell on a plateau.

"Memory cell and input gate are added once the error has stopped decreasing." The net first
learns what its direct input-to-output connections can (the local regularities of the sequence);
only then do the cells get outgoing connections. Without this, the cell state of the 2a net,
which only ever grows (g >= 0, no forget gate, h = identity), drives every output unit into
saturation within a few hundred sequences and training stalls at the all-zero output (the
"abuse problem" of §4).

The cells are "absent" while their outgoing readout weights are held at zero: nothing they do
reaches the outputs, so their own weights get no gradient either. At the plateau the readout
weights get back their initial values (drawn with the rest of the net) and train from there.

The plateau rule (the paper gives none): the training loss is averaged over consecutive
windows of ``window`` sequences; the cells are added after the first window whose mean is not
at least ``min_improvement`` (relative) below the previous window's. With sigmoid outputs and
squared error the loss of the cell-free net never stops falling outright (it approaches its
floor like 1/k), so the rule fires where the relative fall per window drops below
``min_improvement``, near ``window / min_improvement`` sequences: 100 and 1 % add the Exp. 2a
cell after about 3,600 sequences (a 500-sequence window waited until about 13,500, beyond the
paper's mean of 5,040 for the whole run).

With ``tolerance`` the cells join only the outputs that still need them. §4 of the paper: "output
gates are not required in case of local output encoding -- preventing memory cells from
perturbing already learned outputs can be done by simply setting the corresponding weights to
zero". At the plateau the net is tested on the task's test split (or on a fixed sample); the
output units whose largest absolute error is at most ``tolerance`` (at every step, or with
``at_end`` at the sequence ends, where the row's success rule looks) are learned, and the
cells' weights to them stay at zero for the rest of training. In Exp. 2a these are every output
but x and y, the two symbols only the memory can tell apart.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class SequentialConstruction:
    """Trainer callback holding ``weight[:, columns]`` at zero until the loss plateaus.

    Args:
        weight: the readout weight ``[outputs, features]`` whose first ``columns`` columns read
            the cells.
        columns: how many leading columns belong to the cells.
        window: sequences per loss average; a plateau is a window whose mean loss is not at
            least ``min_improvement`` (relative) below the previous window's.
        min_improvement: relative decrease that still counts as "decreasing", in [0, 1).
        tolerance: ``None`` connects the cells to every output at the plateau; a number connects
            them only to the outputs whose largest absolute error on the test sequences is
            above it (the rest keep zero weights from the cells for good).
        sample_size: sequences drawn (from a fixed generator) to find those outputs when the
            task has no fixed test split.
        at_end: judge the outputs' errors at each sequence's last step only (where the row's
            success rule judges them) instead of at every step the loss covers.
    """

    def __init__(self, weight: Tensor, columns: int, *, window: int = 100,
                 min_improvement: float = 0.01, tolerance: float | None = None,
                 sample_size: int = 256, at_end: bool = False) -> None:
        if not 0 < columns <= weight.shape[1]:
            raise ValueError(f"columns: expected 1..{weight.shape[1]}, got {columns}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window: expected a positive int, got {window!r}")
        if (isinstance(min_improvement, bool) or not isinstance(min_improvement, (int, float))
                or not 0.0 <= min_improvement < 1.0):
            raise ValueError(f"min_improvement: expected a number in [0, 1), "
                             f"got {min_improvement!r}")
        if tolerance is not None and (isinstance(tolerance, bool)
                                      or not isinstance(tolerance, (int, float))
                                      or not 0.0 < tolerance < 1.0):
            raise ValueError(f"tolerance: expected None or a number in (0, 1), got {tolerance!r}")
        if isinstance(sample_size, bool) or not isinstance(sample_size, int) or sample_size < 1:
            raise ValueError(f"sample_size: expected a positive int, got {sample_size!r}")
        self.weight, self.columns = weight, columns
        self.window, self.min_improvement = window, min_improvement
        self.tolerance, self.sample_size, self.at_end = tolerance, sample_size, bool(at_end)
        self.initial = weight.detach()[:, :columns].clone()
        # True where a cell-to-output weight is held at zero: everywhere until the plateau.
        self.held = torch.ones(weight.shape[0], columns, dtype=torch.bool)
        self.added_at: int | None = None
        self._sum, self._count, self._previous = 0.0, 0, None
        self._hold()

    @property
    def held_mask(self) -> Tensor | None:
        """``[outputs, columns]`` bool, True where a readout weight from the cells is held at
        zero now (``None`` when none is): a trainer that changes weights within a sequence must
        leave these alone."""
        return self.held if bool(self.held.any()) else None

    def _hold(self) -> None:
        with torch.no_grad():
            self.weight[:, : self.columns][self.held.to(self.weight.device)] = 0.0

    def _unlearned(self, trainer: Any) -> Tensor:
        """Bool ``[outputs]``: the outputs whose largest absolute error on the test sequences is
        above the tolerance (all of them without a tolerance)."""
        outputs = self.weight.shape[0]
        if self.tolerance is None:
            return torch.ones(outputs, dtype=torch.bool)
        task = trainer.task
        batch = task.test_batch()
        if batch is None:
            batch = task.sample(self.sample_size, generator=torch.Generator().manual_seed(0))
        was_training = trainer.model.training
        trainer.model.eval()
        with torch.no_grad():
            out = trainer.model(batch.inputs, batch.lengths)
        trainer.model.train(was_training)
        error = (out - batch.targets).abs() * batch.mask.unsqueeze(-1)
        if self.at_end:
            error = error[batch.lengths - 1, torch.arange(error.shape[1])]
        return error.reshape(-1, outputs).amax(0) > self.tolerance

    def after_step(self, trainer: Any, loss: float, sequences: int) -> None:
        """Feed the loss of ``sequences`` training sequences; add the cells on a plateau."""
        self._hold()  # undo the optimiser's step on the absent connections
        if self.added_at is not None:
            return
        self._sum += loss * sequences
        self._count += sequences
        if self._count < self.window:
            return
        mean = self._sum / self._count
        previous, self._previous = self._previous, mean
        self._sum, self._count = 0.0, 0
        if previous is not None and mean > previous * (1.0 - self.min_improvement):
            self.added_at = trainer.sequences
            self.held = ~self._unlearned(trainer).unsqueeze(1).expand_as(self.held).clone()
            with torch.no_grad():
                cells = self.weight[:, : self.columns]
                cells.copy_(torch.where(self.held.to(cells.device), torch.zeros_like(cells),
                                        self.initial.to(cells.device)))

    def state_dict(self) -> dict[str, Any]:
        return {"initial": self.initial, "held": self.held.clone(),
                "added_at": -1 if self.added_at is None else self.added_at, "sum": self._sum,
                "count": self._count,
                "previous": -1.0 if self._previous is None else self._previous}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.initial = state["initial"].clone()
        self.held = state["held"].clone()
        self.added_at = None if state["added_at"] < 0 else int(state["added_at"])
        self._sum, self._count = float(state["sum"]), int(state["count"])
        self._previous = None if state["previous"] < 0 else float(state["previous"])
