"""The fused engine's autograd Functions: per-sequence glue around the C++ time loops.

Per call, in Python (a handful of large torch operations, independent of the sequence length):
the input projection of all steps as one GEMM with every foldable bias folded in, the recurrent
weight ``[W_hh | G]`` assembled once, and in backward the weight, bias, peephole and input
gradients as GEMMs/reductions over all steps at once. Per time step, in C++
(``csrc/engine.cpp``): the recurrent GEMM, the fused elementwise pass, and in backward the fused
elementwise pass and the state-gradient GEMM.

Higher-order gradients: a backward asked to build a graph (``create_graph=True``, e.g. a
gradient penalty) cannot use the hand-written kernels, whose results have no graph. It recomputes
the layer-direction with :func:`lstmkit.cells.reference.scan` from the saved inputs and
differentiates that instead, so second and higher derivatives are those of the reference
equations (the 1997 truncated gradient included). The ordinary backward is unaffected.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..cells import reference
from ..cells.reference import full_bias
from ..cells.spec import CellSpec

#: Activation codes shared with the C++ ``Act`` enum.
ACT_CODES = {"tanh": 0, "sigmoid": 1, "identity": 2, "relu": 3, "sigmoid_pm1": 4,
             "sigmoid_pm2": 5}

_EMPTY: dict[tuple[torch.dtype, torch.device], Tensor] = {}
_NO_LENGTHS = torch.empty(0, dtype=torch.int64)


def _empty(like: Tensor) -> Tensor:
    key = (like.dtype, like.device)
    if key not in _EMPTY:
        _EMPTY[key] = like.new_empty(0)
    return _EMPTY[key]


def _c(t: Tensor | None, like: Tensor) -> Tensor:
    """A contiguous tensor for C++, or an empty one standing for "absent"."""
    return _empty(like) if t is None else t.contiguous()


def _lengths(lengths: Tensor | None) -> Tensor:
    """Lengths as C++ reads them: int64 on the CPU, or empty for "every step valid"."""
    if lengths is None:
        return _NO_LENGTHS
    return lengths.to(device="cpu", dtype=torch.int64).contiguous()


def _rows(spec: CellSpec, hidden_size: int, full: Tensor, blocks: tuple[str, ...]) -> Tensor:
    """Inverse of ``reference._full_rows`` along dim 0: keep only ``blocks``' rows."""
    if blocks == spec.block_names:
        return full
    pieces, start = [], 0
    for name, width in spec.block_widths(hidden_size).items():
        if name in blocks:
            pieces.append(full[start : start + width])
        start += width
    return torch.cat(pieces, 0)


def _full_cols(spec: CellSpec, hidden_size: int, part: Tensor, blocks: tuple[str, ...]) -> Tensor:
    """``part`` (rows of ``blocks`` only) placed into all pre-activation rows, zeros elsewhere."""
    if blocks == spec.block_names:
        return part
    pieces, start = [], 0
    for name, width in spec.block_widths(hidden_size).items():
        if name in blocks:
            pieces.append(part[start : start + width])
            start += width
        else:
            pieces.append(part.new_zeros((width,) + part.shape[1:]))
    return torch.cat(pieces, 0)


def _folded_bias(spec: CellSpec, hidden_size: int, b_ih: Tensor | None,
                 b_hh: Tensor | None) -> Tensor | None:
    """``b_ih + b_hh`` over all pre-activation rows (either may be absent)."""
    total = None
    for b in (b_ih, b_hh):
        if b is not None:
            fb = full_bias(spec, hidden_size, b)
            total = fb if total is None else total + fb
    return total


def _project(x: Tensor, w_ih: Tensor, bias: Tensor | None) -> Tensor:
    """``x W_ih^T + bias`` for all steps in one GEMM, as a fresh contiguous ``[T, B, rows]``."""
    steps, batch, n_in = x.shape
    x2 = x.reshape(steps * batch, n_in)
    if bias is None:
        out = torch.mm(x2, w_ih.t())
    else:
        out = torch.addmm(bias, x2, w_ih.t())
    return out.view(steps, batch, -1)


def _grad_bias(spec: CellSpec, hidden_size: int, full_grad: Tensor) -> Tensor:
    return _rows(spec, hidden_size, full_grad, spec.biased_blocks())


