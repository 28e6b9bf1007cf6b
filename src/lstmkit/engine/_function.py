"""The fused engine's Python glue around the C++ time loops, and its gradient formulas.

Per call, in Python (a handful of large torch operations, independent of the sequence length):
the input projection of all steps as one GEMM with every foldable bias folded in, the recurrent
weight ``[W_hh | G]`` assembled once, and in backward the weight, bias, peephole and input
gradients as GEMMs/reductions over all steps at once. Per time step, in C++ (``csrc/``): the
recurrent GEMM, the fused elementwise pass, and in backward the fused elementwise pass and the
state-gradient GEMM. With layer norm, the input projection's norm runs here too, for all steps
at once (torch's layer-norm kernels, forward and backward); the norms of each step's recurrent
product and of the LSTM's cell state run in C++ inside the time loop (``csrc/layer_norm.h``).

The seam is named on both sides: the configuration is built from the cell's layout
(:meth:`lstmkit.cells.layout.Layout.engine_config`) and passed as ``ext.LstmConfig(**fields)``,
operands go by keyword, results come back as dicts, and each operator's inputs and gradients
are matched by name (:class:`Inputs`), never by position.

The functions here are registered as PyTorch operators in :mod:`lstmkit.engine._ops`: the
``*_forward``/``*_backward`` kernels (which run the C++ code and so are opaque to tracing) and
the ``*_grads`` formulas (plain torch operations that compile and export can trace).

Higher-order gradients: a backward asked to build a graph (``create_graph=True``, e.g. a
gradient penalty) cannot use the hand-written kernels, whose results have no graph. It recomputes
the layer-direction with :func:`lstmkit.cells.reference.scan` from the saved inputs and
differentiates that instead (:func:`reference_backward`), so second and higher derivatives are
those of the reference equations (the 1997 truncated gradient included). The ordinary backward
is unaffected.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..cells import reference
from ..cells.layout import Layout
from ..cells.spec import CellSpec

LSTM_PARAMS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_gh", "weight_ci",
               "weight_cf", "weight_co", "weight_hr", "ln_ih_weight", "ln_hh_weight",
               "ln_c_weight", "ln_c_bias")
GRU_PARAMS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "ln_ih_weight", "ln_hh_weight")
LSTM_CARRY = ("h0", "c0", "a0")
GRU_CARRY = ("h0",)
#: What layer norm keeps for backward: the input projection before its norm with the norm's
#: mean and 1/std per row ([T, B, 1]), the normalised recurrent product of every step and its
#: 1/std ([T, B]).
LN_SAVED = ("ln_in", "ln_in_mean", "ln_in_rstd", "ln_rec", "ln_rstd")
#: What each family's forward kernel returns: the results, then what its backward reads.
LSTM_RESULTS = ("y", "h", "c", "a", "cells")
LSTM_SAVED = ("gates", "rec_in", "c_all", "m_all", "c_tilde", *LN_SAVED)
#: The regularisers' masks an operator takes (:class:`lstmkit.regularise.Masks`, in its order);
#: GRU and RNN have no cell state.
LSTM_MASKS = ("rec_mask", "zone_cell", "zone_hidden")
GRU_MASKS = ("rec_mask", "zone_hidden")
GRU_SAVED = ("gates", "h_all", "aux", *LN_SAVED)
RNN_SAVED = ("hact", "h_all")

_NO_LENGTHS = torch.empty(0, dtype=torch.int64)
Named = dict[str, Tensor | None]


def _c(t: Tensor | None, like: Tensor) -> Tensor:
    """A contiguous tensor for C++, or an empty one standing for "absent"."""
    return like.new_empty(0) if t is None else t.contiguous()


def _lengths(lengths: Tensor | None) -> Tensor:
    """Lengths as C++ reads them: int64 on the CPU, or empty for "every step valid"."""
    if lengths is None:
        return _NO_LENGTHS
    return lengths.to(device="cpu", dtype=torch.int64).contiguous()


def _present(t: Tensor | None) -> Tensor | None:
    """None for an absent operand (None, or the empty tensor an operator returns instead)."""
    return None if t is None or t.numel() == 0 else t


# -------------------------------------------------------------------------------------------
# The cell as an operator argument

# A pure function of the spec: under torch.compile it is evaluated once, as a constant.
@torch.compiler.assume_constant_result
def cell_key(spec: CellSpec) -> str:
    """``spec`` as the string an operator takes: every field as JSON, so that a traced or
    exported graph holds the whole cell and needs no registry to run."""
    return _cell_key(spec)


@functools.lru_cache(maxsize=256)
def _cell_key(spec: CellSpec) -> str:
    # The one-line equation is documentation, not part of the cell.
    fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name != "doc"}
    return json.dumps(fields, sort_keys=True)


@functools.lru_cache(maxsize=256)
def spec_of(key: str) -> CellSpec:
    """The :class:`CellSpec` a :func:`cell_key` string describes."""
    return CellSpec(**json.loads(key))


@dataclass(frozen=True)
class Call:
    """What a kernel needs besides tensors: the cell, its layout and the direction."""

    spec: CellSpec
    layout: Layout
    reverse: bool
    return_cells: bool = False

    @staticmethod
    @functools.lru_cache(maxsize=512)
    def of(key: str, hidden_size: int, proj_size: int, reverse: bool,
           return_cells: bool = False) -> Call:
        """The call an operator's non-tensor arguments describe."""
        spec = spec_of(key)
        return Call(spec, spec.layout(hidden_size, proj_size), reverse, return_cells)

    def config(self, ext: Any) -> Any:
        """The extension's named configuration for this layer-direction: sizes and offsets
        from the layout, and every field named like a spec attribute from the spec."""
        return engine_config(ext, self.spec, self.layout, self.reverse)


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


