"""ONNX export of lstmkit layers through ``torch.onnx.export`` (the default exporter).

While ``torch.onnx.export`` captures a model, every lstmkit layer hands its call to :func:`forward`
here instead of running torch's kernel, the fused engine or the reference loop, none of which an
ONNX runtime can run. A cell that an ONNX operator computes exactly becomes that operator, one
node per layer with both directions in it (:func:`onnx_operator` says which):

* ``LSTM``: LSTM-family cells with input and output gates and a forget gate or coupled gates
  (``input_forget=1``), with or without peepholes (``P``, ordered i, o, f), one cell per block,
  without layer norm, gate recurrence or projection (``lstm``, ``np``, ``peephole``, ``vanilla``,
  ``cifg``, ``cifg_peephole``, ``niaf``, ``noaf``). Activations are ONNX's by name (``identity``
  is ``Affine`` with alpha 1 and beta 0; the 1997 paper's squashings are ``ScaledTanh``).
* ``GRU``: ``gru`` (``linear_before_reset=1``) and ``gru_cho`` (``linear_before_reset=0``).
* ``RNN``: ``rnn`` and ``rnn_relu``.

The weights are reordered into ONNX's gate order inside the graph (i, o, f, c for LSTM; z, r, h
for GRU), so the graph reads the layer's own parameters. Every other cell (``nig``, ``nfg``,
``nog``, ``fgr``, ``lstm1997``, ``layernorm``, ``layernorm_gru``, ``proj_size``), and any call with
``return_cell_states=True``, becomes one ONNX ``Scan`` per layer and direction whose body is the
reference step of :mod:`lstmkit.cells.reference`, the equations every other path is tested
against. ``lengths=`` becomes the operators' ``sequence_lens`` (a mask inside a ``Scan`` body),
with the layer's semantics: a sequence's state stops at its last step, the reverse direction
starts there, padded outputs are zero. Batch size and sequence length stay dynamic where the
export's ``dynamic_shapes`` say so. The values of a ``lengths`` tensor cannot be checked inside
the graph; they must lie in ``1..T`` as in eager calls.

The TorchScript exporter (``dynamo=False``) is refused with an error that names the default
exporter, as are calls the graph cannot express (a ``PackedSequence``, ``check_finite=True``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from . import _checks, _layer_io
from .cells import reference
from .cells.layout import Layout
from .cells.spec import CellSpec

if TYPE_CHECKING:
    from .layers import _Recurrent

__all__ = ["exporting", "forward", "onnx_operator"]

#: ONNX's name and (alpha, beta) for each lstmkit activation; alpha/beta None where unused.
_ACTIVATIONS: dict[str, tuple[str, float | None, float | None]] = {
    "tanh": ("Tanh", None, None),
    "sigmoid": ("Sigmoid", None, None),
    "relu": ("Relu", None, None),
    "identity": ("Affine", 1.0, 0.0),
    # 2 * sigmoid(x) - 1 = tanh(x / 2) and 4 * sigmoid(x) - 2 = 2 * tanh(x / 2).
    "sigmoid_pm1": ("ScaledTanh", 1.0, 0.5),
    "sigmoid_pm2": ("ScaledTanh", 2.0, 0.5),
}

#: Each ONNX operator's block order, in lstmkit's block names (ONNX's c is lstmkit's g, h is n).
_ONNX_ORDER = {"LSTM": ("i", "o", "f", "g"), "GRU": ("z", "r", "n"), "RNN": ("h",)}


def exporting() -> bool:
    """True while ``torch.onnx.export`` captures a model (either exporter).

    The cheap checks come first, so that an ordinary call pays well under a microsecond.
    """
    if not (torch.compiler.is_exporting() or torch.jit.is_tracing()):
        return False
    return torch.onnx.is_in_onnx_export()


def onnx_operator(spec: CellSpec, proj_size: int = 0) -> str:
    """The ONNX operator a layer of ``spec`` exports to: ``"LSTM"``, ``"GRU"``, ``"RNN"``, or
    ``"Scan"`` for cells no ONNX operator computes exactly."""
    if spec.family == "gru":
        return "Scan" if spec.layer_norm else "GRU"
    if spec.family == "rnn":
        return "RNN"
    gates_fit = spec.input_gate and spec.output_gate and (spec.forget_gate or spec.coupled)
    if (gates_fit and spec.block_size == 1 and not spec.layer_norm and not spec.carries_gates
            and spec.hidden_recurrence and proj_size == 0):
        return "LSTM"
    return "Scan"


def forward(
    layer: _Recurrent,
    input: Tensor | PackedSequence,
    hx: Tensor | tuple[Tensor, ...] | None = None,
    *,
    lengths: Tensor | list[int] | None = None,
    return_cell_states: bool = False,
    check_finite: bool = False,
) -> tuple[Any, ...]:
    """``layer.forward`` as an exportable graph: the same arguments and results."""
    if torch.jit.is_tracing():
        raise RuntimeError(
            "torch.onnx.export: lstmkit layers export with the default exporter "
            "(torch.onnx.export(..., dynamo=True)); the TorchScript exporter (dynamo=False) "
            "cannot capture their recurrence"
        )
    if isinstance(input, PackedSequence):
        raise TypeError(
            "input: ONNX export takes a padded tensor with lengths=..., got a PackedSequence"
        )
    _checks.flag("return_cell_states", return_cell_states)
    _checks.flag("check_finite", check_finite)
    if check_finite:
        raise ValueError(
            "check_finite: an exported graph cannot raise on NaN or Inf; export with "
            "check_finite=False, got True"
        )
    reg = layer.regularisers.active(layer.training)
    if reg is not None:
        raise ValueError(f"torch.onnx.export: the graph has no recurrent regularisers; export "
                         f"with them off (zoneout=0, or eval mode for the others), got {reg}")
    spec = layer.spec
    if return_cell_states and spec.family != "lstm":
        raise ValueError(
            f"return_cell_states: only LSTM-family cells have a cell state, got {spec.name!r}"
        )
    ref = layer._ref_param()
    x, _, form = _layer_io.read_input(input, None, layer.batch_first, layer.input_size, ref)
    lengths = _lengths(lengths, x)
    directions = 2 if layer.bidirectional else 1
    states = _layer_io.initial_state(hx, layer.state_sizes, layer.num_layers * directions, x,
                                     form, spec.family == "lstm", ref)
    valid = None
    if lengths is not None:
        steps = torch.arange(x.shape[0], device=x.device).unsqueeze(1)
        valid = (steps < lengths.to(x.device)).unsqueeze(-1)  # [T, B, 1]
        # Padding may hold anything (NaN included); zero it as the eager layer does.
        x = torch.where(valid, x, x.new_zeros(()))
    op = "Scan" if return_cell_states else onnx_operator(spec, layer.proj_size)
    finals: list[list[Tensor]] = [[] for _ in states]
    layer_input, cells = x, None
    for index in range(layer.num_layers):
        rows = slice(index * directions, (index + 1) * directions)
        layer_states = tuple(s[rows] for s in states)
        if op == "Scan":
            out, carry, layer_cells = _scan_layer(layer, index, layer_input, layer_states, valid,
                                                  return_cell_states)
        else:
            out, carry = _native_layer(op, layer, index, layer_input, layer_states, lengths)
            layer_cells = None
        for acc, state in zip(finals, carry):
            acc.append(state)
        layer_input = out
        if index < layer.num_layers - 1 and layer.dropout and layer.training:
            layer_input = F.dropout(layer_input, layer.dropout, training=True)
        cells = layer_cells
    output = form.restore(layer_input, None)
    final = form.restore_state(tuple(torch.cat(acc) for acc in finals))
    hidden: Any = final if spec.family == "lstm" else final[0]
    if return_cell_states:
        return output, hidden, form.restore(cells, None)
    return output, hidden


def _lengths(lengths: Tensor | list[int] | None, x: Tensor) -> Tensor | None:
    """Right-padding lengths as an int64 tensor ``[B]``. A list is checked in full; a tensor's
    values are symbolic while the graph is captured, so only its type and shape are."""
    if lengths is None:
        return None
    if not isinstance(lengths, Tensor):
        return _checks.lengths(lengths, x.shape[1], x.shape[0])
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise TypeError(f"lengths: expected an integer tensor, got dtype {lengths.dtype}")
    if lengths.dim() != 1:
        raise ValueError(
            f"lengths: expected a 1-D tensor (one length per sequence), got shape "
            f"{tuple(lengths.shape)}"
        )
    torch._check(lengths.shape[0] == x.shape[1], lambda: (
        f"lengths: expected {x.shape[1]} lengths (one per sequence in the batch), got "
        f"{lengths.shape[0]}"))
    return lengths.to(torch.int64)


# -- the native ONNX operators --------------------------------------------------------------------


def _native_layer(
    op: str, layer: _Recurrent, index: int, x: Tensor, states: tuple[Tensor, ...],
    lengths: Tensor | None,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """One layer (all directions) as one ONNX ``LSTM``/``GRU``/``RNN`` node."""
    spec, lay = layer.spec, layer.layout
    directions = 2 if layer.bidirectional else 1
    params = [layer.cell_params(index, d) for d in range(directions)]
    order = _ONNX_ORDER[op]
    w = _reorder(lay, [p["weight_ih"] for p in params], order)
    r = _reorder(lay, [p["weight_hh"] for p in params], order)
    b = None
    if "bias_ih" in params[0]:
        b = torch.cat([_reorder(lay, [_full_bias(lay, p, name) for p in params], order)
                       for name in ("bias_ih", "bias_hh")], 1)
    seq_lens = None if lengths is None else lengths.to(torch.int32)
    names = {"LSTM": ("gate_activation", "input_activation", "output_activation"),
             "GRU": ("gate_activation", "input_activation"),
             "RNN": ("input_activation",)}[op]
    attrs: dict[str, Any] = {
        "hidden_size": layer.hidden_size,
        "direction": "bidirectional" if directions == 2 else "forward",
        **_activation_attrs([getattr(spec, n) for n in names] * directions),
    }
    inputs: list[Tensor | None] = [x, w, r, b, seq_lens, states[0]]
    if op == "LSTM":
        attrs["input_forget"] = int(spec.coupled)
        peep = None
        if spec.peephole:
            peep = torch.stack([torch.cat([p[f"weight_c{g}"] if f"weight_c{g}" in p
                                           else p["weight_ci"].new_zeros(layer.hidden_size)
                                           for g in ("i", "o", "f")]) for p in params])
        inputs += [states[1], peep]
    elif op == "GRU":
        attrs["linear_before_reset"] = int(spec.reset_after)
    steps, batch = x.shape[0], x.shape[1]
    state_shape = [directions, batch, layer.hidden_size]
    n_out = 3 if op == "LSTM" else 2
    outs = torch.onnx.ops.symbolic_multi_out(
        op, inputs, attrs, dtypes=[x.dtype] * n_out,
        shapes=[[steps, directions, batch, layer.hidden_size]] + [state_shape] * (n_out - 1),
    )
    # Y is [T, directions, B, H]; the layer's output concatenates the directions per step.
    y = outs[0].permute(0, 2, 1, 3).flatten(2)
    return y, tuple(outs[1:])


def _reorder(lay: Layout, per_direction: list[Tensor], order: tuple[str, ...]) -> Tensor:
    """The directions' tensors stacked, their row blocks (laid out by ``lay``) in ``order``.

    An absent block becomes zeros: only the forget gate of coupled cells, which ONNX ignores
    with ``input_forget=1``. One gather per tensor keeps the graph small.
    """
    t = torch.stack(per_direction)
    index: list[int] = []
    for name in order:
        rows = lay.blocks.get(name)
        index += range(rows.start, rows.stop) if rows else [lay.rows] * lay.hidden_size
    if index == list(range(lay.rows)):
        return t
    if len(index) > lay.rows:
        t = torch.cat([t, t.new_zeros((t.shape[0], 1) + tuple(t.shape[2:]))], 1)
    return t.index_select(1, torch.tensor(index, device=t.device))


def _full_bias(lay: Layout, p: dict[str, Tensor], name: str) -> Tensor:
    """A bias over every pre-activation row (zeros for unbiased blocks or a missing vector)."""
    if name not in p:
        return p["bias_ih"].new_zeros(lay.rows)
    return lay.expand(p[name], lay.spec.biased_blocks())


def _activation_attrs(acts: list[str]) -> dict[str, Any]:
    """ONNX's ``activations`` with the alphas and betas of those that take them, in order."""
    names, alphas, betas = [], [], []
    for act in acts:
        name, alpha, beta = _ACTIVATIONS[act]
        names.append(name)
        if alpha is not None:
            alphas.append(alpha)
        if beta is not None:
            betas.append(beta)
    attrs: dict[str, Any] = {"activations": names}
    if alphas:
        attrs["activation_alpha"] = alphas
    if betas:
        attrs["activation_beta"] = betas
    return attrs


