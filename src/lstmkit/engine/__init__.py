"""The fused CPU engine: whole-sequence forward and hand-written backward for every cell spec.

:func:`scan` has exactly :func:`lstmkit.cells.reference.scan`'s signature and results and is
differentiable with respect to ``x``, the carry and every parameter in ``p``. Per layer-direction
it computes the input projection of all steps as one GEMM (biases folded in), then runs the time
loop in compiled C++: per step one recurrent GEMM and one fused, vectorised elementwise pass that
saves the activated gates; backward walks the steps in reverse with one fused elementwise pass
and one state-gradient GEMM per step, then forms the weight, bias and input gradients as a few
GEMMs over all steps.

Each layer-direction is one PyTorch operator (``torch.ops.lstmkit.lstm_scan``, ``gru_scan``,
``rnn_scan``; see :mod:`lstmkit.engine._ops`) with a schema, a fake kernel and registered
autograd, so ``torch.compile`` (``fullgraph=True``), ``torch.export`` and ``torch.jit.trace``
capture it as one node that works for any length and batch size.

Covered: the LSTM family with every flag (missing or coupled gates, peepholes, any activations,
gate recurrence ``"gates"``/``"all"``, memory blocks, the 1997 truncated gradient, no hidden
recurrence, projections, layer norm), GRU in both reset placements and with layer norm, the
Elman RNN; lengths and both directions; recurrent dropout and zoneout (the masks of
:mod:`lstmkit.regularise`, applied inside the time loop, with or without layer norm); float32
and float64, and float16/bfloat16 computed in float32 (results rounded to the input's dtype).
Layer norm normalises the input projection for all steps at once around its GEMM, and each
step's recurrent product and cell state row by row inside the time loop. Not covered: layer norm
together with gate recurrence (:func:`supports` is False), tensors that are not on the CPU, and
calls inside ``torch.func`` transforms or forward-mode AD:
:func:`unsupported` names the reason, :func:`scan` refuses such calls, and the layers' dispatch
(:mod:`lstmkit.dispatch`) sends them to the reference.

Higher-order gradients: a backward that builds a graph (``create_graph=True``, as a gradient
penalty does) recomputes the layer-direction with the reference and differentiates that, so
double backward is exact too (see :mod:`lstmkit.engine._function`); the ordinary backward
keeps the compiled kernels.

The C++ extension is built on first use with ``torch.utils.cpp_extension`` (see
:mod:`lstmkit.engine._build`); :func:`available` says whether that worked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.autograd.forward_ad as _fwad
from torch import Tensor

from ..cells import reference
from ..cells.spec import CellSpec
from . import _build, _ops
from ._function import GRU_PARAMS, LSTM_PARAMS, cell_key

if TYPE_CHECKING:
    from ..regularise import Masks

__all__ = ["available", "build_error", "scan", "supports", "unsupported"]

Carry = tuple[Tensor, ...]
_DTYPES = (torch.float32, torch.float64)
#: Reduced-precision dtypes the engine computes in float32 (it has no half-precision kernels).
_HALF = (torch.float16, torch.bfloat16)


# The build status does not change once known, and compiling a call must not trace the build
# (file locks, subprocesses): under torch.compile these two are evaluated once, as constants.
@torch.compiler.assume_constant_result
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
    """Whether the engine computes ``spec`` (everything except layer normalisation together
    with gate recurrence, whose carried gates would enter the normalised recurrent product)."""
    return not (spec.layer_norm and spec.carries_gates)


def _transformed(tensors: list[Tensor]) -> bool:
    """Whether a ``torch.func`` transform or forward-mode AD sees this call.

    The compiled kernels read raw memory, which the wrapped tensors of ``vmap``/``grad`` do not
    have, and the operators define neither a vmap rule nor a jvp; the reference is plain torch
    code, which every transform handles.
    """
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    if active is not None and active():
        return True
    if getattr(_fwad, "_current_level", -1) >= 0:  # inside ``forward_ad.dual_level()``
        return any(_fwad.unpack_dual(t).tangent is not None for t in tensors)
    return False


def unsupported(spec: CellSpec, x: Tensor | None, return_cells: bool = False,
                tensors: Sequence[Tensor] = ()) -> str | None:
    """Why the engine cannot run ``spec`` on ``x`` (None when it can, build aside).

    ``x`` None asks about CPU float32 input in general; ``tensors`` are the call's carry and
    parameters, which must match ``x``'s device and dtype.
    """
    if not supports(spec):
        return ("the engine does not cover layer normalisation with gate recurrence "
                f"(variant {spec.name!r})")
    if return_cells and spec.family != "lstm":
        return "only LSTM-family cells have cell states"
    if x is None:
        return None
    if x.device.type != "cpu":
        return f"the engine runs on the CPU, the input is on {x.device}"
    if x.dtype not in _DTYPES + _HALF:
        return (f"the engine computes in float32 or float64 (float16 and bfloat16 in float32), "
                f"the input is {x.dtype}")
    if any(t.device != x.device or t.dtype != x.dtype for t in tensors):
        return "the carry and parameters must have the input's device and dtype"
    if _transformed([x, *tensors]):
        return "torch.func transforms and forward-mode AD need the reference equations"
    return None


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
    masks: Masks | None = None,
) -> tuple[Tensor, Carry, Tensor | None]:
    """Run one layer-direction over ``x`` (``[T, B, in]``) from ``carry``; see
    :func:`lstmkit.cells.reference.scan` for the meaning of every argument and result
    (``masks``: recurrent dropout and zoneout, not differentiated).

    float16 and bfloat16 operands are computed in float32 and the results returned in the
    input's dtype. Raises ``ValueError`` where the engine cannot run the call
    (:func:`unsupported`) and ``RuntimeError`` where it is not built; the layers' dispatch
    (:mod:`lstmkit.dispatch`) sends such calls to the reference instead.
    """
    if x.dim() != 3:
        raise ValueError(f"x: expected [T, B, in], got shape {tuple(x.shape)}")
    mask_list = [m for m in masks if m is not None] if masks is not None else []
    reason = unsupported(spec, x, return_cells, [*carry, *p.values(), *mask_list])
    if reason is not None:
        raise ValueError(f"engine.scan: {reason}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        # Nothing to compute: the reference returns the empty output and the initial carry.
        return reference.scan(spec, p, x, carry, hidden_size=hidden_size, lengths=lengths,
                              reverse=reverse, return_cells=return_cells, masks=masks)
    if not available():
        raise RuntimeError(f"engine.scan: the engine could not be built ({build_error()})")
    if x.dtype in _HALF:
        def up(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.float()

        half_masks = None if masks is None else type(masks)(*(up(m) for m in masks))
        y, final, cells = _run(spec, {k: up(v) for k, v in p.items()}, x.float(),
                               tuple(t.float() for t in carry), hidden_size, lengths, reverse,
                               return_cells, half_masks)
        return (y.to(x.dtype), tuple(t.to(x.dtype) for t in final),
                None if cells is None else cells.to(x.dtype))
    return _run(spec, p, x, carry, hidden_size, lengths, reverse, return_cells, masks)


def _run(spec: CellSpec, p: dict[str, Tensor | None], x: Tensor, carry: Carry, hidden_size: int,
         lengths: Tensor | None, reverse: bool, return_cells: bool,
         masks: Masks | None = None) -> tuple[Tensor, Carry, Tensor | None]:
    """One call of the family's operator, with an LSTM batch of unequal lengths sorted longest
    first: each step's recurrent GEMMs then stop at the last row still inside its sequence
    (``active_rows`` in ``csrc/time_loop.h``), and rows that have ended cost nothing."""
    if lengths is None or spec.family != "lstm" or x.shape[1] < 2 or _sorted(lengths):
        return _call(spec, p, x, carry, hidden_size, lengths, reverse, return_cells, masks)
    order = torch.argsort(lengths.to(device=x.device), descending=True, stable=True)
    back = torch.argsort(order)
    if masks is not None:  # per sequence: [B, out] and [T, B, .]
        rec, zc, zh = masks
        masks = type(masks)(None if rec is None else rec.index_select(0, order),
                            None if zc is None else zc.index_select(1, order),
                            None if zh is None else zh.index_select(1, order))
    y, final, cells = _call(spec, p, x.index_select(1, order),
                            tuple(t.index_select(0, order) for t in carry), hidden_size,
                            lengths.index_select(0, order.to(lengths.device)), reverse,
                            return_cells, masks)
    return (y.index_select(1, back), tuple(t.index_select(0, back) for t in final),
            None if cells is None else cells.index_select(1, back))


def _sorted(lengths: Tensor) -> bool:
    """Whether ``lengths`` are already longest first (decided in eager mode only: a traced or
    compiled graph sorts every time rather than branch on data)."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    return bool((lengths[:-1] >= lengths[1:]).all())