def _input_grads(ctx: Any, dz: Tensor, x: Tensor, w_ih: Tensor) -> tuple[Tensor | None, ...]:
    """dx, dW_ih and the summed pre-activation gradient (for biases), each only when needed."""
    steps, batch, n_in = x.shape
    dz2 = dz.view(steps * batch, -1)
    dx = torch.mm(dz2, w_ih).view(steps, batch, n_in) if ctx.needs_input_grad[ctx.ix] else None
    dw = torch.mm(dz2.t(), x.reshape(steps * batch, n_in)) if ctx.needs_input_grad[ctx.iw] else None
    return dx, dw, dz2


def _reference_backward(ctx: Any, spec: CellSpec, hidden_size: int, reverse: bool,
                        return_cells: bool, names: tuple[str, ...],
                        originals: tuple[Tensor | None, ...],
                        grads: tuple[Tensor, ...]) -> tuple[Tensor | None, ...]:
    """The backward as a differentiable graph: recompute with the reference and differentiate.

    ``originals`` are the Function's tensor inputs as saved in forward (``x``, the carry, then
    the parameters of ``names``), so the graph built here reaches the caller's tensors. Each
    differentiated input enters through its own alias: an input passed twice (``h0 is c0``)
    then gets the gradient of each use, as autograd sums them itself.
    """
    n_carry = len(originals) - 1 - len(names)
    need = ctx.needs_input_grad[2:]
    with torch.enable_grad():
        inputs = [t.view_as(t) if t is not None and need[i] else t
                  for i, t in enumerate(originals)]
        x, carry = inputs[0], tuple(t for t in inputs[1 : 1 + n_carry] if t is not None)
        params = {n: t for n, t in zip(names, inputs[1 + n_carry :]) if t is not None}
        y, final, cells = reference.scan(spec, params, x, carry, hidden_size=hidden_size,
                                         lengths=ctx.lengths, reverse=reverse,
                                         return_cells=return_cells)
        outs = [y, *final] + ([cells] if return_cells else [])
        pairs = [(o, g) for o, g in zip(outs, grads) if o.requires_grad]
        wrt = [t for i, t in enumerate(inputs) if t is not None and need[i]]
        found = torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs],
                                    create_graph=True, allow_unused=True) if pairs else \
            [None] * len(wrt)
    it = iter(found)
    return (None, None, *(next(it) if t is not None and need[i] else None
                          for i, t in enumerate(inputs)))


# -------------------------------------------------------------------------------------------
# LSTM family

LSTM_PARAMS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_gh", "weight_ci",
               "weight_cf", "weight_co", "weight_hr")


def lstm_cfg(spec: CellSpec, hidden_size: int, out_size: int, proj: bool,
             reverse: bool) -> list[int]:
    return [hidden_size, spec.block_size, out_size, int(spec.input_gate), int(spec.forget_gate),
            int(spec.output_gate), int(spec.coupled), int(spec.peephole), int(proj),
            int(spec.hidden_recurrence), int(spec.carries_gates), int(reverse),
            int(spec.truncated_gradient), ACT_CODES[spec.gate_activation],
            ACT_CODES[spec.input_activation], ACT_CODES[spec.output_activation]]


def _lstm_prepare(spec: CellSpec, hidden_size: int, x: Tensor, params: dict[str, Tensor | None]):
    """Input projection, the recurrent weight ``[W_hh | G_full]`` and the peephole matrix."""
    bias = _folded_bias(spec, hidden_size, params["bias_ih"], params["bias_hh"])
    xg = _project(x, params["weight_ih"], bias)
    parts = []
    if spec.hidden_recurrence:
        parts.append(params["weight_hh"])
    if spec.carries_gates:
        parts.append(_full_cols(spec, hidden_size, params["weight_gh"],
                                spec.gate_recurrent_blocks()))
    if not parts:
        wcat = None
    elif len(parts) == 1:
        wcat = parts[0].contiguous()
    else:
        wcat = torch.cat(parts, 1)
    peep = None
    if spec.peephole:
        zeros = x.new_zeros(hidden_size)
        peep = torch.stack([params[f"weight_c{g}"] if params[f"weight_c{g}"] is not None
                            else zeros for g in "ifo"])
    return xg, wcat, peep


