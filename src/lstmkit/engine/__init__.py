"""The fused CPU engine: whole-sequence forward and hand-written backward for every cell spec.

:func:`scan` has exactly :func:`lstmkit.cells.reference.scan`'s signature and results and is
differentiable with respect to ``x``, the carry and every parameter in ``p``. Per layer-direction
it computes the input projection of all steps as one GEMM (biases folded in), then runs the time
loop in compiled C++: per step one recurrent GEMM and one fused, vectorised elementwise pass that
saves the activated gates; backward walks the steps in reverse with one fused elementwise pass
and one state-gradient GEMM per step, then forms the weight, bias and input gradients as a few
GEMMs over all steps.

Covered: the LSTM family with every flag (missing or coupled gates, peepholes, any activations,
gate recurrence ``"gates"``/``"all"``, memory blocks, the 1997 truncated gradient, no hidden
recurrence, projections), GRU in both reset placements, the Elman RNN; lengths and both
directions; float32 and float64. Not covered: ``layer_norm`` (:func:`supports` is False).
Tensors that are not on the CPU, other dtypes, empty sequences, calls inside ``torch.func``
transforms (``grad``, ``vmap``, ``jacrev``, ...) and forward-mode AD (dual tensors) run the
reference (``scan`` falls back by itself, so the result is always correct).

Higher-order gradients: a backward that builds a graph (``create_graph=True``, as a gradient
penalty does) recomputes the layer-direction with the reference and differentiates that, so
double backward is exact too (see :mod:`lstmkit.engine._function`); the ordinary backward
keeps the compiled kernels.

The C++ extension is built on first use with ``torch.utils.cpp_extension`` (see
:mod:`lstmkit.engine._build`); :func:`available` says whether that worked.
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as _fwad
from torch import Tensor

from ..cells import reference
from ..cells.spec import CellSpec
from . import _build
from ._function import (
    GRU_PARAMS,
    LSTM_PARAMS,
    GRUFunction,
    LSTMFunction,
    RNNFunction,
    gru_run,
    lstm_run,
    rnn_run,
)

__all__ = ["available", "supports", "scan", "build_error"]

Carry = tuple[Tensor, ...]
_DTYPES = (torch.float32, torch.float64)


def available() -> bool:
    """Whether the compiled engine can run (builds it on the first call).

    A missing compiler or ninja, a failed build, or another process's build that does not
    finish within ``$LSTMKIT_BUILD_WAIT_S`` seconds gives one ``RuntimeWarning`` and False.
    """
    return _build.load() is not None


def build_error() -> str | None:
    """Why the build failed, if it did."""
    return _build.error()


def supports(spec: CellSpec) -> bool:
    """Whether the engine computes ``spec`` (everything except layer normalisation)."""
    return not spec.layer_norm


def _transformed(tensors: list[Tensor]) -> bool:
    """Whether a ``torch.func`` transform or forward-mode AD sees this call.

    The compiled kernels read raw memory, which the wrapped tensors of ``vmap``/``grad`` do not
    have, and the autograd Functions define neither a vmap rule nor a jvp; the reference is
    plain torch code, which every transform handles.
    """
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    if active is not None and active():
        return True
    if getattr(_fwad, "_current_level", -1) >= 0:  # inside ``forward_ad.dual_level()``
        return any(_fwad.unpack_dual(t).tangent is not None for t in tensors)
    return False


def _eligible(spec: CellSpec, p: dict[str, Tensor], x: Tensor, carry: Carry,
              return_cells: bool) -> bool:
    if not supports(spec) or x.dim() != 3 or x.shape[0] == 0 or x.shape[1] == 0:
        return False
    if return_cells and spec.family != "lstm":
        return False
    if x.device.type != "cpu" or x.dtype not in _DTYPES:
        return False
    tensors = [*carry, *p.values()]
    if any(t.device != x.device or t.dtype != x.dtype for t in tensors):
        return False
    if any(name.startswith("ln_") for name in p):
        return False
    if _transformed([x, *tensors]):
        return False
    return available()


def scan(
    spec: CellSpec,
    p: dict[str, Tensor],
    x: Tensor,
    carry: Carry,
    *,
    hidden_size: int,
    lengths: Tensor | None = None,
    reverse: bool = False,
    return_cells: bool = False,
) -> tuple[Tensor, Carry, Tensor | None]:
    """Run one layer-direction over ``x`` (``[T, B, in]``) from ``carry``; see
    :func:`lstmkit.cells.reference.scan` for the meaning of every argument and result."""
    if not _eligible(spec, p, x, carry, return_cells):
        return reference.scan(spec, p, x, carry, hidden_size=hidden_size, lengths=lengths,
                              reverse=reverse, return_cells=return_cells)
    ext = _build.load()
    tensors = [x, *carry, *p.values()]
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    reverse = bool(reverse)
    if spec.family == "lstm":
        h0, c0 = carry[0], carry[1]
        a0 = carry[2] if spec.carries_gates else None
        flat = [p.get(n) for n in LSTM_PARAMS]
        if grad:
            meta = (ext, spec, hidden_size, reverse, return_cells)
            outs = LSTMFunction.apply(meta, lengths, x, h0, c0, a0, *flat)
        else:
            outs = lstm_run(ext, spec, hidden_size, x, h0, c0, a0, lengths, reverse,
                            return_cells, dict(zip(LSTM_PARAMS, flat)))
        n_state = 3 if spec.carries_gates else 2
        cells = outs[1 + n_state] if return_cells else None
        return outs[0], tuple(outs[1 : 1 + n_state]), cells
    flat = [p.get(n) for n in GRU_PARAMS]
    if spec.family == "gru":
        if grad:
            y, h_t = GRUFunction.apply((ext, spec, hidden_size, reverse), lengths, x, carry[0],
                                       *flat)
        else:
            y, h_t = gru_run(ext, spec, hidden_size, x, carry[0], lengths, reverse,
                             dict(zip(GRU_PARAMS, flat)))
    else:
        if grad:
            y, h_t = RNNFunction.apply((ext, spec, hidden_size, reverse), lengths, x, carry[0],
                                       *flat)
        else:
            y, h_t = rnn_run(ext, spec, hidden_size, x, carry[0], lengths, reverse,
                             dict(zip(GRU_PARAMS, flat)))
    return y, (h_t,), None