class Inputs:
    """An operator's tensor inputs by name (``x``, the carry, then the parameters), with which
    of them need a gradient."""

    def __init__(self, names: tuple[str, ...], values: tuple[Tensor | None, ...],
                 needs: tuple[bool, ...]) -> None:
        self.names = names
        self.values = dict(zip(names, values))
        self.need = {n: bool(k) and self.values[n] is not None for n, k in zip(names, needs)}

    def params(self) -> Named:
        """The parameters (every input that is neither ``x`` nor a carried state)."""
        return {n: t for n, t in self.values.items()
                if n != "x" and n not in LSTM_CARRY}


# -------------------------------------------------------------------------------------------
# Shared pieces

def _project(x: Tensor, w_ih: Tensor, bias: Tensor | None) -> Tensor:
    """``x W_ih^T + bias`` for all steps in one GEMM, as a fresh contiguous ``[T, B, rows]``."""
    steps, batch, n_in = x.shape
    x2 = x.reshape(steps * batch, n_in)
    if bias is None:
        out = torch.mm(x2, w_ih.t())
    else:
        out = torch.addmm(bias, x2, w_ih.t())
    return out.view(steps, batch, -1)


def _ln_project(x: Tensor, w_ih: Tensor, gain: Tensor, bias: Tensor | None,
                save: bool) -> tuple[Tensor, Named]:
    """``LN(x W_ih^T) * gain + bias`` for all steps (the norm over each row's features), and
    with ``save`` what its backward reads (:data:`LN_SAVED`'s ``ln_in*``)."""
    proj = _project(x, w_ih, None)
    out, mean, rstd = torch.native_layer_norm(proj, proj.shape[-1:], gain, bias,
                                              reference.LAYER_NORM_EPS)
    kept = {"ln_in": proj, "ln_in_mean": mean, "ln_in_rstd": rstd} if save else {}
    return out, kept


