"""Which path a layer call takes, and why: torch's own kernel, the fused engine or the reference.

:func:`route` is the only place that decides. ``backend="auto"`` takes, per call, the fastest
path that computes exactly the requested cell:

* a cell torch has no kernel for runs on the engine where the engine can run the call, else on
  the readable reference;
* a cell torch has a kernel for (``lstm``, ``gru``, ``rnn``, ``rnn_relu``) runs on torch's kernel
  where the engine cannot run the call (another device or dtype, a ``torch.func`` transform, an
  engine that could not be built), in half precision, which the engine computes in float32, and
  under ``torch.jit.trace``, whose graph must not depend on the grad mode; otherwise
  :func:`auto_choice` picks between torch's kernel and
  the engine from what is known when the call is made: the cell family, whether it is a training
  step (gradients recorded), whether ``lengths`` were given, the dtype, and whether the engine has
  its packed step kernel on this CPU (AVX-512, or AVX2 with FMA). The rule, with the
  measurements behind it, is :data:`RULE`.

A call with recurrent regularisers in force (:mod:`lstmkit.regularise`) never runs on torch's
kernel, which cannot compute them: the engine runs it where it can, else the reference.

A forced ``backend="native"`` or ``"engine"`` that cannot run the call raises an error naming the
reason instead of quietly taking another path, so a forced backend proves which code ran.
``layer.route(x)`` shows the decision without running anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from . import engine
from .cells.spec import CellSpec

Path = Literal["native", "engine", "reference"]
BACKENDS = ("auto", "native", "engine", "reference")
#: The dtypes :data:`RULE` decides for (the engine's own); torch's kernel keeps the others.
_RULE_DTYPES = (torch.float32, torch.float64)


@dataclass(frozen=True)
class Route:
    """The path of one call and the reason it was chosen."""

    path: Path
    reason: str


@dataclass(frozen=True)
class Choice:
    """One line of :data:`RULE`: the path ``auto`` takes for a kind of call, and why."""

    path: Literal["native", "engine"]
    reason: str


# The kinds of call the rule tells apart: (family, training step, lengths given, step kernel).
_Key = tuple[str, bool, bool, bool]

_PACKED = Choice("engine", "lengths given: torch's kernel would run a packed sequence, slower "
                 "than the fused engine")
_FASTER = Choice("engine", "a training step: the fused engine is faster than torch's kernel")
_TORCH = Choice("native", "inference without lengths: the engine is not faster than torch's "
                "kernel on every shape, so torch's kernel is kept")

# Per kind of call (family, training step, lengths given): the choice without the engine's
# packed step kernel, then with it. The numbers are time ratios to torch's kernel without
# lengths at the five benchmark shapes, one thread, float32, from
# ``benchmarks/bench_default_path.py --paths`` (in ``benchmarks/``, where each choice's whole row
# is): without the step kernel ``results-default-path.md`` (the BLAS per step); with it, for the
# LSTM, ``results-default-lstm-avx2.md`` (the packed AVX2 kernel) and the engine record in
# BENCHMARKS.md (AVX-512, two threads; "vanilla" is lstm plus peepholes). Kinds of call these
# do not settle keep the choice made without the step kernel.
_MEASURED: dict[tuple[str, bool, bool], tuple[Choice, Choice]] = {
    # Engine 1.05-1.53x; torch's kernel through the layer 0.95-1.04x (the same kernel: the
    # spread is the machine's noise). With the step kernel: AVX2 0.64-0.96x against torch's
    # kernel through the layer's 0.92-1.01x, lower on every shape; AVX-512 "vanilla", which does
    # more work than lstm, 0.58-0.98x.
    ("lstm", True, False): (
        Choice("native", "a training step without lengths: torch's oneDNN kernel is faster "
               "than the engine without its packed step kernel"), _FASTER),
    # Engine 0.89-1.31x, torch's packed kernel 3.7-9.6x. AVX2 kernel: 0.59-0.95x, 2.4-6.9x.
    ("lstm", True, True): (_PACKED, _PACKED),
    # Engine 1.5-2.4x. With the step kernel: AVX2 1.13-1.26x; AVX-512 ("vanilla") 0.73-1.12x,
    # faster on some shapes only.
    ("lstm", False, False): (_TORCH, _TORCH),
    # Engine 1.52-2.04x, torch's packed kernel 1.23-2.51x, lower on four shapes of five. With
    # the AVX2 step kernel 1.05-1.32x against 1.10-1.94x, lower on every shape; AVX-512: the
    # engine's inference without lengths ("vanilla") is 0.73-1.12x.
    ("lstm", False, True): (
        Choice("native", "inference with lengths: torch's packed kernel is faster than the "
               "engine without its packed step kernel"), _PACKED),
    # torch has no oneDNN kernel for GRU and RNN. Training: engine 0.32-0.88x; with lengths
    # 0.42-0.86x against torch's packed kernel's 1.27-5.37x.
    ("gru", True, False): (_FASTER, _FASTER),
    ("gru", True, True): (_PACKED, _PACKED),
    ("rnn", True, False): (_FASTER, _FASTER),
    ("rnn", True, True): (_PACKED, _PACKED),
    # Inference: engine 0.77-1.17x, torch's kernel through the layer 0.88-1.14x: each is faster
    # on some shapes. With lengths the engine is lower on most shapes (0.58-1.21x against
    # 0.76-1.31x for torch's packed kernel).
    ("gru", False, False): (_TORCH, _TORCH),
    ("gru", False, True): (_PACKED, _PACKED),
    ("rnn", False, False): (_TORCH, _TORCH),
    ("rnn", False, True): (_PACKED, _PACKED),
}

#: What ``auto`` runs for a cell torch has a kernel for, when both torch's kernel and the engine
#: can run the call, keyed by (family, training step, lengths given, the engine's packed step
#: kernel in use); the measurements behind each entry are in the comments above it.
RULE: dict[_Key, Choice] = {(family, grad, lengths, kernel): pair[kernel]
                            for (family, grad, lengths), pair in _MEASURED.items()
                            for kernel in (False, True)}


def requested(backend: str) -> str:
    """The backend asked for: the layer's own, or ``LSTMKIT_BACKEND`` when the layer says auto."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = os.environ.get("LSTMKIT_BACKEND", "auto")
        if backend not in BACKENDS:
            raise ValueError(f"LSTMKIT_BACKEND: expected one of {BACKENDS}, got {backend!r}")
    return backend


