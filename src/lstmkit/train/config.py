"""How a run is configured (:class:`TrainConfig`) and what it reached (:class:`TrainResult`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

OPTIMIZERS = ("sgd", "adam")


@dataclass
class TrainConfig:
    """How to train. ``max_sequences`` is the budget in training sequences presented."""

    optimizer: str = "adam"
    lr: float = 1e-3
    batch_size: int = 32
    max_sequences: int = 100_000
    clip_norm: float | None = 1.0
    check_every: int = 1000
    checkpoint_every: int = 0
    test_size: int = 2560
    tbptt: int | None = None
    seed: int = 0
    log_every: int = 1000

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer: expected one of {OPTIMIZERS}, got {self.optimizer!r}")
        for name in ("batch_size", "max_sequences", "check_every", "test_size", "log_every"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if not (is_real(self.lr) and self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr: expected a positive finite number, got {self.lr!r}")
        if self.clip_norm is not None and not (is_real(self.clip_norm) and self.clip_norm > 0):
            raise ValueError(
                f"clip_norm: expected None or a positive number, got {self.clip_norm!r}"
            )
        if not is_int(self.checkpoint_every) or self.checkpoint_every < 0:
            raise ValueError(
                f"checkpoint_every: expected an int >= 0 (0: never), got {self.checkpoint_every!r}"
            )
        if self.tbptt is not None and (not is_int(self.tbptt) or self.tbptt < 1):
            raise ValueError(
                f"tbptt: expected None or a positive int chunk length, got {self.tbptt!r}"
            )
        if not is_int(self.seed):
            raise ValueError(f"seed: expected an int, got {self.seed!r}")


@dataclass
class TrainResult:
    """What a run reached: success, sequences to success, test metrics, curve, wall time."""

    success: bool
    sequences: int
    test: dict[str, float]
    curve: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    milestones: dict[str, int] = field(default_factory=dict)


def is_int(value: Any) -> bool:
    """An int that is not a bool."""
    # bool is an int subclass, but batch_size=True is a mistake, not a batch of one.
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """An int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
