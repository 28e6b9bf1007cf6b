"""The fused engine's autograd Functions: per-sequence glue around the C++ time loops.

Per call, in Python (a handful of large torch operations, independent of the sequence length):
the input projection of all steps as one GEMM with every foldable bias folded in, the recurrent
weight ``[W_hh | G]`` assembled once, and in backward the weight, bias, peephole and input
gradients as GEMMs/reductions over all steps at once. Per time step, in C++ (``csrc/``): the
recurrent GEMM, the fused elementwise pass, and in backward the fused elementwise pass and the
state-gradient GEMM.

The seam is named on both sides: the configuration is built from the cell's layout
(:meth:`lstmkit.cells.layout.Layout.engine_config`) and passed as ``ext.LstmConfig(**fields)``,
operands go by keyword, results come back as dicts, and each Function's inputs and gradients
are matched by name (:class:`_Inputs`), never by position.

Higher-order gradients: a backward asked to build a graph (``create_graph=True``, e.g. a
gradient penalty) cannot use the hand-written kernels, whose results have no graph. It recomputes
the layer-direction with :func:`lstmkit.cells.reference.scan` from the saved inputs and
differentiates that instead, so second and higher derivatives are those of the reference
equations (the 1997 truncated gradient included). The ordinary backward is unaffected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..cells import reference
from ..cells.layout import Layout
from ..cells.spec import CellSpec

LSTM_PARAMS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_gh", "weight_ci",
               "weight_cf", "weight_co", "weight_hr")
GRU_PARAMS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
LSTM_CARRY = ("h0", "c0", "a0")
GRU_CARRY = ("h0",)

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


@dataclass(frozen=True)
class Call:
    """What a Function needs besides tensors: the extension, the cell and its layout."""

    ext: Any
    spec: CellSpec
    layout: Layout
    reverse: bool
    return_cells: bool = False

    def config(self) -> Any:
        """The extension's named configuration for this layer-direction: sizes and offsets
        from the layout, and every field named like a spec attribute from the spec."""
        return engine_config(self.ext, self.spec, self.layout, self.reverse)


_CONFIGS: dict[tuple[int, CellSpec, int, int, bool], Any] = {}


def engine_config(ext: Any, spec: CellSpec, lay: Layout, reverse: bool) -> Any:
    """``ext.LstmConfig``/``GruConfig``/``RnnConfig`` for a layer-direction (see
    ``csrc/config.h``); a field neither the layout nor the spec provides is an error.

    Built once per extension, cell, layout and direction: the kernels only read it, and building
    it costs about as much as a small layer's whole time loop."""
    key = (id(ext), spec, lay.hidden_size, lay.out_size, bool(reverse))
    found = _CONFIGS.get(key)
    if found is None:
        found = _CONFIGS[key] = _build_config(ext, spec, lay, reverse)
    return found


def _build_config(ext: Any, spec: CellSpec, lay: Layout, reverse: bool) -> Any:
    cls = {"lstm": ext.LstmConfig, "gru": ext.GruConfig, "rnn": ext.RnnConfig}[spec.family]
    fields = lay.engine_config(reverse)
    for name in cls.fields:
        if name not in fields:
            if not hasattr(spec, name):
                raise TypeError(f"{cls.__name__}.{name}: neither the layout nor CellSpec "
                                "provides this field")
            fields[name] = getattr(spec, name)
    return cls(**fields)


class _Inputs:
    """A Function's tensor inputs by name (``x``, the carry, then the parameters), with which of
    them need a gradient; ``grads(found)`` lays named gradients out in the Function's order."""

    def __init__(self, names: tuple[str, ...], values: tuple[Tensor | None, ...],
                 needs: tuple[bool, ...]) -> None:
        self.names = names
        self.values = dict(zip(names, values))
        self.need = {n: bool(k) and self.values[n] is not None for n, k in zip(names, needs)}

    def grads(self, found: dict[str, Tensor | None]) -> tuple[Tensor | None, ...]:
        # The two leading Nones are the Function's non-tensor arguments (call, lengths).
        return (None, None, *(found.get(n) if self.need[n] else None for n in self.names))


def _project(x: Tensor, w_ih: Tensor, bias: Tensor | None) -> Tensor:
    """``x W_ih^T + bias`` for all steps in one GEMM, as a fresh contiguous ``[T, B, rows]``."""
    steps, batch, n_in = x.shape
    x2 = x.reshape(steps * batch, n_in)
    if bias is None:
        out = torch.mm(x2, w_ih.t())
    else:
        out = torch.addmm(bias, x2, w_ih.t())
    return out.view(steps, batch, -1)