def lstm_run(ext: Any, spec: CellSpec, hidden_size: int, x: Tensor, h0: Tensor, c0: Tensor,
             a0: Tensor | None, lengths: Tensor | None, reverse: bool, return_cells: bool,
             params: dict[str, Tensor | None]) -> tuple[Tensor, ...]:
    """Forward only (no graph): ``(y, h_T, c_T[, a_T][, cells])``."""
    proj = params["weight_hr"] is not None
    out_size = h0.shape[-1]
    xg, wcat, peep = _lstm_prepare(spec, hidden_size, x, params)
    cfg = lstm_cfg(spec, hidden_size, out_size, proj, reverse)
    res = ext.lstm_forward(xg, _c(wcat, x), _c(peep, x), _c(params["weight_hr"], x),
                           h0.contiguous(), c0.contiguous(), _c(a0, x), _lengths(lengths),
                           cfg, False, return_cells)
    y, h_t, c_t, a_t, cells = res[:5]
    outs = [y, h_t, c_t]
    if spec.carries_gates:
        outs.append(a_t)
    if return_cells:
        outs.append(cells)
    return tuple(outs)


class LSTMFunction(torch.autograd.Function):
    """Whole-sequence LSTM-family layer-direction with the hand-written backward."""

    @staticmethod
    def forward(ctx: Any, meta: tuple, lengths: Tensor | None, x: Tensor, h0: Tensor, c0: Tensor,
                a0: Tensor | None, *flat: Tensor | None) -> tuple[Tensor, ...]:
        ext, spec, hidden_size, reverse, return_cells = meta
        params = dict(zip(LSTM_PARAMS, flat))
        proj = params["weight_hr"] is not None
        out_size = h0.shape[-1]
        xg, wcat, peep = _lstm_prepare(spec, hidden_size, x, params)
        cfg = lstm_cfg(spec, hidden_size, out_size, proj, reverse)
        y, h_t, c_t, a_t, cells, rin, call, mall = ext.lstm_forward(
            xg, _c(wcat, x), _c(peep, x), _c(params["weight_hr"], x), h0.contiguous(),
            c0.contiguous(), _c(a0, x), _lengths(lengths), cfg, True, return_cells)
        ctx.meta = meta
        ctx.cfg = cfg
        ctx.has_lengths = lengths is not None
        ctx.ix, ctx.iw = 2, 6
        saved = [x, xg, rin, call, _c(wcat, x), _c(peep, x), _c(params["weight_hr"], x),
                 _c(mall if proj else None, x), _lengths(lengths), params["weight_ih"]]
        # The inputs themselves go last: a backward that builds a graph recomputes from them.
        ctx.save_for_backward(*saved, x, h0, c0, a0, *flat)
        ctx.lengths = lengths
        ctx.present = tuple(p is not None for p in flat)
        ctx.out_size = out_size
        outs = [y, h_t, c_t]
        if spec.carries_gates:
            outs.append(a_t)
        if return_cells:
            outs.append(cells)
        return tuple(outs)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:
        ext, spec, hidden_size, reverse, return_cells = ctx.meta
        if torch.is_grad_enabled():
            return _reference_backward(ctx, spec, hidden_size, reverse, return_cells,
                                       LSTM_PARAMS, tuple(ctx.saved_tensors[10:]), grads)
        x, gates, rin, call, wcat, peep, w_hr, mall, lengths, w_ih = ctx.saved_tensors[:10]
        steps, batch, _ = x.shape
        dy, dh_t, dc_t = grads[0], grads[1], grads[2]
        k = 3
        da_t = None
        if spec.carries_gates:
            da_t = grads[k]
            k += 1
        dcells = grads[k] if return_cells else None
        dz, dh0, dc0, da0, dhall, dpeep = ext.lstm_backward(
            gates, wcat, peep, w_hr, rin, call, lengths, dy.contiguous(), dh_t.contiguous(),
            dc_t.contiguous(), _c(da_t, x), _c(dcells, x), ctx.cfg)
        need = ctx.needs_input_grad
        dx, dw_ih, dz2 = _input_grads(ctx, dz, x, w_ih)
        names = LSTM_PARAMS
        g: dict[str, Tensor | None] = dict.fromkeys(names)
        g["weight_ih"] = dw_ih
        off = 6
        need_p = {n: need[off + i] for i, n in enumerate(names)}
        if need_p["bias_ih"] or need_p["bias_hh"]:
            dbias = _grad_bias(spec, hidden_size, dz2.sum(0))
            g["bias_ih"] = dbias if need_p["bias_ih"] else None
            g["bias_hh"] = dbias if need_p["bias_hh"] else None
        out_size = ctx.out_size
        koff = 0 if spec.hidden_recurrence else out_size
        if need_p["weight_hh"] or need_p["weight_gh"]:
            prev = rin[1:] if reverse else rin[:-1]
            prev2 = prev.reshape(steps * batch, -1)[:, koff:]
            dwcat = torch.mm(dz2.t(), prev2)
            if spec.hidden_recurrence:
                g["weight_hh"] = dwcat[:, :out_size]
            if spec.carries_gates:
                col = out_size if spec.hidden_recurrence else 0
                g["weight_gh"] = _rows(spec, hidden_size, dwcat[:, col:],
                                       spec.gate_recurrent_blocks())
        if spec.peephole:
            for row, name in enumerate("ifo"):
                if name in spec.gate_names and need_p[f"weight_c{name}"]:
                    g[f"weight_c{name}"] = dpeep[row]
        if need_p["weight_hr"]:
            g["weight_hr"] = torch.mm(dhall.view(steps * batch, -1).t(),
                                      mall.view(steps * batch, -1))
        return (None, None, dx, dh0 if need[3] else None, dc0 if need[4] else None,
                da0 if (need[5] and spec.carries_gates) else None,
                *(g[n] if ctx.present[i] else None for i, n in enumerate(names)))


