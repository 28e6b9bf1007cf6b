"""Argument checks shared by layers, tasks and the trainer: clear errors at the API boundary.

Every check raises ``ValueError`` or ``TypeError`` naming the argument, what was expected and what
came, so a wrong call fails here instead of deep inside a kernel.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor


def positive_int(name: str, value: object, *, allow_zero: bool = False) -> int:
    """``value`` as an int that is positive (or non-negative with ``allow_zero``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    low = 0 if allow_zero else 1
    if value < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {value}")
    return int(value)


def probability(name: str, value: object) -> float:
    """``value`` as a float in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a float in [0, 1], got {type(value).__name__}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name}: expected a float in [0, 1], got {value}")
    return float(value)


def flag(name: str, value: object) -> bool:
    """``value`` as a bool; ints and other truthy objects are refused, not coerced."""
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__} {value!r}")
    return value


def real(name: str, value: object) -> float:
    """``value`` as a finite float (an int or float, not a bool or a string)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a float, got {type(value).__name__} {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{name}: expected a finite float, got {value}")
    return float(value)


def tensor(name: str, value: object) -> Tensor:
    """``value`` itself, if it is a tensor."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    return value


def same_float(name: str, value: Tensor, dtype: torch.dtype, device: torch.device) -> None:
    """``value`` is a floating tensor of ``dtype`` on ``device`` (those of the parameters)."""
    if not value.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor of {dtype}, got {value.dtype}")
    if value.dtype != dtype:
        raise TypeError(
            f"{name}: expected dtype {dtype} (the layer's parameters), got {value.dtype}"
        )
    if value.device != device:
        raise ValueError(
            f"{name}: expected a tensor on {device} (the layer's parameters), got {value.device}"
        )


def shape(name: str, value: Tensor, expected: tuple[int, ...]) -> None:
    """``value`` has exactly the shape ``expected``."""
    if tuple(value.shape) != tuple(expected):
        raise ValueError(
            f"{name}: expected shape {tuple(expected)}, got {tuple(value.shape)}"
        )


def lengths(value: object, batch: int, steps: int) -> Tensor:
    """Right-padding lengths as a CPU int64 tensor ``[batch]`` with 1 <= length <= steps."""
    if isinstance(value, Tensor):
        if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"lengths: expected an integer tensor, got dtype {value.dtype}")
        out = value.detach().to("cpu", torch.int64)
    elif isinstance(value, (list, tuple)):
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value):
            bad = next(v for v in value
                       if not isinstance(v, numbers.Integral) or isinstance(v, bool))
            raise TypeError(
                f"lengths: expected a list of ints, got an element of type {type(bad).__name__}"
            )
        out = torch.tensor(list(value), dtype=torch.int64)
    else:
        raise TypeError(
            f"lengths: expected a 1-D integer tensor or list of ints, got {type(value).__name__}"
        )
    if out.dim() != 1 or out.numel() != batch:
        raise ValueError(
            f"lengths: expected {batch} lengths (one per sequence in the batch), "
            f"got shape {tuple(out.shape)}"
        )
    if batch and int(out.min()) < 1:
        raise ValueError(f"lengths: expected every length >= 1, got {int(out.min())}")
    if batch and int(out.max()) > steps:
        raise ValueError(
            f"lengths: expected every length <= the input's {steps} time steps, "
            f"got {int(out.max())}"
        )
    return out


def finite(name: str, value: Tensor) -> None:
    """``value`` has no NaN or Inf (an opt-in check: it synchronises with the device)."""
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name}: expected finite values, got NaN or Inf")
