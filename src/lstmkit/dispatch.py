"""Which path a layer call takes, and why: torch's own kernel, the fused engine or the reference.

:func:`route` is the only place that decides. ``backend="auto"`` takes torch's kernel where it
computes exactly the requested cell, else the engine where it can run the call, else the
readable reference. A forced ``backend="native"`` or ``"engine"`` that cannot run the call
raises an error naming the reason instead of quietly taking another path, so a forced backend
proves which code ran. ``layer.route(x)`` shows the decision without running anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from . import engine
from .cells.spec import CellSpec

Path = Literal["native", "engine", "reference"]
BACKENDS = ("auto", "native", "engine", "reference")


@dataclass(frozen=True)
class Route:
    """The path of one call and the reason it was chosen."""

    path: Path
    reason: str


def requested(backend: str) -> str:
    """The backend asked for: the layer's own, or ``LSTMKIT_BACKEND`` when the layer says auto."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = os.environ.get("LSTMKIT_BACKEND", "auto")
        if backend not in BACKENDS:
            raise ValueError(f"LSTMKIT_BACKEND: expected one of {BACKENDS}, got {backend!r}")
    return backend


def native_reason(spec: CellSpec, return_cells: bool) -> str | None:
    """Why torch's kernels cannot compute this call (None when they can)."""
    if not spec.torch_native:
        return f"torch has no kernel for variant {spec.name!r}"
    if return_cells:
        return "torch's kernels do not return the cell states"
    return None


def route(spec: CellSpec, backend: str, x: Tensor | None, *, return_cells: bool = False) -> Route:
    """The path for running ``spec`` on ``x`` (``[T, B, in]``; None: decide for CPU float32).

    Raises ``ValueError`` when a forced ``"native"`` or ``"engine"`` cannot run the call and
    ``RuntimeError`` when a forced engine is not built on this machine.
    """
    backend = requested(backend)
    if backend == "reference":
        return Route("reference", "backend='reference' was requested")
    not_native = native_reason(spec, return_cells)
    if backend == "native":
        if not_native:
            raise ValueError(f"backend: 'native' cannot run this call: {not_native}")
        if x is not None and x.shape[0] == 0:
            # torch's kernels refuse empty sequences; the reference returns the initial state.
            return Route("reference", "an empty sequence: the output is empty")
        return Route("native", "backend='native' was requested")
    if backend == "auto" and not not_native:
        if x is not None and x.shape[0] == 0:
            return Route("reference", "an empty sequence: the output is empty")
        return Route("native", "torch has a kernel for exactly this cell")
    not_engine = engine.unsupported(spec, x, return_cells)
    if not_engine is None and not engine.available():
        not_engine = f"the engine could not be built ({engine.build_error()})"
        if backend == "engine":
            raise RuntimeError(f"backend: 'engine' cannot run: {not_engine}")
    if backend == "engine":
        if not_engine:
            raise ValueError(f"backend: 'engine' cannot run this call: {not_engine}")
        return Route("engine", "backend='engine' was requested")
    if not_engine:
        return Route("reference", not_engine)
    return Route("engine", f"{not_native}; the fused engine computes it")