def _folded_bias(lay: Layout, b_ih: Tensor | None, b_hh: Tensor | None) -> Tensor | None:
    """``b_ih + b_hh`` over all pre-activation rows (either may be absent)."""
    total = None
    for b in (b_ih, b_hh):
        if b is not None:
            fb = lay.expand(b, lay.spec.biased_blocks())
            total = fb if total is None else total + fb
    return total


def _input_grads(inp: _Inputs, dz: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor]:
    """dx, dW_ih and the pre-activation gradient as ``[T*B, rows]``, each only when needed."""
    x, w_ih = inp.values["x"], inp.values["weight_ih"]
    steps, batch, n_in = x.shape
    dz2 = dz.view(steps * batch, -1)
    dx = torch.mm(dz2, w_ih).view(steps, batch, n_in) if inp.need["x"] else None
    dw = torch.mm(dz2.t(), x.reshape(steps * batch, n_in)) if inp.need["weight_ih"] else None
    return dx, dw, dz2


def _bias_grads(inp: _Inputs, lay: Layout, dz_sum: Tensor, found: dict[str, Tensor | None],
                names: tuple[str, ...] = ("bias_ih", "bias_hh")) -> None:
    """The gradient of each bias in ``names`` from the summed pre-activation gradient."""
    if any(inp.need[n] for n in names):
        grad = lay.select(dz_sum, lay.spec.biased_blocks())
        for n in names:
            found[n] = grad


def _reference_backward(call: Call, inp: _Inputs, lengths: Tensor | None,
                        outputs: tuple[Tensor, ...]) -> tuple[Tensor | None, ...]:
    """The backward as a differentiable graph: recompute with the reference and differentiate.

    ``inp`` holds the Function's own inputs as saved in forward, so the graph built here reaches
    the caller's tensors. Each differentiated input enters through its own alias: an input
    passed twice (``h0 is c0``) then gets the gradient of each use, as autograd sums them.
    """
    carry_names = LSTM_CARRY if call.spec.family == "lstm" else GRU_CARRY
    with torch.enable_grad():
        alias = {n: (t.view_as(t) if inp.need[n] else t) for n, t in inp.values.items()}
        carry = tuple(alias[n] for n in carry_names if alias.get(n) is not None)
        params = {n: t for n, t in alias.items()
                  if n not in carry_names and n != "x" and t is not None}
        y, final, cells = reference.scan(call.spec, params, alias["x"], carry,
                                         hidden_size=call.layout.hidden_size, lengths=lengths,
                                         reverse=call.reverse, return_cells=call.return_cells)
        outs = [y, *final] + ([cells] if call.return_cells else [])
        pairs = [(o, g) for o, g in zip(outs, outputs) if o.requires_grad]
        wrt = [n for n in inp.names if inp.need[n]]
        found = torch.autograd.grad([o for o, _ in pairs], [alias[n] for n in wrt],
                                    [g for _, g in pairs], create_graph=True,
                                    allow_unused=True) if pairs else [None] * len(wrt)
    return inp.grads(dict(zip(wrt, found)))


# -------------------------------------------------------------------------------------------
# LSTM family

def _lstm_prepare(call: Call, x: Tensor, params: dict[str, Tensor | None]):
    """Input projection, the recurrent weight ``[W_hh | G_full]`` and the peephole matrix."""
    spec, lay = call.spec, call.layout
    bias = _folded_bias(lay, params["bias_ih"], params["bias_hh"])
    xg = _project(x, params["weight_ih"], bias)
    parts = []
    if spec.hidden_recurrence:
        parts.append(params["weight_hh"])
    if spec.carries_gates:
        parts.append(lay.expand(params["weight_gh"], spec.gate_recurrent_blocks(), dim=0))
    if not parts:
        wcat = None
    elif len(parts) == 1:
        wcat = parts[0].contiguous()
    else:
        wcat = torch.cat(parts, 1)
    peep = None
    if spec.peephole:
        zeros = x.new_zeros(lay.hidden_size)
        peep = torch.stack([params[f"weight_c{g}"] if params[f"weight_c{g}"] is not None
                            else zeros for g in "ifo"])
    return xg, wcat, peep