def _ln_input_backward(inp: Inputs, dz: Tensor, saved: Named, found: Named) -> Tensor:
    """Back through the input projection's norm: the gradient of ``x W_ih^T`` from that of the
    normalised projection ``dz``; the gain's gradient goes into ``found``."""
    need_proj = inp.need["x"] or inp.need["weight_ih"]
    proj = saved["ln_in"]
    dproj, dgain, _ = torch.ops.aten.native_layer_norm_backward(
        dz, proj, proj.shape[-1:], saved["ln_in_mean"], saved["ln_in_rstd"],
        inp.values["ln_ih_weight"], None, [need_proj, inp.need["ln_ih_weight"], False])
    found["ln_ih_weight"] = dgain
    return dz if dproj is None else dproj


def _folded_bias(lay: Layout, b_ih: Tensor | None, b_hh: Tensor | None) -> Tensor | None:
    """``b_ih + b_hh`` over all pre-activation rows (either may be absent)."""
    total = None
    for b in (b_ih, b_hh):
        if b is not None:
            fb = lay.expand(b, lay.spec.biased_blocks())
            total = fb if total is None else total + fb
    return total


def _input_grads(inp: Inputs, dz: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor]:
    """dx, dW_ih and the pre-activation gradient as ``[T*B, rows]``, each only when needed."""
    x, w_ih = inp.values["x"], inp.values["weight_ih"]
    steps, batch, n_in = x.shape
    dz2 = dz.reshape(steps * batch, -1)
    dx = torch.mm(dz2, w_ih).view(steps, batch, n_in) if inp.need["x"] else None
    dw = torch.mm(dz2.t(), x.reshape(steps * batch, n_in)) if inp.need["weight_ih"] else None
    return dx, dw, dz2


def _bias_grads(inp: Inputs, lay: Layout, dz_sum: Tensor, found: Named,
                names: tuple[str, ...] = ("bias_ih", "bias_hh")) -> None:
    """The gradient of each bias in ``names`` from the summed pre-activation gradient."""
    if any(inp.need[n] for n in names):
        grad = lay.select(dz_sum, lay.spec.biased_blocks())
        for n in names:
            found[n] = grad


def masks_of(masks: Named) -> Any:
    """The :class:`lstmkit.regularise.Masks` for the reference, or None without any."""
    from ..regularise import Masks

    found = Masks(masks.get("rec_mask"), masks.get("zone_cell"), masks.get("zone_hidden"))
    return found if found.any else None


def _masked_prev(prev: Tensor, rec_mask: Tensor | None, width: int) -> Tensor:
    """The recurrent inputs of all steps as the product saw them: the first ``width`` values of
    each (h(t-1)) under the recurrent-dropout mask."""
    if rec_mask is None:
        return prev
    if prev.shape[-1] == width:
        return prev * rec_mask
    return torch.cat([prev[..., :width] * rec_mask, prev[..., width:]], -1)


def reference_backward(call: Call, inp: Inputs, lengths: Tensor | None,
                       outputs: tuple[Tensor | None, ...], masks: Named | None = None) -> Named:
    """The backward as a differentiable graph: recompute with the reference and differentiate.

    ``inp`` holds the operator's own inputs as saved in forward, so the graph built here reaches
    the caller's tensors; ``outputs`` are the gradients of the results (y, the final carry, the
    cell states), None where a result got none. Each differentiated input enters through its own
    alias: an input passed twice (``h0 is c0``) then gets the gradient of each use, as autograd
    sums them.
    """
    carry_names = LSTM_CARRY if call.spec.family == "lstm" else GRU_CARRY
    with torch.enable_grad():
        alias = {n: (t.view_as(t) if inp.need[n] else t) for n, t in inp.values.items()}
        carry = tuple(alias[n] for n in carry_names if alias.get(n) is not None)
        params = {n: t for n, t in alias.items()
                  if n not in carry_names and n != "x" and t is not None}
        y, final, cells = reference.scan(call.spec, params, alias["x"], carry,
                                         hidden_size=call.layout.hidden_size, lengths=lengths,
                                         reverse=call.reverse, return_cells=call.return_cells,
                                         masks=masks_of(masks or {}))
        outs = [y, *final] + ([cells] if call.return_cells else [])
        pairs = [(o, g) for o, g in zip(outs, outputs) if o.requires_grad and g is not None]
        wrt = [n for n in inp.names if inp.need[n]]
        found = torch.autograd.grad([o for o, _ in pairs], [alias[n] for n in wrt],
                                    [g for _, g in pairs], create_graph=True,
                                    allow_unused=True) if pairs else [None] * len(wrt)
    return dict(zip(wrt, found))