# ``spec.torch_native`` compares the whole spec with torch's cells (tens of microseconds, on
# every layer call); specs are frozen, so the answer is kept per spec.
_TORCH_NATIVE: dict[CellSpec, bool] = {}


def _torch_native(spec: CellSpec) -> bool:
    if torch.compiler.is_compiling():  # traced once per graph: no cache for the tracer to follow
        return spec.torch_native
    known = _TORCH_NATIVE.get(spec)
    if known is None:
        known = _TORCH_NATIVE[spec] = spec.torch_native
    return known


def native_reason(spec: CellSpec, return_cells: bool) -> str | None:
    """Why torch's kernels cannot compute this call (None when they can)."""
    if not _torch_native(spec):
        return f"torch has no kernel for variant {spec.name!r}"
    if return_cells:
        return "torch's kernels do not return the cell states"
    return None


def step_kernel(dtype: torch.dtype = torch.float32) -> bool:
    """Whether the engine's per-step GEMMs run its packed kernel for ``dtype`` here (float32 on
    a CPU with AVX-512, or AVX2 with FMA; otherwise they call the BLAS). Builds the engine if
    needed."""
    if dtype != torch.float32 or not engine.available():
        return False
    return _compiled_with_kernel()


# A property of the build, fixed for the process; marked constant so that torch.compile reads it
# once instead of tracing into the extension (which it cannot).
@torch.compiler.assume_constant_result
def _compiled_with_kernel() -> bool:
    step_gemm = getattr(engine._build.load(), "step_gemm", None)
    return step_gemm is not None and str(step_gemm()).startswith("packed")