# -------------------------------------------------------------------------------------------
# GRU and RNN

GRU_PARAMS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def gru_cfg(spec: CellSpec, hidden_size: int, reverse: bool) -> list[int]:
    return [hidden_size, int(spec.reset_after), int(reverse), ACT_CODES[spec.gate_activation],
            ACT_CODES[spec.input_activation]]


def _gru_prepare(spec: CellSpec, hidden_size: int, x: Tensor, params: dict[str, Tensor | None]):
    fb_ih = full_bias(spec, hidden_size, params["bias_ih"]) if params["bias_ih"] is not None \
        else None
    fb_hh = full_bias(spec, hidden_size, params["bias_hh"]) if params["bias_hh"] is not None \
        else None
    b_hn = None
    if spec.reset_after and fb_hh is not None:
        b_hn = fb_hh[2 * hidden_size :]
        fb_hh = torch.cat([fb_hh[: 2 * hidden_size], fb_hh.new_zeros(hidden_size)])
    bias = fb_ih if fb_hh is None else (fb_hh if fb_ih is None else fb_ih + fb_hh)
    return _project(x, params["weight_ih"], bias), b_hn


def gru_run(ext: Any, spec: CellSpec, hidden_size: int, x: Tensor, h0: Tensor,
            lengths: Tensor | None, reverse: bool, params: dict[str, Tensor | None]):
    xg, b_hn = _gru_prepare(spec, hidden_size, x, params)
    y, h_t, _, _ = ext.gru_forward(xg, params["weight_hh"].contiguous(), _c(b_hn, x),
                                   h0.contiguous(), _lengths(lengths),
                                   gru_cfg(spec, hidden_size, reverse), False)
    return y, h_t


class GRUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, meta: tuple, lengths: Tensor | None, x: Tensor, h0: Tensor,
                *flat: Tensor | None) -> tuple[Tensor, ...]:
        ext, spec, hidden_size, reverse = meta
        params = dict(zip(GRU_PARAMS, flat))
        xg, b_hn = _gru_prepare(spec, hidden_size, x, params)
        cfg = gru_cfg(spec, hidden_size, reverse)
        w_hh = params["weight_hh"].contiguous()
        len_c = _lengths(lengths)
        y, h_t, hs, aux = ext.gru_forward(xg, w_hh, _c(b_hn, x), h0.contiguous(), len_c, cfg,
                                          True)
        ctx.meta, ctx.cfg, ctx.ix, ctx.iw = meta, cfg, 2, 4
        ctx.present = tuple(p is not None for p in flat)
        ctx.save_for_backward(x, xg, hs, aux, w_hh, len_c, params["weight_ih"], x, h0, *flat)
        ctx.lengths = lengths
        return y, h_t

    @staticmethod
    def backward(ctx: Any, dy: Tensor, dh_t: Tensor) -> tuple[Tensor | None, ...]:
        ext, spec, hidden_size, reverse = ctx.meta
        if torch.is_grad_enabled():
            return _reference_backward(ctx, spec, hidden_size, reverse, False, GRU_PARAMS,
                                       tuple(ctx.saved_tensors[7:]), (dy, dh_t))
        x, gates, hs, aux, w_hh, lengths, w_ih = ctx.saved_tensors[:7]
        steps, batch, _ = x.shape
        dz, drec, dh0 = ext.gru_backward(gates, w_hh, hs, aux, lengths, dy.contiguous(),
                                         dh_t.contiguous(), ctx.cfg)
        need = ctx.needs_input_grad
        dx, dw_ih, dz2 = _input_grads(ctx, dz, x, w_ih)
        n = steps * batch
        h_prev = (hs[1:] if reverse else hs[:-1]).reshape(n, hidden_size)
        dw_hh = db_ih = db_hh = None
        if spec.reset_after:
            drec2 = drec.view(n, -1)
            if need[5]:
                dw_hh = torch.mm(drec2.t(), h_prev)
            if need[7]:
                db_hh = _grad_bias(spec, hidden_size, drec2.sum(0))
            if need[6]:
                db_ih = _grad_bias(spec, hidden_size, dz2.sum(0))
        else:
            if need[5]:
                two = 2 * hidden_size
                dw_hh = torch.cat([torch.mm(dz2[:, :two].t(), h_prev),
                                   torch.mm(dz2[:, two:].t(), aux.view(n, hidden_size))])
            if need[6] or need[7]:
                db = _grad_bias(spec, hidden_size, dz2.sum(0))
                db_ih = db if need[6] else None
                db_hh = db if need[7] else None
        grads = (dw_ih, dw_hh, db_ih, db_hh)
        return (None, None, dx, dh0 if need[3] else None,
                *(g if ctx.present[i] else None for i, g in enumerate(grads)))