def _grad_or_zeros(grad: Tensor | None, shape: Any, like: Tensor) -> Tensor:
    """A result's gradient for the kernels, which read every one: zeros where none came."""
    return like.new_zeros(shape) if grad is None else grad.contiguous()


# -------------------------------------------------------------------------------------------
# LSTM family

def lstm_recurrent(call: Call, params: Named, like: Tensor) -> tuple[Tensor | None,
                                                                     Tensor | None]:
    """The recurrent weight ``[W_hh | G_full]`` and the peephole matrix ``[3, H]``."""
    spec, lay = call.spec, call.layout
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
        zeros = like.new_zeros(lay.hidden_size)
        peep = torch.stack([params[f"weight_c{g}"] if params[f"weight_c{g}"] is not None
                            else zeros for g in "ifo"])
    return wcat, peep


def lstm_forward(ext: Any, call: Call, x: Tensor, carry: Named, params: Named,
                 lengths: Tensor | None, save: bool, masks: Named | None = None) -> Named:
    """Run the kernel: the :data:`LSTM_RESULTS`, and with ``save`` the :data:`LSTM_SAVED`
    tensors backward reads (``gates``: the activated gates, written over the projection).
    ``masks``: the :data:`LSTM_MASKS` (recurrent dropout, zoneout), absent ones None."""
    masks = masks or {}
    bias = _folded_bias(call.layout, params["bias_ih"], params["bias_hh"])
    kept: Named = {}
    if call.spec.layer_norm:
        xg, kept = _ln_project(x, params["weight_ih"], params["ln_ih_weight"], bias, save)
    else:
        xg = _project(x, params["weight_ih"], bias)
    wcat, peep = lstm_recurrent(call, params, x)
    res = ext.lstm_forward(
        cfg=call.config(ext), xg=xg, wcat=_c(wcat, x), peep=_c(peep, x),
        w_hr=_c(params["weight_hr"], x), h0=carry["h0"].contiguous(),
        c0=carry["c0"].contiguous(), a0=_c(carry["a0"], x), lengths=_lengths(lengths),
        save=save, return_cells=call.return_cells, rmask=_c(masks.get("rec_mask"), x),
        zc=_c(masks.get("zone_cell"), x), zh=_c(masks.get("zone_hidden"), x),
        ln_hh=_c(params.get("ln_hh_weight"), x), ln_cw=_c(params.get("ln_c_weight"), x),
        ln_cb=_c(params.get("ln_c_bias"), x))
    res["gates"] = xg if save else None
    res.update({n: kept.get(n) for n in LN_SAVED[:3]})
    return res