def _call(spec: CellSpec, p: dict[str, Tensor | None], x: Tensor, carry: Carry,
          hidden_size: int, lengths: Tensor | None, reverse: bool, return_cells: bool,
          masks: Masks | None = None) -> tuple[Tensor, Carry, Tensor | None]:
    """One call of the family's operator (``torch.ops.lstmkit.*_scan``)."""
    tensors = [x, *carry, *(t for t in p.values() if t is not None)]
    # Saving for backward costs memory; only a call that records a graph needs it. A trace
    # records one call whatever the grad mode (its check reruns the module without grad).
    save = ((torch.is_grad_enabled() or torch.jit.is_tracing())
            and any(t.requires_grad for t in tensors))
    key = cell_key(spec)
    rec_mask, zone_cell, zone_hidden = (None, None, None) if masks is None else masks
    rec_mask = None if rec_mask is None else rec_mask.contiguous()
    zone_cell = None if zone_cell is None else zone_cell.contiguous()
    zone_hidden = None if zone_hidden is None else zone_hidden.contiguous()
    if spec.family == "lstm":
        w_hr = p.get("weight_hr")
        proj = w_hr.shape[0] if w_hr is not None else 0
        a0 = carry[2] if spec.carries_gates else None
        outs = _ops.lstm_scan(x, carry[0], carry[1], a0, lengths,
                              *(p.get(n) for n in LSTM_PARAMS), rec_mask, zone_cell,
                              zone_hidden, key, hidden_size, proj, bool(reverse),
                              bool(return_cells), save)
        final = (outs[1], outs[2], outs[3]) if spec.carries_gates else (outs[1], outs[2])
        return outs[0], final, outs[4] if return_cells else None
    op = _ops.gru_scan if spec.family == "gru" else _ops.rnn_scan
    outs = op(x, carry[0], lengths, *(p.get(n) for n in GRU_PARAMS), rec_mask, zone_hidden, key,
              hidden_size, bool(reverse), save)
    return outs[0], (outs[1],), None