def rnn_cfg(spec: CellSpec, hidden_size: int, reverse: bool) -> list[int]:
    return [hidden_size, int(reverse), ACT_CODES[spec.input_activation]]


def _rnn_prepare(spec: CellSpec, hidden_size: int, x: Tensor, params: dict[str, Tensor | None]):
    bias = _folded_bias(spec, hidden_size, params["bias_ih"], params["bias_hh"])
    return _project(x, params["weight_ih"], bias)


def rnn_run(ext: Any, spec: CellSpec, hidden_size: int, x: Tensor, h0: Tensor,
            lengths: Tensor | None, reverse: bool, params: dict[str, Tensor | None]):
    xg = _rnn_prepare(spec, hidden_size, x, params)
    y, h_t, _ = ext.rnn_forward(xg, params["weight_hh"].contiguous(), h0.contiguous(),
                                _lengths(lengths), rnn_cfg(spec, hidden_size, reverse),
                                False)
    return y, h_t


class RNNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, meta: tuple, lengths: Tensor | None, x: Tensor, h0: Tensor,
                *flat: Tensor | None) -> tuple[Tensor, ...]:
        ext, spec, hidden_size, reverse = meta
        params = dict(zip(GRU_PARAMS, flat))
        xg = _rnn_prepare(spec, hidden_size, x, params)
        cfg = rnn_cfg(spec, hidden_size, reverse)
        w_hh = params["weight_hh"].contiguous()
        len_c = _lengths(lengths)
        y, h_t, hs = ext.rnn_forward(xg, w_hh, h0.contiguous(), len_c, cfg, True)
        ctx.meta, ctx.cfg, ctx.ix, ctx.iw = meta, cfg, 2, 4
        ctx.present = tuple(p is not None for p in flat)
        ctx.save_for_backward(x, xg, hs, w_hh, len_c, params["weight_ih"], x, h0, *flat)
        ctx.lengths = lengths
        return y, h_t

    @staticmethod
    def backward(ctx: Any, dy: Tensor, dh_t: Tensor) -> tuple[Tensor | None, ...]:
        ext, spec, hidden_size, reverse = ctx.meta
        if torch.is_grad_enabled():
            return _reference_backward(ctx, spec, hidden_size, reverse, False, GRU_PARAMS,
                                       tuple(ctx.saved_tensors[6:]), (dy, dh_t))
        x, hact, hs, w_hh, lengths, w_ih = ctx.saved_tensors[:6]
        steps, batch, _ = x.shape
        dz, dh0 = ext.rnn_backward(hact, w_hh, lengths, dy.contiguous(), dh_t.contiguous(),
                                   ctx.cfg)
        need = ctx.needs_input_grad
        dx, dw_ih, dz2 = _input_grads(ctx, dz, x, w_ih)
        n = steps * batch
        h_prev = (hs[1:] if reverse else hs[:-1]).reshape(n, hidden_size)
        dw_hh = torch.mm(dz2.t(), h_prev) if need[5] else None
        db = _grad_bias(spec, hidden_size, dz2.sum(0)) if (need[6] or need[7]) else None
        grads = (dw_ih, dw_hh, db if need[6] else None, db if need[7] else None)
        return (None, None, dx, dh0 if need[3] else None,
                *(g if ctx.present[i] else None for i, g in enumerate(grads)))
