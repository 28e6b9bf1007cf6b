"""Running a stack of layers and directions: over a scan (the engine or the reference), or through
torch's own fused kernels.

Both take ``x`` as ``[T, B, in]`` and the carried states as ``[layers * directions, B, size]``
tensors, and return ``(output [T, B, directions * out], final states)`` like torch's kernels.

Under ``torch.autocast`` both compute in the parameters' dtype (float32), as the engine has no
reduced-precision kernels and torch's CPU LSTM kernel has none on many CPUs: the recurrence is
run with autocast off and its results come back in float32, like other autocast ops that run in
float32. Tools that capture a graph get one operator per layer-direction where the time loop
would otherwise be unrolled into a graph of one fixed length (recompiled for every new length,
and slow to compile for long sequences): ``torch.jit.trace``, ``torch.compile`` and
``torch.export`` record the reference path as :func:`lstmkit.engine._ops.traced_reference_scan`,
and ``torch.compile`` runs torch-kernel cells through the engine's operator (:func:`run_native`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import _VF, Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import engine
from .cells import reference
from .cells.layout import Layout
from .cells.spec import CellSpec
from .engine import _ops
from .regularise import Regularisers, drop_weights

Scan = Callable[..., tuple[Tensor, tuple[Tensor, ...], Tensor | None]]
_NATIVE_FN = {"lstm": _VF.lstm, "gru": _VF.gru}


@dataclass(frozen=True)
class Stack:
    """The shape of a stack: what both runners need besides the data."""

    spec: CellSpec
    hidden_size: int
    num_layers: int
    bidirectional: bool
    dropout: float
    training: bool
    #: Recurrent dropout, zoneout and weight drop (see :mod:`lstmkit.regularise`).
    reg: Regularisers = Regularisers()
    #: The layer-directions' layout (needed with regularisers, for the masks' widths).
    layout: Layout | None = None

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1


def run_scans(
    stack: Stack, scan: Scan, params: Callable[[int, int], dict[str, Tensor]], x: Tensor,
    states: tuple[Tensor, ...], lengths: Tensor | None, return_cells: bool,
) -> tuple[Tensor, tuple[Tensor, ...], Tensor | None]:
    """Layer by layer, each direction through ``scan``; ``params(layer, direction)`` gives a
    layer-direction's parameters. Also returns the last layer's per-step cell states when
    ``return_cells`` (directions concatenated like the output), else None.

    With regularisers in force (``stack.reg``), each layer-direction gets its masks drawn here,
    once per call, and its recurrent weights under weight drop; the scan computes the rest."""
    if scan is reference.scan and (torch.jit.is_tracing() or torch.compiler.is_compiling()) \
            and stack.reg.active(stack.training) is None:
        # (The operator takes no masks: a regularised reference call is traced step by step.)
        scan = _ops.traced_reference_scan
    with _full_precision(x):
        return _run_scans(stack, scan, params, x, states, lengths, return_cells)


def _run_scans(
    stack: Stack, scan: Scan, params: Callable[[int, int], dict[str, Tensor]], x: Tensor,
    states: tuple[Tensor, ...], lengths: Tensor | None, return_cells: bool,
) -> tuple[Tensor, tuple[Tensor, ...], Tensor | None]:
    finals: list[list[Tensor]] = [[] for _ in states]
    layer_input, cells = x, None
    reg = stack.reg
    regularised = reg.active(stack.training) is not None
    lay = stack.layout
    if regularised and lay is None:
        raise ValueError("Stack.layout: expected the layout of a regularised stack, got None")
    for layer in range(stack.num_layers):
        outs, layer_cells = [], []
        for d in range(stack.directions):
            idx = layer * stack.directions + d
            p = params(layer, d)
            extra = {}
            if regularised:
                if stack.training and reg.weight_drop:
                    p = drop_weights(p, reg.weight_drop)
                masks = reg.draw(lay, x.shape[0], x.shape[1], stack.training, x)
                if masks.any:
                    extra["masks"] = masks
            out, carry, cell_seq = scan(
                stack.spec, p, layer_input, tuple(s[idx] for s in states),
                hidden_size=stack.hidden_size, lengths=lengths, reverse=bool(d),
                return_cells=return_cells, **extra,
            )
            outs.append(out)
            layer_cells.append(cell_seq)
            for acc, state in zip(finals, carry):
                acc.append(state)
        layer_input = outs[0] if len(outs) == 1 else torch.cat(outs, -1)
        if return_cells and layer == stack.num_layers - 1:
            cells = layer_cells[0] if len(outs) == 1 else torch.cat(layer_cells, -1)
        if stack.dropout and stack.training and layer < stack.num_layers - 1:
            layer_input = F.dropout(layer_input, stack.dropout, training=True)
    return layer_input, tuple(torch.stack(acc) for acc in finals), cells


def run_native(
    stack: Stack, flat_weights: list[Tensor], bias: bool, x: Tensor, states: tuple[Tensor, ...],
    lengths: Tensor | None,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """torch's own kernel over the whole stack (``lengths`` through a ``PackedSequence``).

    Under ``torch.compile`` (not ``torch.export``) the engine's operator runs instead where the
    engine can run the call: the compiler decomposes torch's RNN kernels into one graph node per
    time step (a graph of one fixed length, slow to compile) and fails on the LSTM kernel's
    backward. The engine computes exactly torch's cells.
    """
    if _compiling() and engine.unsupported(stack.spec, x, False, flat_weights) is None \
            and engine.available():
        return _native_by_engine(stack, flat_weights, bias, x, states, lengths)
    with _full_precision(x):
        return _run_native(stack, flat_weights, bias, x, states, lengths)


def _compiling() -> bool:
    return torch.compiler.is_compiling() and not torch.compiler.is_exporting()


@contextlib.contextmanager
def _full_precision(x: Tensor) -> Iterator[None]:
    """Autocast off for ``x``'s device while the recurrence runs (see the module docstring)."""
    kind = x.device.type
    if torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind):
        with torch.autocast(kind, enabled=False):
            yield
    else:
        yield


