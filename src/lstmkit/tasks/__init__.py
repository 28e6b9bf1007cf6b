"""Long-time-lag task suite: seeded generators for every experiment of Hochreiter & Schmidhuber
(1997), the continual tasks behind forget gates and peepholes, and the modern benchmarks.

``make(name, **params)`` builds a task; ``names()`` lists them. A task samples time-major
:class:`Batch` es (``task.sample(batch_size, generator)``), computes the paper's loss
(``task.loss(outputs, batch)``) and per-sequence correctness (``task.evaluate``), and carries
the paper's published rows (``task.references``) and network/training setting
(``task.setting``) as data. See :mod:`lstmkit.tasks.base` for the conventions and
:mod:`lstmkit.tasks.protocol` for what a trainer asks of a task (:class:`TrainingTask`).
"""

from __future__ import annotations

import inspect

from .arithmetic import Adding1997, MarkerTask, Multiplication1997
from .base import Batch, Criterion, EndTask, PaperReference, PaperSetting, Task
from .lag import NoiselessLag, NoiselessLagRandom, VeryLongLag
from .modern import Adding, Copy
from .protocol import TrainingTask
from .reber import ContinualReber, Reber
from .temporal_order import TemporalOrder
from .timing import SpikeTiming
from .two_sequence import TwoSequence

TASKS: dict[str, type[Task]] = {
    cls.name: cls
    for cls in (
        Reber, NoiselessLag, NoiselessLagRandom, VeryLongLag, TwoSequence, Adding1997,
        Multiplication1997, TemporalOrder, ContinualReber, SpikeTiming, Adding, Copy,
    )
}


def names() -> list[str]:
    """The public task names, in paper order."""
    return list(TASKS)


def make(name: str, **params: object) -> Task:
    """Build task ``name`` with ``params``; unknown names or parameters raise clear errors."""
    if not isinstance(name, str):
        raise TypeError(f"make: name: expected a task name (str), got {type(name).__name__}")
    if name not in TASKS:
        raise ValueError(f"make: name: expected one of {names()}, got {name!r}")
    cls = TASKS[name]
    allowed = list(inspect.signature(cls).parameters)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise TypeError(
            f"make({name!r}): unknown parameter(s) {unknown}; expected some of {allowed}"
        )
    return cls(**params)


__all__ = [
    "TASKS", "Adding", "Adding1997", "Batch", "ContinualReber", "Copy", "Criterion", "EndTask",
    "MarkerTask", "Multiplication1997", "NoiselessLag", "NoiselessLagRandom", "PaperReference",
    "PaperSetting", "Reber", "SpikeTiming", "Task", "TemporalOrder", "TrainingTask", "TwoSequence",
    "VeryLongLag", "make", "names",
]