def _lstm_forward(call: Call, x: Tensor, carry: dict[str, Tensor | None],
                  params: dict[str, Tensor | None], lengths: Tensor | None,
                  save: bool) -> tuple[dict[str, Tensor | None], Tensor, Tensor | None,
                                       Tensor | None]:
    xg, wcat, peep = _lstm_prepare(call, x, params)
    res = call.ext.lstm_forward(
        cfg=call.config(), xg=xg, wcat=_c(wcat, x), peep=_c(peep, x),
        w_hr=_c(params["weight_hr"], x), h0=carry["h0"].contiguous(),
        c0=carry["c0"].contiguous(), a0=_c(carry["a0"], x), lengths=_lengths(lengths),
        save=save, return_cells=call.return_cells)
    return res, xg, wcat, peep


def _lstm_outputs(call: Call, res: dict[str, Tensor | None]) -> tuple[Tensor, ...]:
    """``(y, h_T, c_T[, a_T][, cells])``: the carry as the cell has it, then the cells."""
    names = ["y", "h", "c"] + (["a"] if call.spec.carries_gates else [])
    names += ["cells"] if call.return_cells else []
    return tuple(res[n] for n in names)


def lstm_run(call: Call, x: Tensor, carry: tuple[Tensor | None, ...], lengths: Tensor | None,
             params: dict[str, Tensor | None]) -> tuple[Tensor, ...]:
    """Forward only (no graph): ``(y, h_T, c_T[, a_T][, cells])``."""
    res, _, _, _ = _lstm_forward(call, x, dict(zip(LSTM_CARRY, carry)), params, lengths, False)
    return _lstm_outputs(call, res)


class LSTMFunction(torch.autograd.Function):
    """Whole-sequence LSTM-family layer-direction with the hand-written backward.

    Inputs: ``(call, lengths, x, h0, c0, a0, *params)`` with the parameters in
    :data:`LSTM_PARAMS` order (None where the cell has none).
    """

    @staticmethod
    def forward(ctx: Any, call: Call, lengths: Tensor | None, x: Tensor, h0: Tensor, c0: Tensor,
                a0: Tensor | None, *flat: Tensor | None) -> tuple[Tensor, ...]:
        params = dict(zip(LSTM_PARAMS, flat))
        carry = {"h0": h0, "c0": c0, "a0": a0}
        res, xg, wcat, peep = _lstm_forward(call, x, carry, params, lengths, True)
        ctx.call, ctx.lengths = call, lengths
        ctx.names = ("x", *LSTM_CARRY, *LSTM_PARAMS)
        # The kernels' saved state first, then the inputs themselves: the backward reads the
        # parameters from them, and a backward that builds a graph recomputes from them.
        ctx.save_for_backward(xg, res["rec_in"], res["c_all"], _c(wcat, x), _c(peep, x),
                              _c(res["m_all"], x), _lengths(lengths), x, h0, c0, a0, *flat)
        return _lstm_outputs(call, res)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:
        call: Call = ctx.call
        spec, lay = call.spec, call.layout
        saved = ctx.saved_tensors
        inp = _Inputs(ctx.names, saved[7:], ctx.needs_input_grad[2:])
        if torch.is_grad_enabled():
            return _reference_backward(call, inp, ctx.lengths, grads)
        gates, rin, c_all, wcat, peep, m_all, lengths = saved[:7]
        x = inp.values["x"]
        outs = dict(zip(["y", "h", "c"] + (["a"] if spec.carries_gates else [])
                        + (["cells"] if call.return_cells else []), grads))
        res = call.ext.lstm_backward(
            cfg=call.config(), gates=gates, wcat=wcat, peep=peep,
            w_hr=_c(inp.values["weight_hr"], x), c_all=c_all, lengths=lengths,
            dy=outs["y"].contiguous(), dh=outs["h"].contiguous(), dc=outs["c"].contiguous(),
            da=_c(outs.get("a"), x), dcells=_c(outs.get("cells"), x))
        steps, batch, _ = x.shape
        found: dict[str, Tensor | None] = {"h0": res["dh0"], "c0": res["dc0"], "a0": res["da0"]}
        found["x"], found["weight_ih"], dz2 = _input_grads(inp, res["dz"])
        _bias_grads(inp, lay, dz2.sum(0), found)
        if inp.need["weight_hh"] or inp.need["weight_gh"]:
            # The recurrent input of each step, [h(t-1) | a(t-1)], as the GEMM saw it.
            prev = rin[1:] if call.reverse else rin[:-1]
            koff = 0 if spec.hidden_recurrence else lay.out_size
            dwcat = torch.mm(dz2.t(), prev.reshape(steps * batch, -1)[:, koff:])
            if spec.hidden_recurrence:
                found["weight_hh"] = dwcat[:, : lay.out_size]
            if spec.carries_gates:
                col = lay.out_size if spec.hidden_recurrence else 0
                found["weight_gh"] = lay.select(dwcat[:, col:], spec.gate_recurrent_blocks(),
                                                dim=0)
        if spec.peephole:
            for row, gate in enumerate("ifo"):
                found[f"weight_c{gate}"] = res["dpeep"][row]
        if inp.need["weight_hr"]:
            found["weight_hr"] = torch.mm(res["dh_all"].view(steps * batch, -1).t(),
                                          m_all.view(steps * batch, -1))
        return inp.grads(found)