# -- everything else: a Scan over the reference step ---------------------------------------------


def _scan_layer(
    layer: _Recurrent, index: int, x: Tensor, states: tuple[Tensor, ...], valid: Tensor | None,
    return_cells: bool,
) -> tuple[Tensor, tuple[Tensor, ...], Tensor | None]:
    """One layer, each direction an ONNX ``Scan`` over the reference step."""
    directions = 2 if layer.bidirectional else 1
    outs, carries, cells = [], [], []
    for d in range(directions):
        # Detached: scan's autograd would save the step's symbolic batch size among its
        # intermediates, which torch 2.13 cannot stack; an ONNX graph computes no gradients.
        params = {k: v.detach() for k, v in layer.cell_params(index, d).items()}
        out, carry, cell_seq = _scan(layer.spec, params, x.detach(),
                                     tuple(s[d] for s in states), layer.hidden_size, valid,
                                     bool(d), return_cells)
        outs.append(out)
        carries.append(carry)
        cells.append(cell_seq)
    final = tuple(torch.stack([c[k] for c in carries]) for k in range(len(states)))
    cell_seq = torch.cat(cells, -1) if return_cells else None
    return torch.cat(outs, -1), final, cell_seq


def _scan(
    spec: CellSpec, p: dict[str, Tensor], x: Tensor, carry: tuple[Tensor, ...],
    hidden_size: int, valid: Tensor | None, reverse: bool, return_cells: bool,
) -> tuple[Tensor, tuple[Tensor, ...], Tensor | None]:
    """:func:`lstmkit.cells.reference.scan` as a ``torch.ops.higher_order.scan``, which the
    exporter turns into an ONNX ``Scan`` whose trip count is the input's length.

    The operator is called directly with the parameters as explicit operands: its Python
    wrapper would compile the step with dynamo first, which costs seconds per scan.
    """
    from torch._higher_order_ops.scan import scan_op

    names = list(p)
    n_carry = len(carry)
    x_proj = reference.input_projection(spec, p, x, hidden_size)
    xs = [x_proj] if valid is None else [x_proj, valid]
    if reverse:
        xs = [t.flip(0) for t in xs]

    def body(*args: Tensor) -> list[Tensor]:
        old = tuple(args[:n_carry])
        x_t = args[n_carry]
        params = dict(zip(names, args[n_carry + len(xs):]))
        new_carry, y = reference.step(spec, params, old, x_t)
        if valid is not None:
            keep = args[n_carry + 1]
            new_carry = tuple(torch.where(keep, n, o) for n, o in zip(new_carry, old))
            y = y * keep
        # A scan's outputs may not alias each other or the carry, hence the clones.
        outs = [y.clone()]
        if return_cells:
            outs.append(new_carry[1] * keep if valid is not None else new_carry[1].clone())
        return [*new_carry, *outs]

    result = scan_op(body, list(carry), xs, tuple(p[n] for n in names))
    final, outs = tuple(result[:n_carry]), list(result[n_carry:])
    if reverse:
        outs = [t.flip(0) for t in outs]
    return outs[0], final, outs[1] if return_cells else None
