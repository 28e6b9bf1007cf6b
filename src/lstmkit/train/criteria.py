"""Stopping criteria of the 1997 paper, as small state machines fed by the trainer.

Two kinds exist. A *training-stream* rule looks at the most recent training sequences:

* ``ST3(β)`` (Exps. 4, 6): "average training error below β and the 2000 most recent sequences
  were processed correctly" - :class:`RecentSequences` with ``max_wrong=0, max_mean_error=β``.
* Exp. 5: "less than n_seq of the 2000 most recent training sequences lead to absolute errors
  exceeding 0.04" - :class:`RecentSequences` with ``max_wrong=n_seq - 1``.

A *test-set* rule is checked every so often on freshly drawn sequences:

* ``ST1`` (Exp. 3): none of 256 test sequences misclassified; ``ST2``: ST1 and mean absolute
  test error below 0.01 (3a), 0.04 (3b), 0.015 (3c) - :class:`TestSet`.
* ``ABS(β)`` over 10,000 successive random sequences (Exps. 2a-2c), and Exp. 1's "all strings of
  training and test set predicted correctly" - :class:`TestSet` with ``max_wrong=0``.

"Average training error" is read as the mean per-sequence error over the same 2000-sequence
window; the paper does not say over which window it averages.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field


@dataclass
class RecentSequences:
    """Stop when the last ``window`` training sequences meet the bounds."""

    window: int = 2000
    max_wrong: int = 0
    max_mean_error: float | None = None
    _correct: deque = field(default_factory=deque, repr=False)
    _errors: deque = field(default_factory=deque, repr=False)
    _wrong: int = field(default=0, repr=False)

    def update(self, correct: list[bool], errors: list[float]) -> bool:
        """Feed per-sequence correctness and error; True once the criterion holds."""
        for ok, err in zip(correct, errors, strict=True):
            self._correct.append(bool(ok))
            self._errors.append(float(err))
            self._wrong += not ok
            if len(self._correct) > self.window:
                self._wrong -= not self._correct.popleft()
                self._errors.popleft()
        return self.satisfied()

    def satisfied(self) -> bool:
        # The count of wrong sequences is kept as they come and go, so that a rule over a
        # 10,000-sequence window costs O(1) per sequence; the error sum is taken exactly, and
        # only when everything else holds.
        if len(self._correct) < self.window or self._wrong > self.max_wrong:
            return False
        if self.max_mean_error is None:
            return True
        return math.fsum(self._errors) / self.window < self.max_mean_error

    def state_dict(self) -> dict:
        return {"correct": list(self._correct), "errors": list(self._errors)}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output; a malformed ``state`` raises ``ValueError`` naming
        the entry (``correct``: bools, ``errors``: finite non-negative numbers, as many of each
        and at most ``window``) and leaves this rule unchanged."""
        if not isinstance(state, dict) or set(state) != {"correct", "errors"}:
            raise ValueError(f"expected a dict with 'correct' and 'errors', got {_short(state)}")
        correct, errors = state["correct"], state["errors"]
        for name, values, ok, what in (
                ("correct", correct, lambda v: isinstance(v, bool), "a bool"),
                ("errors", errors, lambda v: _is_real(v) and math.isfinite(v) and v >= 0,
                 "a finite number >= 0")):
            if not isinstance(values, list):
                raise ValueError(f"{name}: expected a list, got {_short(values)}")
            bad = next((i for i, v in enumerate(values) if not ok(v)), None)
            if bad is not None:
                raise ValueError(f"{name}[{bad}]: expected {what}, got {_short(values[bad])}")
        if len(errors) != len(correct) or len(correct) > self.window:
            raise ValueError(
                f"correct, errors: expected two lists of the same length <= window {self.window}, "
                f"got {len(correct)} and {len(errors)}"
            )
        self._correct = deque(correct)
        self._errors = deque(float(v) for v in errors)
        self._wrong = len(correct) - sum(correct)


@dataclass
class TestSet:
    """Stop when a fresh test set of ``size`` sequences meets the bounds."""

    size: int = 256
    max_wrong: int = 0
    max_mean_abs_error: float | None = None

    __test__ = False  # a stopping rule, not a pytest test class

    def judge(self, correct: list[bool], abs_errors: list[float]) -> bool:
        wrong = len(correct) - sum(bool(c) for c in correct)
        if wrong > self.max_wrong:
            return False
        if self.max_mean_abs_error is None:
            return True
        return sum(abs_errors) / max(len(abs_errors), 1) < self.max_mean_abs_error

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """A test-set rule has no state; anything but ``{}`` raises ``ValueError``."""
        if not isinstance(state, dict) or state:
            raise ValueError(f"expected an empty dict (a test-set rule has no state), "
                             f"got {_short(state)}")


Criterion = RecentSequences | TestSet


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _short(value: object, limit: int = 60) -> str:
    """A one-line, bounded description of a stored value for error messages."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def st3(beta: float) -> RecentSequences:
    """The paper's ST3(β)."""
    return RecentSequences(window=2000, max_wrong=0, max_mean_error=beta)