# -------------------------------------------------------------------------------------------
# GRU and RNN

def _gru_prepare(call: Call, x: Tensor, params: dict[str, Tensor | None]):
    """The input projection and, in torch's placement, the candidate's recurrent bias b_hn
    (which the reset gate multiplies, so it cannot be folded into the projection)."""
    lay, hidden = call.layout, call.layout.hidden_size
    biased = call.spec.biased_blocks()
    fb_ih = lay.expand(params["bias_ih"], biased) if params["bias_ih"] is not None else None
    fb_hh = lay.expand(params["bias_hh"], biased) if params["bias_hh"] is not None else None
    b_hn = None
    if call.spec.reset_after and fb_hh is not None:
        b_hn = fb_hh[lay.blocks["n"]]
        fb_hh = torch.cat([fb_hh[: 2 * hidden], fb_hh.new_zeros(hidden)])
    bias = fb_ih if fb_hh is None else (fb_hh if fb_ih is None else fb_ih + fb_hh)
    return _project(x, params["weight_ih"], bias), b_hn


def gru_run(call: Call, x: Tensor, h0: Tensor, lengths: Tensor | None,
            params: dict[str, Tensor | None]) -> tuple[Tensor, Tensor]:
    """Forward only (no graph): ``(y, h_T)``."""
    xg, b_hn = _gru_prepare(call, x, params)
    res = call.ext.gru_forward(cfg=call.config(), xg=xg, w_hh=params["weight_hh"].contiguous(),
                               b_hn=_c(b_hn, x), h0=h0.contiguous(), lengths=_lengths(lengths),
                               save=False)
    return res["y"], res["h"]


class GRUFunction(torch.autograd.Function):
    """Whole-sequence GRU layer-direction: inputs ``(call, lengths, x, h0, *params)``."""

    @staticmethod
    def forward(ctx: Any, call: Call, lengths: Tensor | None, x: Tensor, h0: Tensor,
                *flat: Tensor | None) -> tuple[Tensor, ...]:
        params = dict(zip(GRU_PARAMS, flat))
        xg, b_hn = _gru_prepare(call, x, params)
        w_hh = params["weight_hh"].contiguous()
        len_c = _lengths(lengths)
        res = call.ext.gru_forward(cfg=call.config(), xg=xg, w_hh=w_hh, b_hn=_c(b_hn, x),
                                   h0=h0.contiguous(), lengths=len_c, save=True)
        ctx.call, ctx.lengths, ctx.names = call, lengths, ("x", *GRU_CARRY, *GRU_PARAMS)
        ctx.save_for_backward(xg, res["h_all"], res["aux"], w_hh, len_c, x, h0, *flat)
        return res["y"], res["h"]

    @staticmethod
    def backward(ctx: Any, dy: Tensor, dh_t: Tensor) -> tuple[Tensor | None, ...]:
        call: Call = ctx.call
        lay, hidden = call.layout, call.layout.hidden_size
        saved = ctx.saved_tensors
        inp = _Inputs(ctx.names, saved[5:], ctx.needs_input_grad[2:])
        if torch.is_grad_enabled():
            return _reference_backward(call, inp, ctx.lengths, (dy, dh_t))
        gates, hs, aux, w_hh, lengths = saved[:5]
        res = call.ext.gru_backward(cfg=call.config(), gates=gates, w_hh=w_hh, h_all=hs, aux=aux,
                                    lengths=lengths, dy=dy.contiguous(), dh=dh_t.contiguous())
        found: dict[str, Tensor | None] = {"h0": res["dh0"]}
        found["x"], found["weight_ih"], dz2 = _input_grads(inp, res["dz"])
        n = dz2.shape[0]
        h_prev = (hs[1:] if call.reverse else hs[:-1]).reshape(n, hidden)
        if call.spec.reset_after:
            # The recurrent pre-activations R h + b_hh have their own gradient (drec).
            drec2 = res["drec"].view(n, -1)
            if inp.need["weight_hh"]:
                found["weight_hh"] = torch.mm(drec2.t(), h_prev)
            _bias_grads(inp, lay, drec2.sum(0), found, ("bias_hh",))
            _bias_grads(inp, lay, dz2.sum(0), found, ("bias_ih",))
        else:
            if inp.need["weight_hh"]:
                two = 2 * hidden
                found["weight_hh"] = torch.cat([torch.mm(dz2[:, :two].t(), h_prev),
                                                torch.mm(dz2[:, two:].t(), aux.view(n, hidden))])
            _bias_grads(inp, lay, dz2.sum(0), found)
        return inp.grads(found)