def lstm_backward(ext: Any, call: Call, saved: Named, wcat: Tensor | None, peep: Tensor | None,
                  w_hr: Tensor | None, lengths: Tensor | None, grads: Named,
                  masks: Named | None = None, ln: Named | None = None) -> Named:
    """Run the backward kernel: ``dz`` (the pre-activation gradient of every step), the
    initial carry's gradients, ``dh_all`` (projection only), ``dpeep``, and with layer norm
    ``drec`` (the gradient of ``W_hh h(t-1)`` before its norm), ``dln_c`` (c's gain and
    shift) and ``dln_hh`` (the recurrent norm's gain). ``masks``: the :data:`LSTM_MASKS`;
    ``ln`` holds the layer-norm parameters (``ln_*`` by their parameter names)."""
    masks = masks or {}
    gates = saved["gates"]
    steps, batch, _ = gates.shape
    lay = call.layout
    dh = _grad_or_zeros(grads["h"], (batch, lay.out_size), gates)
    ln = ln or {}
    return ext.lstm_backward(
        cfg=call.config(ext), gates=gates, wcat=_c(wcat, gates), peep=_c(peep, gates),
        w_hr=_c(w_hr, gates), c_all=saved["c_all"], lengths=_lengths(lengths),
        dy=_grad_or_zeros(grads["y"], (steps, batch, lay.out_size), gates), dh=dh,
        dc=_grad_or_zeros(grads["c"], (batch, lay.hidden_size), gates),
        da=(_grad_or_zeros(grads["a"], (batch, lay.carried_size), gates)
            if lay.carried_size else _c(None, gates)),
        dcells=_c(grads["cells"], gates), rmask=_c(masks.get("rec_mask"), gates),
        zc=_c(masks.get("zone_cell"), gates), zh=_c(masks.get("zone_hidden"), gates),
        c_tilde=_c(saved.get("c_tilde"), gates), ln_hh=_c(ln.get("ln_hh_weight"), gates),
        ln_cw=_c(ln.get("ln_c_weight"), gates), ln_cb=_c(ln.get("ln_c_bias"), gates),
        ln_rec=_c(saved.get("ln_rec"), gates), ln_rstd=_c(saved.get("ln_rstd"), gates))


def lstm_grads(call: Call, inp: Inputs, saved: Named, kernel: Named,
               masks: Named | None = None) -> Named:
    """Every input's gradient from the backward kernel's results, as GEMMs over all steps."""
    spec, lay = call.spec, call.layout
    x = inp.values["x"]
    steps, batch, _ = x.shape
    found: Named = {"h0": kernel["dh0"], "c0": kernel["dc0"], "a0": kernel["da0"]}
    dz = kernel["dz"]
    dproj = _ln_input_backward(inp, dz, saved, found) if spec.layer_norm else dz
    found["x"], found["weight_ih"], _ = _input_grads(inp, dproj)
    dz2 = dz.reshape(steps * batch, -1)
    _bias_grads(inp, lay, dz2.sum(0), found)
    # What the recurrent GEMM computed got dz, or with layer norm drec (through its norm).
    drec = _present(kernel.get("drec"))
    drec2 = dz2 if drec is None else drec.reshape(steps * batch, -1)
    if drec is not None:
        found["ln_hh_weight"] = kernel["dln_hh"]
    if spec.layer_norm:
        found["ln_c_weight"], found["ln_c_bias"] = kernel["dln_c"][0], kernel["dln_c"][1]
    if inp.need["weight_hh"] or inp.need["weight_gh"]:
        # The recurrent input of each step, [h(t-1) | a(t-1)], as the GEMM saw it.
        rin = saved["rec_in"]
        prev = rin[1:] if call.reverse else rin[:-1]
        if spec.hidden_recurrence:
            prev = _masked_prev(prev, (masks or {}).get("rec_mask"), lay.out_size)
        koff = 0 if spec.hidden_recurrence else lay.out_size
        dwcat = torch.mm(drec2.t(), prev.reshape(steps * batch, -1)[:, koff:])
        if spec.hidden_recurrence:
            found["weight_hh"] = dwcat[:, : lay.out_size]
        if spec.carries_gates:
            col = lay.out_size if spec.hidden_recurrence else 0
            found["weight_gh"] = lay.select(dwcat[:, col:], spec.gate_recurrent_blocks(), dim=0)
    if spec.peephole:
        for row, gate in enumerate("ifo"):
            found[f"weight_c{gate}"] = kernel["dpeep"][row]
    if inp.need["weight_hr"]:
        found["weight_hr"] = torch.mm(kernel["dh_all"].reshape(steps * batch, -1).t(),
                                      saved["m_all"].reshape(steps * batch, -1))
    return found


# -------------------------------------------------------------------------------------------
# GRU and RNN