def _native_by_engine(
    stack: Stack, flat_weights: list[Tensor], bias: bool, x: Tensor, states: tuple[Tensor, ...],
    lengths: Tensor | None,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """torch's flat weights laid out per layer-direction, run through :func:`engine.scan`."""
    per = len(flat_weights) // (stack.num_layers * stack.directions)
    names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if bias else [])
    names += ["weight_hr"] if per > len(names) else []

    def params(layer: int, direction: int) -> dict[str, Tensor]:
        start = (layer * stack.directions + direction) * per
        return dict(zip(names, flat_weights[start:start + per]))

    if lengths is not None:
        # As the scans' callers do: padding may hold anything, and 0 * NaN is NaN in the
        # weight gradients the engine forms as sums over all steps.
        valid = (torch.arange(x.shape[0], device=x.device).unsqueeze(1)
                 < lengths.to(x.device)).unsqueeze(-1)
        x = torch.where(valid, x, x.new_zeros(()))
    out, final, _ = run_scans(stack, engine.scan, params, x, states, lengths, False)
    return out, final


def _run_native(
    stack: Stack, flat_weights: list[Tensor], bias: bool, x: Tensor, states: tuple[Tensor, ...],
    lengths: Tensor | None,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    spec = stack.spec
    if spec.family == "rnn":
        fn = _VF.rnn_tanh if spec.input_activation == "tanh" else _VF.rnn_relu
    else:
        fn = _NATIVE_FN[spec.family]
    hx: Any = states if spec.family == "lstm" else states[0]
    args = (flat_weights, bias, stack.num_layers, stack.dropout, stack.training,
            stack.bidirectional)
    if lengths is None:
        result = fn(x, hx, *args, False)
        return result[0], tuple(result[1:])
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    perm, unperm = packed.sorted_indices, packed.unsorted_indices
    if spec.family == "lstm":
        hx = tuple(h.index_select(1, perm) for h in hx)
    else:
        hx = hx.index_select(1, perm)
    result = fn(packed.data, packed.batch_sizes, hx, *args)
    out, _ = pad_packed_sequence(
        PackedSequence(result[0], packed.batch_sizes, perm, unperm), total_length=x.shape[0]
    )
    return out, tuple(h.index_select(1, unperm) for h in result[1:])