def auto_choice(spec: CellSpec, *, grad: bool, lengths: bool,
                dtype: torch.dtype = torch.float32) -> Choice:
    """What ``auto`` prefers for a cell torch has a kernel for, when both torch's kernel and the
    engine can run the call (:data:`RULE`).

    Asks about the engine's step kernel (building the engine) only where the rule depends on it.
    """
    if not _torch_native(spec):
        raise ValueError(f"spec: expected a cell torch has a kernel for, got {spec.name!r}")
    family = spec.family
    without = RULE[(family, grad, lengths, False)]
    with_kernel = RULE[(family, grad, lengths, True)]
    if without == with_kernel:
        return without
    return with_kernel if step_kernel(dtype) else without


def _engine_reason(spec: CellSpec, x: Tensor | None, return_cells: bool) -> str | None:
    """Why the engine cannot run this call, its build included (None when it can)."""
    reason = engine.unsupported(spec, x, return_cells)
    if reason is None and not engine.available():
        reason = f"the engine could not be built ({engine.build_error()})"
    return reason


def route(spec: CellSpec, backend: str, x: Tensor | None, *, return_cells: bool = False,
          lengths: bool = False, grad: bool | None = None,
          regularised: str | None = None) -> Route:
    """The path for running ``spec`` on ``x`` (``[T, B, in]``; None: decide for CPU float32).

    ``lengths``: whether the call gives ``lengths`` (or a ``PackedSequence``). ``grad``: whether
    the call is a training step, one that records gradients; None: ``torch.is_grad_enabled()``.
    ``regularised``: the recurrent regularisers in force, in words (None: none), which torch's
    kernels cannot compute.

    Raises ``ValueError`` when a forced ``"native"`` or ``"engine"`` cannot run the call and
    ``RuntimeError`` when a forced engine is not built on this machine.
    """
    backend = requested(backend)
    if backend == "reference":
        return Route("reference", "backend='reference' was requested")
    not_native = native_reason(spec, return_cells)
    if regularised is not None and not not_native:
        not_native = f"torch's kernels cannot compute {regularised}"
    if backend == "native":
        if not_native:
            raise ValueError(f"backend: 'native' cannot run this call: {not_native}")
        if x is not None and x.shape[0] == 0:
            # torch's kernels refuse empty sequences; the reference returns the initial state.
            return Route("reference", "an empty sequence: the output is empty")
        return Route("native", "backend='native' was requested")
    if backend == "engine":
        not_engine = engine.unsupported(spec, x, return_cells)
        if not_engine:
            raise ValueError(f"backend: 'engine' cannot run this call: {not_engine}")
        if not engine.available():
            raise RuntimeError(f"backend: 'engine' cannot run: the engine could not be built "
                               f"({engine.build_error()})")
        return Route("engine", "backend='engine' was requested")
    if not not_native:
        if x is not None and x.shape[0] == 0:
            return Route("reference", "an empty sequence: the output is empty")
        not_engine = engine.unsupported(spec, x, return_cells)
        if not_engine:
            # Decided before the build: a call the engine cannot take never waits for it.
            return Route("native", f"torch has a kernel for this cell; {not_engine}")
        if torch.jit.is_tracing():
            # A trace records one path for every later call, training or not, and torch's own
            # operator keeps a saved trace loadable without lstmkit.
            return Route("native", "torch.jit.trace records torch's own kernel for this cell, "
                         "the same for training and inference")
        if x is not None and x.dtype not in _RULE_DTYPES:
            # The rule was measured in float32; in half precision the engine computes in
            # float32 on cast copies, while torch's kernel computes the dtype itself.
            return Route("native", f"torch has a kernel for this cell in {x.dtype}; the engine "
                         "would compute it in float32 on cast copies")
        grad = torch.is_grad_enabled() if grad is None else bool(grad)
        dtype = torch.float32 if x is None else x.dtype
        choice = auto_choice(spec, grad=grad, lengths=bool(lengths), dtype=dtype)
        if choice.path == "engine" and not engine.available():
            return Route("native", f"torch has a kernel for this cell; the engine could not be "
                         f"built ({engine.build_error()})")
        return Route(choice.path, choice.reason)
    not_engine = _engine_reason(spec, x, return_cells)
    if not_engine:
        return Route("reference", not_engine)
    return Route("engine", f"{not_native}; the fused engine computes it")