def _gru_prepare(call: Call, x: Tensor, params: Named) -> tuple[Tensor | None, Tensor | None]:
    """The bias folded into the input projection and, in torch's placement, the candidate's
    recurrent bias b_hn (which the reset gate multiplies, so it cannot be folded there)."""
    lay, hidden = call.layout, call.layout.hidden_size
    biased = call.spec.biased_blocks()
    fb_ih = lay.expand(params["bias_ih"], biased) if params["bias_ih"] is not None else None
    fb_hh = lay.expand(params["bias_hh"], biased) if params["bias_hh"] is not None else None
    b_hn = None
    if call.spec.reset_after and fb_hh is not None:
        b_hn = fb_hh[lay.blocks["n"]]
        fb_hh = torch.cat([fb_hh[: 2 * hidden], fb_hh.new_zeros(hidden)])
    bias = fb_ih if fb_hh is None else (fb_hh if fb_ih is None else fb_ih + fb_hh)
    return bias, b_hn


def gru_forward(ext: Any, call: Call, x: Tensor, h0: Tensor, params: Named,
                lengths: Tensor | None, save: bool, masks: Named | None = None) -> Named:
    """Run the kernel: ``y``, ``h`` and with ``save`` the :data:`GRU_SAVED` tensors."""
    masks = masks or {}
    bias, b_hn = _gru_prepare(call, x, params)
    kept: Named = {}
    if call.spec.layer_norm:
        xg, kept = _ln_project(x, params["weight_ih"], params["ln_ih_weight"], bias, save)
    else:
        xg = _project(x, params["weight_ih"], bias)
    res = ext.gru_forward(cfg=call.config(ext), xg=xg, w_hh=params["weight_hh"].contiguous(),
                          b_hn=_c(b_hn, x), h0=h0.contiguous(), lengths=_lengths(lengths),
                          save=save, rmask=_c(masks.get("rec_mask"), x),
                          zh=_c(masks.get("zone_hidden"), x),
                          ln_hh=_c(params.get("ln_hh_weight"), x))
    res["gates"] = xg if save else None
    res.update({n: kept.get(n) for n in LN_SAVED[:3]})
    return res


def gru_backward(ext: Any, call: Call, saved: Named, w_hh: Tensor, lengths: Tensor | None,
                 grads: Named, masks: Named | None = None,
                 ln_hh: Tensor | None = None) -> Named:
    """Run the backward kernel: ``dz``, ``drec`` (torch's placement), ``dh0`` and with layer
    norm (gain ``ln_hh``) ``drec_raw``, the gradient of ``R h`` before its norm. ``masks``: the
    :data:`GRU_MASKS`."""
    masks = masks or {}
    gates = saved["gates"]
    steps, batch, _ = gates.shape
    hidden = call.layout.hidden_size
    return ext.gru_backward(
        cfg=call.config(ext), gates=gates, w_hh=w_hh.contiguous(), h_all=saved["h_all"],
        aux=saved["aux"], lengths=_lengths(lengths),
        dy=_grad_or_zeros(grads["y"], (steps, batch, hidden), gates),
        dh=_grad_or_zeros(grads["h"], (batch, hidden), gates),
        rmask=_c(masks.get("rec_mask"), gates), zh=_c(masks.get("zone_hidden"), gates),
        ln_hh=_c(ln_hh, gates), ln_rec=_c(saved.get("ln_rec"), gates),
        ln_rstd=_c(saved.get("ln_rstd"), gates))