def _rnn_prepare(call: Call, x: Tensor, params: dict[str, Tensor | None]) -> Tensor:
    bias = _folded_bias(call.layout, params["bias_ih"], params["bias_hh"])
    return _project(x, params["weight_ih"], bias)


def rnn_run(call: Call, x: Tensor, h0: Tensor, lengths: Tensor | None,
            params: dict[str, Tensor | None]) -> tuple[Tensor, Tensor]:
    """Forward only (no graph): ``(y, h_T)``."""
    res = call.ext.rnn_forward(cfg=call.config(), xg=_rnn_prepare(call, x, params),
                               w_hh=params["weight_hh"].contiguous(), h0=h0.contiguous(),
                               lengths=_lengths(lengths), save=False)
    return res["y"], res["h"]


class RNNFunction(torch.autograd.Function):
    """Whole-sequence Elman RNN layer-direction: inputs ``(call, lengths, x, h0, *params)``."""

    @staticmethod
    def forward(ctx: Any, call: Call, lengths: Tensor | None, x: Tensor, h0: Tensor,
                *flat: Tensor | None) -> tuple[Tensor, ...]:
        params = dict(zip(GRU_PARAMS, flat))
        w_hh = params["weight_hh"].contiguous()
        len_c = _lengths(lengths)
        xg = _rnn_prepare(call, x, params)
        res = call.ext.rnn_forward(cfg=call.config(), xg=xg, w_hh=w_hh, h0=h0.contiguous(),
                                   lengths=len_c, save=True)
        ctx.call, ctx.lengths, ctx.names = call, lengths, ("x", *GRU_CARRY, *GRU_PARAMS)
        # The kernel overwrote the projection xg with h(t) of every step: backward's hact.
        ctx.save_for_backward(xg, res["h_all"], w_hh, len_c, x, h0, *flat)
        return res["y"], res["h"]

    @staticmethod
    def backward(ctx: Any, dy: Tensor, dh_t: Tensor) -> tuple[Tensor | None, ...]:
        call: Call = ctx.call
        saved = ctx.saved_tensors
        inp = _Inputs(ctx.names, saved[4:], ctx.needs_input_grad[2:])
        if torch.is_grad_enabled():
            return _reference_backward(call, inp, ctx.lengths, (dy, dh_t))
        hact, hs, w_hh, lengths = saved[:4]
        hidden = call.layout.hidden_size
        res = call.ext.rnn_backward(cfg=call.config(), hact=hact, w_hh=w_hh, lengths=lengths,
                                    dy=dy.contiguous(), dh=dh_t.contiguous())
        found: dict[str, Tensor | None] = {"h0": res["dh0"]}
        found["x"], found["weight_ih"], dz2 = _input_grads(inp, res["dz"])
        n = dz2.shape[0]
        if inp.need["weight_hh"]:
            h_prev = (hs[1:] if call.reverse else hs[:-1]).reshape(n, hidden)
            found["weight_hh"] = torch.mm(dz2.t(), h_prev)
        _bias_grads(inp, lay=call.layout, dz_sum=dz2.sum(0), found=found)
        return inp.grads(found)
