"""The fused engine as PyTorch operators (``torch.ops.lstmkit.*``), so that ``torch.compile``,
``torch.export`` and ``torch.jit.trace`` see one opaque operator per layer-direction.

Each family has a forward operator (``lstm_scan``, ``gru_scan``, ``rnn_scan``) and a backward
operator (``*_scan_backward``), defined with :func:`torch.library.define`: a schema, the CPU
kernel (the C++ time loop and its Python glue in :mod:`lstmkit.engine._function`), a fake
kernel that gives the output shapes from the input shapes (symbolic sizes included, so compiled
and exported graphs work for any length and batch size) and, for the forward operators, the
autograd formula as the operator's Autograd kernel. The cell travels as a string
(:func:`~lstmkit.engine._function.cell_key`, every field of the spec) next to the sizes, so a
traced or exported graph holds all it needs.

A forward operator returns its results (absent ones as empty tensors) followed by the tensors
its backward reads, which are not differentiable; :func:`lstmkit.engine.scan` hides them.
Kernels compute without autocast (the engine has no reduced-precision kernels;
:func:`lstmkit.engine.scan` computes float16/bfloat16 operands in float32).

The autograd formula is the hand-written backward: the backward operator's kernel, then the
weight, bias and input gradients as GEMMs over all steps in plain torch. A backward that builds a
graph (``create_graph=True``) instead recomputes with the reference equations and differentiates
them (:func:`~lstmkit.engine._function.reference_backward`), so double backward is exact.

``reference_scan`` (with ``reference_scan_backward``) is :func:`lstmkit.cells.reference.scan` as
one operator, for the cells and calls the engine does not run: capturing the reference as a
graph would unroll its time loop into a graph of one fixed length.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..cells import reference
from . import _build
from ._function import (
    GRU_CARRY,
    GRU_MASKS,
    GRU_PARAMS,
    GRU_SAVED,
    LN_SAVED,
    LSTM_CARRY,
    LSTM_MASKS,
    LSTM_PARAMS,
    LSTM_RESULTS,
    LSTM_SAVED,
    Call,
    Inputs,
    Named,
    _present,
    cell_key,
    gru_backward,
    gru_forward,
    gru_grads,
    lstm_backward,
    lstm_forward,
    lstm_grads,
    lstm_recurrent,
    reference_backward,
    rnn_backward,
    rnn_forward,
    rnn_grads,
    spec_of,
)

_PARAMS_SCHEMA = {
    "lstm": ", ".join(f"Tensor{'' if n == 'weight_ih' else '?'} {n}" for n in LSTM_PARAMS),
    "gru": ", ".join(f"Tensor{'' if n in ('weight_ih', 'weight_hh') else '?'} {n}"
                     for n in GRU_PARAMS),
}
# The regularisers' masks (recurrent dropout, zoneout): optional, not differentiated.
_MASKS_SCHEMA = {
    "lstm": ", ".join(f"Tensor? {n}" for n in LSTM_MASKS),
    "gru": ", ".join(f"Tensor? {n}" for n in GRU_MASKS),
}
_N_LSTM_MASKS, _N_GRU_MASKS = len(LSTM_MASKS), len(GRU_MASKS)


def _returns(n: int) -> str:
    return "(" + ", ".join(["Tensor"] * n) + ")"


def _ext() -> Any:
    ext = _build.load()
    if ext is None:
        raise RuntimeError(f"lstmkit engine: the engine could not be built ({_build.error()})")
    return ext


def _absent(like: Tensor) -> Tensor:
    """What an operator returns for a result the cell does not have."""
    return like.new_empty(0)


def _out(t: Tensor | None, like: Tensor) -> Tensor:
    return _absent(like) if t is None else t


def _ln_fake(spec: Any, x: Tensor, rows: int, save: bool) -> tuple[Tensor, ...]:
    """The shapes of :data:`LN_SAVED` for a call of ``spec`` (all absent without layer norm)."""
    steps, batch = x.shape[0], x.shape[1]
    new = x.new_empty
    # Each absent result is its own empty tensor, as the kernel returns them (none aliases).
    if not (save and spec.layer_norm):
        return tuple(_absent(x) for _ in LN_SAVED)
    rec = spec.hidden_recurrence
    return (new(steps, batch, rows), new(steps, batch, 1), new(steps, batch, 1),
            new(steps, batch, rows) if rec else _absent(x),
            new(steps, batch) if rec else _absent(x))


_LIB = torch.library.Library("lstmkit", "FRAGMENT")


class _Operator:
    """An engine operator: ``torch.library.define`` with its CPU kernel, then its fake kernel
    and (forward operators) its autograd formula.

    The autograd formula is an :class:`torch.autograd.Function` registered as the operator's
    Autograd kernel (not ``register_autograd``, whose per-call argument handling costs more than
    a small layer's whole step); ``function_name`` names its nodes in a graph's ``grad_fn``.
    """

    def __init__(self, name: str, schema: str, kernel: Any) -> None:
        self.name = f"lstmkit::{name}"
        torch.library.define(self.name, schema, lib=_LIB)
        torch.library.impl(self.name, "cpu", kernel, lib=_LIB)
        self.op = getattr(torch.ops.lstmkit, name).default

    def __call__(self, *args: Any) -> Any:
        return self.op(*args)

    def register_fake(self, fake: Any) -> Any:
        torch.library.register_fake(self.name, fake, lib=_LIB)
        return fake

    def register_autograd(self, function_name: str, setup_context: Any, backward: Any) -> None:
        op = self.op

        def forward(ctx: Any, *args: Any) -> Any:
            with torch._C._AutoDispatchBelowAutograd():
                out = op(*args)
            setup_context(ctx, args, out)
            return out

        function = type(function_name, (torch.autograd.Function,), {
            "forward": staticmethod(forward), "backward": staticmethod(backward)})

        def autograd_kernel(*args: Any) -> Any:
            if torch.is_grad_enabled() and torch._C._any_requires_grad(*args):
                return function.apply(*args)
            with torch._C._AutoDispatchBelowAutograd():
                return op(*args)

        _LIB.impl(self.name.split("::")[1], autograd_kernel, "Autograd")


def _operator(name: str, schema: str) -> Any:
    """Decorator: define ``lstmkit::name`` with ``schema`` and the function as its CPU kernel."""
    return lambda kernel: _Operator(name, schema, kernel)


# -------------------------------------------------------------------------------------------
# LSTM family

#: What the LSTM backward kernel returns (see ``lstm_backward_impl`` in ``csrc/lstm.h``).
_LSTM_KERNEL = ("dz", "dh0", "dc0", "da0", "dh_all", "dpeep", "drec", "dln_c", "dln_hh")

@_operator(
    "lstm_scan",
    "(Tensor x, Tensor h0, Tensor c0, Tensor? a0, Tensor? lengths, "
    f"{_PARAMS_SCHEMA['lstm']}, {_MASKS_SCHEMA['lstm']}, str cell, int hidden_size, "
    "int proj_size, bool reverse, "
    f"bool return_cells, bool save) -> {_returns(len(LSTM_RESULTS) + len(LSTM_SAVED))}")
def lstm_scan(x: Tensor, h0: Tensor, c0: Tensor, a0: Tensor | None, lengths: Tensor | None,
              *rest: Any) -> tuple[Tensor, ...]:
    flat, masks = rest[:len(LSTM_PARAMS)], rest[len(LSTM_PARAMS):-6]
    cell, hidden, proj, reverse, return_cells, save = rest[-6:]
    call = Call.of(cell, hidden, proj, reverse, return_cells)
    with torch.autocast("cpu", enabled=False):
        res = lstm_forward(_ext(), call, x, {"h0": h0, "c0": c0, "a0": a0},
                           dict(zip(LSTM_PARAMS, flat)), lengths, save,
                           dict(zip(LSTM_MASKS, masks)))
    return tuple(_out(res.get(n), x) for n in LSTM_RESULTS + LSTM_SAVED)


@lstm_scan.register_fake
def _(x: Tensor, h0: Tensor, c0: Tensor, a0: Tensor | None, lengths: Tensor | None,
      *rest: Any) -> tuple[Tensor, ...]:
    cell, hidden, proj, reverse, return_cells, save = rest[-6:]
    zone_cell = rest[-6 - _N_LSTM_MASKS + 1]
    lay = Call.of(cell, hidden, proj, reverse).layout
    steps, batch = x.shape[0], x.shape[1]
    out, carried = lay.out_size, lay.carried_size
    new = x.new_empty
    none = _absent(x)
    return (new(steps, batch, out), new(batch, out), new(batch, hidden),
            new(batch, carried) if carried else none,
            new(steps, batch, hidden) if return_cells else none,
            new(steps, batch, lay.rows) if save else none,
            new(steps + 1, batch, out + carried) if save else none,
            new(steps + 1, batch, hidden) if save else none,
            new(steps, batch, hidden) if save and out != hidden else none,
            new(steps, batch, hidden) if save and zone_cell is not None else _absent(x),
            *_ln_fake(lay.spec, x, lay.rows, save))


@_operator(
    "lstm_scan_backward",
    "(Tensor gates, Tensor? wcat, Tensor? peep, Tensor? w_hr, Tensor c_all, "
    "Tensor? lengths, Tensor? dy, Tensor? dh, Tensor? dc, Tensor? da, Tensor? dcells, "
    f"{_MASKS_SCHEMA['lstm']}, Tensor? c_tilde, "
    "Tensor? ln_hh_weight, Tensor? ln_c_weight, Tensor? ln_c_bias, Tensor? ln_rec, "
    "Tensor? ln_rstd, str cell, int hidden_size, int proj_size, bool reverse) -> "
    f"{_returns(len(_LSTM_KERNEL))}")
def lstm_scan_backward(gates: Tensor, wcat: Tensor | None, peep: Tensor | None,
                       w_hr: Tensor | None, c_all: Tensor, lengths: Tensor | None,
                       dy: Tensor | None, dh: Tensor | None, dc: Tensor | None,
                       da: Tensor | None, dcells: Tensor | None, rec_mask: Tensor | None,
                       zone_cell: Tensor | None, zone_hidden: Tensor | None,
                       c_tilde: Tensor | None, ln_hh_weight: Tensor | None,
                       ln_c_weight: Tensor | None, ln_c_bias: Tensor | None,
                       ln_rec: Tensor | None, ln_rstd: Tensor | None, cell: str,
                       hidden_size: int, proj_size: int, reverse: bool) -> tuple[Tensor, ...]:
    call = Call.of(cell, hidden_size, proj_size, reverse)
    saved = {"gates": gates, "c_all": c_all, "c_tilde": c_tilde, "ln_rec": ln_rec,
             "ln_rstd": ln_rstd}
    grads = {"y": dy, "h": dh, "c": dc, "a": da, "cells": dcells}
    masks = {"rec_mask": rec_mask, "zone_cell": zone_cell, "zone_hidden": zone_hidden}
    ln = {"ln_hh_weight": ln_hh_weight, "ln_c_weight": ln_c_weight, "ln_c_bias": ln_c_bias}
    with torch.autocast("cpu", enabled=False):
        res = lstm_backward(_ext(), call, saved, wcat, peep, w_hr, lengths, grads, masks=masks,
                            ln=ln)
    return tuple(_out(res[n], gates) for n in _LSTM_KERNEL)


@lstm_scan_backward.register_fake
def _(gates: Tensor, wcat: Tensor | None, peep: Tensor | None, w_hr: Tensor | None,
      c_all: Tensor, lengths: Tensor | None, dy: Tensor | None, dh: Tensor | None,
      dc: Tensor | None, da: Tensor | None, dcells: Tensor | None, *rest: Any,
      ) -> tuple[Tensor, ...]:
    cell, hidden_size, proj_size, reverse = rest[-4:]
    lay = Call.of(cell, hidden_size, proj_size, reverse).layout
    spec = lay.spec
    steps, batch = gates.shape[0], gates.shape[1]
    out, carried = lay.out_size, lay.carried_size
    new, none = gates.new_empty, _absent(gates)
    ln_rec = spec.layer_norm and spec.hidden_recurrence
    return (new(steps, batch, lay.rows), new(batch, out), new(batch, hidden_size),
            new(batch, carried) if carried else none,
            new(steps, batch, out) if out != hidden_size else none,
            new(3, hidden_size) if spec.peephole else none,
            new(steps, batch, lay.rows) if ln_rec else _absent(gates),
            new(2, hidden_size) if spec.layer_norm else _absent(gates),
            new(lay.rows) if ln_rec else _absent(gates))


def _lstm_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    x, h0, c0, a0, lengths, *rest = inputs
    flat, masks = rest[:len(LSTM_PARAMS)], rest[len(LSTM_PARAMS):-6]
    cell, hidden, proj, reverse, return_cells, save = rest[-6:]
    ctx.call = Call.of(cell, hidden, proj, reverse, return_cells)
    ctx.args = (cell, hidden, proj, reverse)
    ctx.saved = save
    n = len(LSTM_RESULTS)
    ctx.mark_non_differentiable(*output[n:])
    # Gradients of results nobody used stay None instead of zero tensors the size of the output.
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(*output[n:], lengths, x, h0, c0, a0, *flat, *masks)


def _lstm_backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
    call: Call = ctx.call
    lay = call.layout
    n_saved = len(LSTM_SAVED)
    saved_t = ctx.saved_tensors
    saved = dict(zip(LSTM_SAVED, saved_t[:n_saved]))
    lengths, values = saved_t[n_saved], saved_t[n_saved + 1:-_N_LSTM_MASKS]
    masks = dict(zip(LSTM_MASKS, saved_t[-_N_LSTM_MASKS:]))
    needs = ctx.needs_input_grad
    names = ("x", *LSTM_CARRY, *LSTM_PARAMS)
    inp = Inputs(names, values, (*needs[:4], *needs[5:5 + len(LSTM_PARAMS)]))
    named = dict(zip(LSTM_RESULTS, grads))
    if torch.is_grad_enabled():
        outs = [named["y"], named["h"], named["c"]]
        outs += [named["a"]] if call.spec.carries_gates else []
        outs += [named["cells"]] if call.return_cells else []
        found = reference_backward(call, inp, lengths, tuple(outs), masks)
    else:
        _check_saved(ctx, "lstm_scan")
        params = inp.params()
        wcat, peep = lstm_recurrent(call, params, values[0])
        if call.spec.truncated_gradient:
            wcat = None  # the kernel does not read it: no error flows through the recurrence
        kernel = lstm_scan_backward(
            saved["gates"], wcat, peep, params["weight_hr"], saved["c_all"], lengths,
            named["y"], named["h"], named["c"], named["a"] if lay.carried_size else None,
            named["cells"] if call.return_cells else None, *masks.values(),
            saved["c_tilde"] if masks["zone_cell"] is not None else None,
            params["ln_hh_weight"], params["ln_c_weight"], params["ln_c_bias"],
            _present(saved["ln_rec"]), _present(saved["ln_rstd"]), *ctx.args)
        kernel = dict(zip(_LSTM_KERNEL, kernel))
        found = lstm_grads(call, inp, saved, kernel, masks)
    return _layout_grads(inp, found, lengths_at=4, n_config=_N_LSTM_MASKS + 6)


def _check_saved(ctx: Any, op: str) -> None:
    if not ctx.saved:
        raise RuntimeError(f"lstmkit::{op}: called with save=False, which keeps nothing for "
                           "backward; call it with save=True to differentiate it")


def _layout_grads(inp: Inputs, found: Named, lengths_at: int,
                  n_config: int) -> tuple[Tensor | None, ...]:
    """The operator's input gradients in its argument order: None for ``lengths``, the masks,
    the configuration and every input that needs none."""
    grads = [found.get(n) if inp.need[n] else None for n in inp.names]
    return (*grads[:lengths_at], None, *grads[lengths_at:], *([None] * n_config))


lstm_scan.register_autograd("LSTMFunction", _lstm_setup, _lstm_backward)


# -------------------------------------------------------------------------------------------
# GRU and RNN

_SMALL_FORWARD = {"gru": gru_forward, "rnn": rnn_forward}
#: What the GRU backward kernel returns (see ``gru_backward_impl`` in ``csrc/gru.h``).
_GRU_KERNEL = ("dz", "drec", "dh0", "drec_raw", "dln_hh")
_SMALL_SAVED = {"gru": GRU_SAVED, "rnn": ("hact", "h_all")}


def _small_scan(family: str, x: Tensor, h0: Tensor, lengths: Tensor | None,
                flat: Sequence[Tensor | None], masks: Sequence[Tensor | None], cell: str,
                hidden: int, reverse: bool, save: bool) -> tuple[Tensor, ...]:
    call = Call.of(cell, hidden, 0, reverse)
    with torch.autocast("cpu", enabled=False):
        res = _SMALL_FORWARD[family](_ext(), call, x, h0, dict(zip(GRU_PARAMS, flat)),
                                     lengths, save, dict(zip(GRU_MASKS, masks)))
    return tuple(_out(res[n], x) for n in ("y", "h", *_SMALL_SAVED[family]))


def _small_fake(family: str, x: Tensor, cell: str, hidden: int,
                save: bool) -> tuple[Tensor, ...]:
    steps, batch = x.shape[0], x.shape[1]
    new, none = x.new_empty, _absent(x)
    rows = 3 * hidden if family == "gru" else hidden
    saved = [new(steps, batch, rows) if save else none,
             new(steps + 1, batch, hidden) if save else none]
    if family == "gru":
        saved.append(new(steps, batch, hidden) if save else none)
        saved.extend(_ln_fake(spec_of(cell), x, rows, save))
    return (new(steps, batch, hidden), new(batch, hidden), *saved)


_SMALL_SCHEMA = (f"(Tensor x, Tensor h0, Tensor? lengths, {_PARAMS_SCHEMA['gru']}, "
                 f"{_MASKS_SCHEMA['gru']}, str cell, int hidden_size, bool reverse, bool save) -> ")


@_operator("gru_scan", _SMALL_SCHEMA + _returns(2 + len(GRU_SAVED)))
def gru_scan(x: Tensor, h0: Tensor, lengths: Tensor | None, *rest: Any) -> tuple[Tensor, ...]:
    flat, masks = rest[:len(GRU_PARAMS)], rest[len(GRU_PARAMS):-4]
    cell, hidden_size, reverse, save = rest[-4:]
    return _small_scan("gru", x, h0, lengths, flat, masks, cell, hidden_size, reverse, save)


@gru_scan.register_fake
def _(x: Tensor, h0: Tensor, lengths: Tensor | None, *rest: Any) -> tuple[Tensor, ...]:
    cell, hidden_size, _reverse, save = rest[-4:]
    return _small_fake("gru", x, cell, hidden_size, save)


@_operator("rnn_scan", _SMALL_SCHEMA + _returns(4))
def rnn_scan(x: Tensor, h0: Tensor, lengths: Tensor | None, *rest: Any) -> tuple[Tensor, ...]:
    flat, masks = rest[:len(GRU_PARAMS)], rest[len(GRU_PARAMS):-4]
    cell, hidden_size, reverse, save = rest[-4:]
    return _small_scan("rnn", x, h0, lengths, flat, masks, cell, hidden_size, reverse, save)


@rnn_scan.register_fake
def _(x: Tensor, h0: Tensor, lengths: Tensor | None, *rest: Any) -> tuple[Tensor, ...]:
    cell, hidden_size, _reverse, save = rest[-4:]
    return _small_fake("rnn", x, cell, hidden_size, save)


@_operator(
    "gru_scan_backward",
    "(Tensor gates, Tensor weight_hh, Tensor h_all, Tensor aux, Tensor? lengths, "
    f"Tensor? dy, Tensor? dh, {_MASKS_SCHEMA['gru']}, Tensor? ln_hh_weight, Tensor? ln_rec, "
    f"Tensor? ln_rstd, str cell, int hidden_size, bool reverse) -> "
    f"{_returns(len(_GRU_KERNEL))}")
def gru_scan_backward(gates: Tensor, weight_hh: Tensor, h_all: Tensor, aux: Tensor,
                      lengths: Tensor | None, dy: Tensor | None, dh: Tensor | None,
                      rec_mask: Tensor | None, zone_hidden: Tensor | None,
                      ln_hh_weight: Tensor | None, ln_rec: Tensor | None,
                      ln_rstd: Tensor | None, cell: str, hidden_size: int,
                      reverse: bool) -> tuple[Tensor, ...]:
    call = Call.of(cell, hidden_size, 0, reverse)
    saved = {"gates": gates, "h_all": h_all, "aux": aux, "ln_rec": ln_rec, "ln_rstd": ln_rstd}
    with torch.autocast("cpu", enabled=False):
        res = gru_backward(_ext(), call, saved, weight_hh, lengths, {"y": dy, "h": dh},
                           {"rec_mask": rec_mask, "zone_hidden": zone_hidden}, ln_hh_weight)
    return tuple(_out(res[n], gates) for n in _GRU_KERNEL)


@gru_scan_backward.register_fake
def _(gates: Tensor, weight_hh: Tensor, h_all: Tensor, aux: Tensor, lengths: Tensor | None,
      dy: Tensor | None, dh: Tensor | None, rec_mask: Tensor | None,
      zone_hidden: Tensor | None, ln_hh_weight: Tensor | None, ln_rec: Tensor | None,
      ln_rstd: Tensor | None, cell: str, hidden_size: int,
      reverse: bool) -> tuple[Tensor, ...]:
    spec = Call.of(cell, hidden_size, 0, reverse).spec
    return (torch.empty_like(gates),
            torch.empty_like(gates) if spec.reset_after else _absent(gates),
            gates.new_empty(gates.shape[1], hidden_size),
            torch.empty_like(gates) if spec.layer_norm else _absent(gates),
            gates.new_empty(gates.shape[2]) if spec.layer_norm else _absent(gates))


@_operator(
    "rnn_scan_backward",
    "(Tensor hact, Tensor weight_hh, Tensor? lengths, Tensor? dy, Tensor? dh, "
    f"{_MASKS_SCHEMA['gru']}, str cell, int hidden_size, bool reverse) -> {_returns(2)}")
def rnn_scan_backward(hact: Tensor, weight_hh: Tensor, lengths: Tensor | None,
                      dy: Tensor | None, dh: Tensor | None, rec_mask: Tensor | None,
                      zone_hidden: Tensor | None, cell: str, hidden_size: int,
                      reverse: bool) -> tuple[Tensor, ...]:
    call = Call.of(cell, hidden_size, 0, reverse)
    with torch.autocast("cpu", enabled=False):
        res = rnn_backward(_ext(), call, {"hact": hact}, weight_hh, lengths,
                           {"y": dy, "h": dh},
                           {"rec_mask": rec_mask, "zone_hidden": zone_hidden})
    return res["dz"], res["dh0"]


@rnn_scan_backward.register_fake
def _(hact: Tensor, weight_hh: Tensor, lengths: Tensor | None, dy: Tensor | None,
      dh: Tensor | None, rec_mask: Tensor | None, zone_hidden: Tensor | None, cell: str,
      hidden_size: int, reverse: bool) -> tuple[Tensor, ...]:
    return torch.empty_like(hact), hact.new_empty(hact.shape[1], hidden_size)


def _small_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    x, h0, lengths, *flat, cell, hidden, reverse, save = inputs  # flat: params, then masks
    ctx.call = Call.of(cell, hidden, 0, reverse)
    ctx.args = (cell, hidden, reverse)
    ctx.saved = save
    ctx.mark_non_differentiable(*output[2:])
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(*output[2:], lengths, x, h0, *flat)


def _small_backward(ctx: Any, dy: Tensor | None, dh: Tensor | None,
                    *_: Tensor | None) -> tuple[Tensor | None, ...]:
    call: Call = ctx.call
    family = call.spec.family
    names = _SMALL_SAVED[family]
    saved_t = ctx.saved_tensors
    saved = dict(zip(names, saved_t[: len(names)]))
    lengths, values = saved_t[len(names)], saved_t[len(names) + 1:-_N_GRU_MASKS]
    masks = dict(zip(GRU_MASKS, saved_t[-_N_GRU_MASKS:]))
    needs = ctx.needs_input_grad
    inp = Inputs(("x", *GRU_CARRY, *GRU_PARAMS), values,
                 (*needs[:2], *needs[3:3 + len(GRU_PARAMS)]))
    if torch.is_grad_enabled():
        found = reference_backward(call, inp, lengths, (dy, dh), masks)
    else:
        _check_saved(ctx, f"{family}_scan")
        w_hh = inp.values["weight_hh"]
        if family == "gru":
            kernel = gru_scan_backward(
                saved["gates"], w_hh, saved["h_all"], saved["aux"], lengths, dy, dh,
                *masks.values(), inp.values["ln_hh_weight"], _present(saved["ln_rec"]),
                _present(saved["ln_rstd"]), *ctx.args)
            found = gru_grads(call, inp, saved, dict(zip(_GRU_KERNEL, kernel)), masks)
        else:
            kernel = rnn_scan_backward(saved["hact"], w_hh, lengths, dy, dh, *masks.values(),
                                       *ctx.args)
            found = rnn_grads(call, inp, saved, dict(zip(("dz", "dh0"), kernel)), masks)
    return _layout_grads(inp, found, lengths_at=2, n_config=_N_GRU_MASKS + 4)


gru_scan.register_autograd("GRUFunction", _small_setup, _small_backward)
rnn_scan.register_autograd("RNNFunction", _small_setup, _small_backward)


# -------------------------------------------------------------------------------------------
# The reference equations as one operator, for the tools that capture a graph

@torch.library.custom_op(
    "lstmkit::reference_scan", mutates_args=(), device_types=None,
    schema="(Tensor x, Tensor h0, Tensor? c0, Tensor? a0, Tensor? lengths, Tensor[] params, "
    "str names, str cell, int hidden_size, int proj_size, bool reverse, bool return_cells) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor)")
def reference_scan(x: Tensor, h0: Tensor, c0: Tensor | None, a0: Tensor | None,
                   lengths: Tensor | None, params: list[Tensor], names: str, cell: str,
                   hidden_size: int, proj_size: int, reverse: bool,
                   return_cells: bool) -> tuple[Tensor, ...]:
    spec = Call.of(cell, hidden_size, proj_size, reverse).spec
    carry = tuple(t for t in (h0, c0, a0) if t is not None)
    y, final, cells = reference.scan(spec, dict(zip(names.split(","), params)), x, carry,
                                     hidden_size=hidden_size, lengths=lengths, reverse=reverse,
                                     return_cells=return_cells)
    # An operator's results must be new tensors: an empty sequence returns its initial carry.
    final = [t.clone() if any(t is c for c in carry) else t for t in final]
    final += [_absent(x)] * (3 - len(final))
    return (y, *final, _absent(x) if cells is None else cells)


@reference_scan.register_fake
def _(x: Tensor, h0: Tensor, c0: Tensor | None, a0: Tensor | None, lengths: Tensor | None,
      params: list[Tensor], names: str, cell: str, hidden_size: int, proj_size: int,
      reverse: bool, return_cells: bool) -> tuple[Tensor, ...]:
    steps = x.shape[0]
    lay = Call.of(cell, hidden_size, proj_size, reverse).layout
    none = _absent(x)
    return (x.new_empty(steps, h0.shape[0], lay.out_size), torch.empty_like(h0),
            none if c0 is None else torch.empty_like(c0),
            none if a0 is None else torch.empty_like(a0),
            x.new_empty(steps, h0.shape[0], hidden_size) if return_cells else none)


def _reference_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    x, h0, c0, a0, lengths, params, names, cell, hidden, proj, reverse, return_cells = inputs
    ctx.call = Call.of(cell, hidden, proj, reverse, return_cells)
    ctx.names = tuple(names.split(","))
    ctx.args = (cell, hidden, proj, reverse, return_cells)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(lengths, x, h0, c0, a0, *params)


def _result_grads(call: Call, grads: Sequence[Tensor | None]) -> tuple[Tensor | None, ...]:
    """The gradients of the results :func:`reference_backward` differentiates, in its order."""
    dy, dh, dc, da, dcells = grads
    outs = [dy, dh]
    if call.spec.family == "lstm":
        outs += [dc] + ([da] if call.spec.carries_gates else [])
        outs += [dcells] if call.return_cells else []
    return tuple(outs)


def _reference_backward(ctx: Any, *grads: Tensor | None) -> tuple[Any, ...]:
    call: Call = ctx.call
    lengths, x, h0, c0, a0, *params = ctx.saved_tensors
    needs = ctx.needs_input_grad
    names = ("x", *LSTM_CARRY, *ctx.names)
    if torch.is_grad_enabled():
        inp = Inputs(names, (x, h0, c0, a0, *params), (*needs[:4], *needs[5]))
        found = reference_backward(call, inp, lengths, _result_grads(call, grads))
        result = [found.get(n) if inp.need[n] else None for n in names]
    else:
        # An ordinary backward is one more operator, so that a compiled backward does not
        # unroll the recomputation either.
        dx, dh0, dc0, da0, dparams = reference_scan_backward(
            x, h0, c0, a0, lengths, params, *grads, ",".join(ctx.names), *ctx.args)
        result = [dx, dh0, dc0, da0, *dparams]
        result = [g if need and v is not None else None
                  for g, need, v in zip(result, (*needs[:4], *needs[5]),
                                        (x, h0, c0, a0, *params))]
    return (*result[:4], None, result[4:], *([None] * 6))


@torch.library.custom_op(
    "lstmkit::reference_scan_backward", mutates_args=(), device_types=None,
    schema="(Tensor x, Tensor h0, Tensor? c0, Tensor? a0, Tensor? lengths, Tensor[] params, "
    "Tensor? dy, Tensor? dh, Tensor? dc, Tensor? da, Tensor? dcells, str names, str cell, "
    "int hidden_size, int proj_size, bool reverse, bool return_cells) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor[])")
def reference_scan_backward(x: Tensor, h0: Tensor, c0: Tensor | None, a0: Tensor | None,
                            lengths: Tensor | None, params: list[Tensor], dy: Tensor | None,
                            dh: Tensor | None, dc: Tensor | None, da: Tensor | None,
                            dcells: Tensor | None, names: str, cell: str, hidden_size: int,
                            proj_size: int, reverse: bool,
                            return_cells: bool) -> tuple[Any, ...]:
    call = Call.of(cell, hidden_size, proj_size, reverse, return_cells)
    keys = ("x", *LSTM_CARRY, *names.split(","))
    values = (x, h0, c0, a0, *params)
    present = [k for k, v in zip(keys, values) if v is not None]
    result_grads = _result_grads(call, (dy, dh, dc, da, dcells))
    which = [i for i, g in enumerate(result_grads) if g is not None]

    def results(*tensors: Tensor) -> tuple[Tensor, ...]:
        named = dict(zip(present, tensors))
        carry = tuple(named[n] for n in LSTM_CARRY if n in named)
        p = {n: t for n, t in named.items() if n != "x" and n not in LSTM_CARRY}
        y, final, cells = reference.scan(call.spec, p, named["x"], carry,
                                         hidden_size=hidden_size, lengths=lengths,
                                         reverse=reverse, return_cells=return_cells)
        outs = [y, *final] + ([cells] if return_cells else [])
        return tuple(outs[i] for i in which)

    inputs = [v for v in values if v is not None]
    if which:
        # A kernel runs below autograd, so the recomputation is differentiated by torch.func.
        _, vjp = torch.func.vjp(results, *inputs)
        found = dict(zip(present, vjp(tuple(result_grads[i] for i in which))))
    else:
        found = {k: torch.zeros_like(v) for k, v in zip(present, inputs)}
    # An operator's results must be new tensors, and a gradient may come back as a given one
    # or a view of it.
    given = [result_grads[i] for i in which]
    out = [_absent(x) if k not in found else found[k] for k in keys]
    out = [t.clone() if t._is_view() or any(t is g for g in given) else t for t in out]
    return (*out[:4], out[4:])


@reference_scan_backward.register_fake
def _(x: Tensor, h0: Tensor, c0: Tensor | None, a0: Tensor | None, lengths: Tensor | None,
      params: list[Tensor], *rest: Any) -> tuple[Any, ...]:
    return (torch.empty_like(x), torch.empty_like(h0),
            _absent(x) if c0 is None else torch.empty_like(c0),
            _absent(x) if a0 is None else torch.empty_like(a0),
            [torch.empty_like(p) for p in params])


reference_scan.register_autograd(_reference_backward, setup_context=_reference_setup)


def traced_reference_scan(spec: Any, p: dict[str, Tensor], x: Tensor, carry: tuple[Tensor, ...],
                          *, hidden_size: int, lengths: Tensor | None = None,
                          reverse: bool = False, return_cells: bool = False,
                          ) -> tuple[Tensor, tuple[Tensor, ...], Tensor | None]:
    """:func:`lstmkit.cells.reference.scan` as one operator, which ``torch.jit.trace``,
    ``torch.compile`` and ``torch.export`` record as such instead of unrolling its time loop
    into a graph of one fixed length. Its backward recomputes the forward with a graph."""
    names = [n for n, t in p.items() if t is not None]
    w_hr = p.get("weight_hr")
    padded = [*carry, *([None] * (3 - len(carry)))]
    outs = reference_scan(x, padded[0], padded[1], padded[2], lengths, [p[n] for n in names],
                          ",".join(names), cell_key(spec), hidden_size,
                          0 if w_hr is None else w_hr.shape[0], bool(reverse),
                          bool(return_cells))
    return outs[0], tuple(outs[1: 1 + len(carry)]), outs[4] if return_cells else None