def gru_grads(call: Call, inp: Inputs, saved: Named, kernel: Named,
              masks: Named | None = None) -> Named:
    """Every input's gradient from the backward kernel's results."""
    lay, hidden = call.layout, call.layout.hidden_size
    found: Named = {"h0": kernel["dh0"]}
    dz = kernel["dz"]
    dproj = _ln_input_backward(inp, dz, saved, found) if call.spec.layer_norm else dz
    found["x"], found["weight_ih"], _ = _input_grads(inp, dproj)
    dz2 = dz.reshape(-1, dz.shape[-1])
    n = dz2.shape[0]
    hs = saved["h_all"]
    h_prev = _masked_prev(hs[1:] if call.reverse else hs[:-1], (masks or {}).get("rec_mask"),
                          hidden).reshape(n, hidden)
    if call.spec.reset_after:
        # The recurrent pre-activations R h + b_hh (with layer norm LN(R h) + b_hh) have their
        # own gradient (drec); with layer norm R h itself has drec_raw.
        drec2 = kernel["drec"].reshape(n, -1)
        raw = _present(kernel.get("drec_raw"))
        if raw is not None:
            found["ln_hh_weight"] = kernel["dln_hh"]
        if inp.need["weight_hh"]:
            found["weight_hh"] = torch.mm((drec2 if raw is None else raw.reshape(n, -1)).t(),
                                          h_prev)
        _bias_grads(inp, lay, drec2.sum(0), found, ("bias_hh",))
        _bias_grads(inp, lay, dz2.sum(0), found, ("bias_ih",))
    else:
        if inp.need["weight_hh"]:
            two = 2 * hidden
            found["weight_hh"] = torch.cat([torch.mm(dz2[:, :two].t(), h_prev),
                                            torch.mm(dz2[:, two:].t(),
                                                     saved["aux"].reshape(n, hidden))])
        _bias_grads(inp, lay, dz2.sum(0), found)
    return found


def rnn_forward(ext: Any, call: Call, x: Tensor, h0: Tensor, params: Named,
                lengths: Tensor | None, save: bool, masks: Named | None = None) -> Named:
    """Run the kernel: ``y``, ``h`` and with ``save`` the :data:`RNN_SAVED` tensors."""
    masks = masks or {}
    bias = _folded_bias(call.layout, params["bias_ih"], params["bias_hh"])
    xg = _project(x, params["weight_ih"], bias)
    res = ext.rnn_forward(cfg=call.config(ext), xg=xg, w_hh=params["weight_hh"].contiguous(),
                          h0=h0.contiguous(), lengths=_lengths(lengths), save=save,
                          rmask=_c(masks.get("rec_mask"), x),
                          zh=_c(masks.get("zone_hidden"), x))
    # The kernel overwrote the projection xg with act(z) of every step (h(t) before zoneout):
    # backward's hact.
    res["hact"] = xg if save else None
    return res


def rnn_backward(ext: Any, call: Call, saved: Named, w_hh: Tensor, lengths: Tensor | None,
                 grads: Named, masks: Named | None = None) -> Named:
    """Run the backward kernel: ``dz`` and ``dh0``."""
    masks = masks or {}
    hact = saved["hact"]
    steps, batch, _ = hact.shape
    hidden = call.layout.hidden_size
    return ext.rnn_backward(cfg=call.config(ext), hact=hact, w_hh=w_hh.contiguous(),
                            lengths=_lengths(lengths),
                            dy=_grad_or_zeros(grads["y"], (steps, batch, hidden), hact),
                            dh=_grad_or_zeros(grads["h"], (batch, hidden), hact),
                            rmask=_c(masks.get("rec_mask"), hact),
                            zh=_c(masks.get("zone_hidden"), hact))


def rnn_grads(call: Call, inp: Inputs, saved: Named, kernel: Named,
              masks: Named | None = None) -> Named:
    """Every input's gradient from the backward kernel's results."""
    hidden = call.layout.hidden_size
    found: Named = {"h0": kernel["dh0"]}
    found["x"], found["weight_ih"], dz2 = _input_grads(inp, kernel["dz"])
    n = dz2.shape[0]
    if inp.need["weight_hh"]:
        hs = saved["h_all"]
        h_prev = _masked_prev(hs[1:] if call.reverse else hs[:-1],
                              (masks or {}).get("rec_mask"), hidden).reshape(n, hidden)
        found["weight_hh"] = torch.mm(dz2.t(), h_prev)
    _bias_grads(inp, lay=call.layout, dz_sum=dz2.sum(0), found=found)
    return found
