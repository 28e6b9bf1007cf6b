"""The readable reference: one step function per family, every equation written once.

A cell is a function ``(carry, x_proj) -> (carry, y)`` in the manner of Flax's recurrent cells:
``x_proj`` is the input projection ``W x + b`` of one time step (computed for the whole sequence
at once by :func:`input_projection`), ``carry`` is the recurrent state. :func:`scan` runs a cell
over a sequence with right-padding lengths and either direction. Autograd differentiates this
code; it is the oracle the fused engine is tested against and the fallback where no faster path
applies.

Parameters are a plain ``dict`` keyed by the short names of :func:`param_shapes`
(``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``, ``weight_hr``, ``weight_gh``,
``weight_ci``/``weight_cf``/``weight_co`` for peepholes, ``ln_*`` for layer norm).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from .layout import layout
from .spec import CellSpec

if TYPE_CHECKING:
    from ..regularise import Masks

Carry = tuple[Tensor, ...]
Params = dict[str, Tensor]

_ACT: dict[str, Callable[[Tensor], Tensor]] = {
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "identity": lambda x: x,
    "relu": torch.relu,
    "sigmoid_pm1": lambda x: 2.0 * torch.sigmoid(x) - 1.0,
    "sigmoid_pm2": lambda x: 4.0 * torch.sigmoid(x) - 2.0,
}


def activation(name: str) -> Callable[[Tensor], Tensor]:
    """The activation function called ``name`` (see :data:`lstmkit.cells.spec.ACTIVATIONS`)."""
    return _ACT[name]


def param_shapes(
    spec: CellSpec, input_size: int, hidden_size: int, proj_size: int = 0, bias: bool = True
) -> dict[str, tuple[int, ...]]:
    """Shapes of one layer-direction's parameters, in registration order (torch's first)."""
    lay = layout(spec, hidden_size, proj_size)
    rows, out_size = lay.rows, lay.out_size
    shapes: dict[str, tuple[int, ...]] = {"weight_ih": (rows, input_size)}
    if spec.hidden_recurrence:
        shapes["weight_hh"] = (rows, out_size)
    biased = lay.width_of(spec.biased_blocks())
    if bias and biased:
        shapes["bias_ih"] = (biased,)
        if spec.double_bias and spec.hidden_recurrence:
            shapes["bias_hh"] = (biased,)
    if proj_size > 0:
        shapes["weight_hr"] = (proj_size, hidden_size)
    if spec.gate_recurrence != "none":
        shapes["weight_gh"] = (lay.width_of(spec.gate_recurrent_blocks()), lay.gate_units)
    if spec.peephole:
        for gate in spec.gate_names:
            shapes[f"weight_c{gate}"] = (hidden_size,)
    if spec.layer_norm:
        shapes["ln_ih_weight"] = (rows,)
        if spec.hidden_recurrence:
            shapes["ln_hh_weight"] = (rows,)
        if spec.family == "lstm":
            shapes["ln_c_weight"] = (hidden_size,)
            shapes["ln_c_bias"] = (hidden_size,)
    return shapes


def full_bias(spec: CellSpec, hidden_size: int, bias: Tensor) -> Tensor:
    """A bias over the biased blocks only, spread over every pre-activation row."""
    return layout(spec, hidden_size).expand(bias, spec.biased_blocks())


#: The layer norms' epsilon (``F.layer_norm``'s default); the engine uses the same.
LAYER_NORM_EPS = 1e-5


def _layer_norm(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps=LAYER_NORM_EPS)


def input_projection(spec: CellSpec, p: Params, x: Tensor, hidden_size: int) -> Tensor:
    """``W_ih x + b_ih`` for every time step in one GEMM (``x``: ``[T, B, in]``)."""
    proj = x @ p["weight_ih"].t()
    if spec.layer_norm:
        proj = _layer_norm(proj, p["ln_ih_weight"])
    if "bias_ih" in p:
        proj = proj + full_bias(spec, hidden_size, p["bias_ih"])
    return proj


def _recurrent(spec: CellSpec, p: Params, h: Tensor, hidden_size: int) -> Tensor:
    """``R h(t-1) + b_hh``, the recurrent contribution to every pre-activation."""
    rec = h @ p["weight_hh"].t()
    if spec.layer_norm:
        rec = _layer_norm(rec, p["ln_hh_weight"])
    if "bias_hh" in p:
        rec = rec + full_bias(spec, hidden_size, p["bias_hh"])
    return rec


def _block_sum(values: Tensor, block_size: int) -> Tensor:
    """Sum cell values over each block (peepholes of cells sharing a block's gates)."""
    if block_size == 1:
        return values
    return values.unflatten(-1, (-1, block_size)).sum(-1)


def _spread(gate: Tensor, block_size: int) -> Tensor:
    """A block's gate value repeated for each of its cells."""
    return gate if block_size == 1 else gate.repeat_interleave(block_size, dim=-1)


def lstm_step(spec: CellSpec, p: Params, carry: Carry, x_proj: Tensor,
              rec_mask: Tensor | None = None) -> tuple[Carry, Tensor]:
    """One step of any LSTM-family spec; returns ``((h, c[, gates]), y=h)``.

    The equations are in :func:`lstm_step_parts`, which also returns the step's gate values.
    """
    new_carry, y, _ = lstm_step_parts(spec, p, carry, x_proj, rec_mask)
    return new_carry, y


def lstm_step_parts(
    spec: CellSpec, p: Params, carry: Carry, x_proj: Tensor, rec_mask: Tensor | None = None
) -> tuple[Carry, Tensor, dict[str, Tensor]]:
    """:func:`lstm_step` plus the step's parts ``{"i", "f", "o", "g", "c", "h"}``.

    Gates are per memory block (absent gates are left out; ``f`` is ``1 - i`` for CIFG), ``g``
    is the squashed cell input, ``c`` the new cell state and ``h`` the output. Used to look
    inside a cell (:mod:`lstmkit.analysis.gates`) without restating its equations.

    With ``W x + b`` precomputed in ``x_proj`` and ``a(t-1)`` the previous gate activations::

        z        = x_proj + R h(t-1) + G a(t-1)             (R absent without hidden recurrence)
        i        = σ(z_i + p_i ⊙ c(t-1))                    (1 without an input gate)
        f        = σ(z_f + p_f ⊙ c(t-1))   or 1 - i (CIFG)  (1 without a forget gate)
        c(t)     = f ⊙ c(t-1) + i ⊙ g(z_g)
        o        = σ(z_o + p_o ⊙ c(t))                      (1 without an output gate)
        h(t)     = W_hr (o ⊙ h(c(t)))                       (W_hr only with proj_size)

    Gates are per block of ``block_size`` cells; peephole terms sum the block's cells. With
    ``truncated_gradient`` the recurrent inputs ``h(t-1)`` and ``a(t-1)`` are detached, so the
    error reaches earlier steps only through ``c`` (the constant error carousel). ``rec_mask``
    (recurrent dropout) multiplies ``h(t-1)`` where it enters ``R h(t-1)``.
    """
    h, c = carry[0], carry[1]
    hidden_size = c.shape[-1]
    lay = layout(spec, hidden_size)
    s = spec.block_size
    gate_act = _ACT[spec.gate_activation]
    if spec.truncated_gradient:
        h = h.detach()
    z = x_proj
    if spec.hidden_recurrence:
        z = z + _recurrent(spec, p, _masked(h, rec_mask), hidden_size)
    if spec.carries_gates:
        prev_gates = carry[2].detach() if spec.truncated_gradient else carry[2]
        z = z + lay.expand(prev_gates @ p["weight_gh"].t(), spec.gate_recurrent_blocks())
    blocks = {name: z[..., rows] for name, rows in lay.blocks.items()}

    def gate(name: str, cell: Tensor) -> Tensor:
        pre = blocks[name]
        if spec.peephole:
            pre = pre + _block_sum(p[f"weight_c{name}"] * cell, s)
        return gate_act(pre)

    gates: dict[str, Tensor] = {}
    if spec.input_gate:
        gates["i"] = gate("i", c)
    if spec.forget_gate:
        gates["f"] = gate("f", c)
    candidate = _ACT[spec.input_activation](blocks["g"])
    i = _spread(gates["i"], s) if spec.input_gate else None
    if spec.coupled:
        f = 1.0 - i
    elif spec.forget_gate:
        f = _spread(gates["f"], s)
    else:
        f = None
    stored = candidate if i is None else i * candidate
    c_new = stored + (c if f is None else f * c)
    if spec.output_gate:
        gates["o"] = gate("o", c_new)
    c_out = _layer_norm(c_new, p["ln_c_weight"], p["ln_c_bias"]) if spec.layer_norm else c_new
    h_new = _ACT[spec.output_activation](c_out)
    if spec.output_gate:
        h_new = _spread(gates["o"], s) * h_new
    if "weight_hr" in p:
        h_new = h_new @ p["weight_hr"].t()
    parts = dict(gates, g=candidate, c=c_new, h=h_new)
    if spec.coupled:
        parts["f"] = 1.0 - gates["i"]
    if spec.carries_gates:
        carried = torch.cat([gates[g] for g in spec.gate_names], -1)
        return (h_new, c_new, carried), h_new, parts
    return (h_new, c_new), h_new, parts


def _masked(h: Tensor, rec_mask: Tensor | None) -> Tensor:
    """``h(t-1)`` as the recurrent product sees it (recurrent dropout)."""
    return h if rec_mask is None else h * rec_mask


def gru_step(spec: CellSpec, p: Params, carry: Carry, x_proj: Tensor,
             rec_mask: Tensor | None = None) -> tuple[Carry, Tensor]:
    """One GRU step; returns ``((h,), h)``.

    ``r = σ(x_r + R_r h + b'_r)``, ``z = σ(x_z + R_z h + b'_z)``, then the candidate
    ``n = tanh(x_n + r ⊙ (R_n h + b'_n))`` (``reset_after``, torch) or
    ``n = tanh(x_n + R_n (r ⊙ h) + b'_n)`` (Cho et al. 2014), and ``h' = (1 - z) ⊙ n + z ⊙ h``.
    ``rec_mask`` (recurrent dropout) multiplies ``h`` in the products with ``R`` only.
    With ``layer_norm`` every ``R h`` above is ``LN(R h)`` (all three blocks normalised together,
    gain only, before ``b'``), and ``x_proj`` holds ``LN(W x) + b``.
    """
    (h,) = carry
    hm = _masked(h, rec_mask)
    hidden_size = h.shape[-1]
    gate_act, cand_act = _ACT[spec.gate_activation], _ACT[spec.input_activation]
    x_r, x_z, x_n = x_proj.chunk(3, -1)
    w_hh = p["weight_hh"]
    b_hh = p.get("bias_hh")
    if spec.reset_after:
        rec_r, rec_z, rec_n = _recurrent(spec, p, hm, hidden_size).chunk(3, -1)
        r, z = gate_act(x_r + rec_r), gate_act(x_z + rec_z)
        n = cand_act(x_n + r * rec_n)
    else:
        rec_rz = hm @ w_hh[: 2 * hidden_size].t()
        if b_hh is not None:
            rec_rz = rec_rz + b_hh[: 2 * hidden_size]
        rec_r, rec_z = rec_rz.chunk(2, -1)
        r, z = gate_act(x_r + rec_r), gate_act(x_z + rec_z)
        rec_n = (r * hm) @ w_hh[2 * hidden_size :].t()
        if b_hh is not None:
            rec_n = rec_n + b_hh[2 * hidden_size :]
        n = cand_act(x_n + rec_n)
    h_new = (1.0 - z) * n + z * h
    return (h_new,), h_new


def rnn_step(spec: CellSpec, p: Params, carry: Carry, x_proj: Tensor,
             rec_mask: Tensor | None = None) -> tuple[Carry, Tensor]:
    """One Elman step: ``h' = act(x_proj + R h + b')``; returns ``((h',), h')``."""
    (h,) = carry
    rec = _recurrent(spec, p, _masked(h, rec_mask), h.shape[-1])
    h_new = _ACT[spec.input_activation](x_proj + rec)
    return (h_new,), h_new


_STEP = {"lstm": lstm_step, "gru": gru_step, "rnn": rnn_step}


def step(spec: CellSpec, p: Params, carry: Carry, x_proj: Tensor,
         rec_mask: Tensor | None = None) -> tuple[Carry, Tensor]:
    """One time step of ``spec`` (dispatches on the family); ``rec_mask``: recurrent dropout."""
    return _STEP[spec.family](spec, p, carry, x_proj, rec_mask)


def zoneout(carry: Carry, new_carry: Carry, zone_cell: Tensor | None,
            zone_hidden: Tensor | None) -> Carry:
    """Zoneout after a step: each unit keeps its previous value with weight ``d``,
    ``h = d * h(t-1) + (1 - d) * h~`` (``zone_hidden``), likewise ``c`` (``zone_cell``); carried
    gate activations are not zoned out."""
    out = list(new_carry)
    for i, d in ((0, zone_hidden), (1, zone_cell)):
        if d is not None:
            out[i] = d * carry[i] + (1.0 - d) * new_carry[i]
    return tuple(out)


def scan(
    spec: CellSpec,
    p: Params,
    x: Tensor,
    carry: Carry,
    *,
    hidden_size: int,
    lengths: Tensor | None = None,
    reverse: bool = False,
    return_cells: bool = False,
    masks: Masks | None = None,
) -> tuple[Tensor, Carry, Tensor | None]:
    """Run one layer-direction over ``x`` (``[T, B, in]``) from ``carry``.

    With ``lengths`` (``[B]``, right padding) a sequence's state stops changing after its last
    step and its padded outputs are zero; the reverse direction starts at each sequence's own
    last step, as with a ``PackedSequence``. Returns the outputs ``[T, B, out]``, the final
    carry and, with ``return_cells``, every step's cell state ``[T, B, hidden]``.

    ``masks`` (:class:`lstmkit.regularise.Masks`): recurrent dropout and zoneout, as drawn for
    this call; the output at each step is the zoned-out ``h``.
    """
    steps = x.shape[0]
    x_proj = input_projection(spec, p, x, hidden_size)
    valid = None
    if lengths is not None:
        valid = torch.arange(steps, device=x.device).unsqueeze(1) < lengths.to(x.device)
        valid = valid.unsqueeze(-1)  # [T, B, 1]
    outputs: list[Tensor] = [x.new_empty(0)] * steps
    cells: list[Tensor] = [x.new_empty(0)] * steps
    rec_mask, zone_c, zone_h = masks if masks is not None else (None, None, None)
    for t in range(steps - 1, -1, -1) if reverse else range(steps):
        new_carry, y = step(spec, p, carry, x_proj[t], rec_mask)
        if zone_c is not None or zone_h is not None:
            new_carry = zoneout(carry, new_carry, None if zone_c is None else zone_c[t],
                                None if zone_h is None else zone_h[t])
            y = new_carry[0]
        if valid is not None:
            keep = valid[t]
            new_carry = tuple(torch.where(keep, n, o) for n, o in zip(new_carry, carry))
            y = y * keep
        carry = new_carry
        outputs[t] = y
        if return_cells:
            cells[t] = carry[1] if valid is None else carry[1] * valid[t]
    out = torch.stack(outputs) if steps else x.new_zeros((0,) + carry[0].shape)
    cell_seq = None
    if return_cells:
        cell_seq = torch.stack(cells) if steps else x.new_zeros((0,) + carry[1].shape)
    return out, carry, cell_seq


def init_bound(hidden_size: int) -> float:
    """torch's default initialisation bound ``1 / sqrt(hidden_size)``."""
    return 1.0 / math.sqrt(hidden_size) if hidden_size > 0 else 0.0
