"""``torch.nn.LSTM``/``GRU``/``RNN``-compatible layers for every cell spec.

:class:`LSTM`, :class:`GRU` and :class:`RNN` take torch's arguments, shapes and parameter names,
so ``load_state_dict(torch_module.state_dict())`` works and outputs match torch. A ``variant``
(preset name or :class:`~lstmkit.cells.CellSpec`) selects the cell. Beyond torch: ``lengths=``
for right-padded batches, ``return_cell_states=True`` for every step's cell state, and a
``forget_bias`` initialisation.

Dispatch (``backend="auto"``): where torch has a kernel for exactly the requested computation
(plain ``lstm``, ``gru``, ``rnn`` without lstmkit-only options) the layer calls it; everything else
runs the fused C++ engine of :mod:`lstmkit.engine`, which itself falls back to the readable
reference in :mod:`lstmkit.cells.reference` for what it does not cover (layer norm, CUDA, a failed
build). ``backend="native"``, ``"engine"`` or ``"reference"`` (or the environment variable
``LSTMKIT_BACKEND``) forces one path.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import _VF, Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import _checks, engine
from .cells import reference
from .cells.spec import CellSpec, get_spec

BACKENDS = ("auto", "native", "engine", "reference")
_NATIVE_FN = {"lstm": _VF.lstm, "gru": _VF.gru}


class _Recurrent(nn.Module):
    """Shared machinery of :class:`LSTM`, :class:`GRU` and :class:`RNN` (stack, directions)."""

    family: str = "lstm"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        variant: str | CellSpec,
        forget_bias: float | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.spec = get_spec(variant, self.family)
        self.input_size = _checks.positive_int("input_size", input_size)
        self.hidden_size = _checks.positive_int("hidden_size", hidden_size)
        self.num_layers = _checks.positive_int("num_layers", num_layers)
        self.proj_size = _checks.positive_int("proj_size", proj_size, allow_zero=True)
        self.dropout = _checks.probability("dropout", dropout)
        self.bias = _checks.flag("bias", bias)
        self.batch_first = _checks.flag("batch_first", batch_first)
        self.bidirectional = _checks.flag("bidirectional", bidirectional)
        if self.proj_size and self.family != "lstm":
            raise ValueError(f"proj_size: supported by LSTM only, got {proj_size} for a "
                             f"{self.family.upper()}")
        if self.proj_size >= self.hidden_size:
            raise ValueError(
                f"proj_size: expected proj_size < hidden_size ({hidden_size}), got {proj_size}"
            )
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                "dropout option adds dropout after all but the last recurrent layer, so "
                f"non-zero dropout expects num_layers greater than 1, got dropout={dropout} "
                f"and num_layers={num_layers}",
                stacklevel=2,
            )
        if backend not in BACKENDS:
            raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        if backend == "native":
            self._backend(return_cells=False)  # fail at construction, not on the first call
        self.spec.block_widths(hidden_size)  # hidden_size must fit the block size
        factory = {"device": device, "dtype": dtype}
        directions = 2 if bidirectional else 1
        out_size = self.proj_size or hidden_size
        self._param_names: list[list[dict[str, str]]] = []
        for layer in range(num_layers):
            per_dir = []
            layer_in = input_size if layer == 0 else out_size * directions
            for direction in range(directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                names = {}
                shapes = reference.param_shapes(
                    self.spec, layer_in, hidden_size, self.proj_size, bias
                )
                for short, shape in shapes.items():
                    full = short + suffix
                    self.register_parameter(full, nn.Parameter(torch.empty(shape, **factory)))
                    names[short] = full
                per_dir.append(names)
            self._param_names.append(per_dir)
        self.forget_bias = None if forget_bias is None else _checks.real("forget_bias", forget_bias)
        self.reset_parameters()

    # -- parameters ------------------------------------------------------------------------

    def reset_parameters(self) -> None:
        """torch's initialisation, U(-1/sqrt(H), 1/sqrt(H)), then ``forget_bias`` if given.

        Layer-norm gains start at 1 and shifts at 0.
        """
        bound = reference.init_bound(self.hidden_size)
        with torch.no_grad():
            for name, param in self.named_parameters(recurse=False):
                if name.startswith("ln_"):
                    param.fill_(1.0 if "_weight" in name else 0.0)
                else:
                    param.uniform_(-bound, bound)
            if self.forget_bias is not None:
                self._set_forget_bias(self.forget_bias)

    def _set_forget_bias(self, value: float) -> None:
        """Give the forget gate (GRU: update gate z) a total bias of ``value``.

        With torch's two bias vectors the whole value goes into ``bias_ih`` and the matching
        part of ``bias_hh`` is zeroed. For CIFG (f = 1 - i) the input gate gets ``-value``.
        """
        spec = self.spec
        target, sign = {"lstm": ("f", 1.0), "gru": ("z", 1.0)}.get(spec.family, (None, 1.0))
        if spec.coupled:
            target, sign = "i", -1.0
        elif spec.family == "lstm" and not spec.forget_gate:
            target = None
        if target is None:
            raise ValueError(
                f"forget_bias: the {spec.name!r} cell has no forget gate, got forget_bias={value}"
            )
        if not self.bias or target not in spec.biased_blocks():
            raise ValueError(
                f"forget_bias: the layer has no bias for the {target!r} gate (bias={self.bias},"
                f" bias_units={spec.bias_units!r}), got forget_bias={value}"
            )
        widths = spec.block_widths(self.hidden_size)
        start = 0
        for name in spec.biased_blocks():
            if name == target:
                break
            start += widths[name]
        rows = slice(start, start + widths[target])
        for per_dir in self._param_names:
            for names in per_dir:
                getattr(self, names["bias_ih"])[rows] = sign * value
                if "bias_hh" in names:
                    getattr(self, names["bias_hh"])[rows] = 0.0

    def cell_params(self, layer: int, direction: int = 0) -> dict[str, Tensor]:
        """One layer-direction's parameters keyed by their short names (``weight_ih``, ...)."""
        return {short: getattr(self, full)
                for short, full in self._param_names[layer][direction].items()}

    @property
    def _flat_weights(self) -> list[Tensor]:
        """torch's flat weight list (w_ih, w_hh, b_ih, b_hh, w_hr per layer-direction)."""
        order = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
        return [p[k] for layer in range(self.num_layers) for d in range(self._directions)
                for p in [self.cell_params(layer, d)] for k in order if k in p]

    @property
    def all_weights(self) -> list[list[Tensor]]:
        return [list(self.cell_params(layer, d).values())
                for layer in range(self.num_layers) for d in range(self._directions)]

    def flatten_parameters(self) -> None:
        """No-op, kept so code written for ``torch.nn.LSTM`` runs unchanged."""

    @property
    def _directions(self) -> int:
        return 2 if self.bidirectional else 1

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        for name, default in (("bias", True), ("batch_first", False), ("dropout", 0.0),
                              ("bidirectional", False), ("proj_size", 0)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        return s + f", variant={self.spec.name!r}"

    # -- forward ---------------------------------------------------------------------------

    def _state_sizes(self) -> list[int]:
        """Feature size of each carried state tensor (h, then c, then gate activations)."""
        if self.spec.family != "lstm":
            return [self.hidden_size]
        sizes = [self.proj_size or self.hidden_size, self.hidden_size]
        if self.spec.carries_gates:
            widths = self.spec.block_widths(self.hidden_size)
            sizes.append(sum(widths[g] for g in self.spec.gate_names))
        return sizes

    def _backend(self, return_cells: bool) -> str:
        """The path this call takes: ``"native"``, ``"engine"`` or ``"reference"``."""
        backend = self.backend
        if backend == "auto":
            backend = os.environ.get("LSTMKIT_BACKEND", "auto")
            if backend not in BACKENDS:
                raise ValueError(
                    f"LSTMKIT_BACKEND: expected one of {BACKENDS}, got {backend!r}"
                )
        native_ok = self.spec.torch_native and not return_cells
        if backend == "native" and not native_ok:
            raise ValueError(
                f"backend: 'native' runs torch's own kernels, which do not cover variant "
                f"{self.spec.name!r}" + (" with return_cell_states" if return_cells else "")
            )
        if backend == "auto":
            return "native" if native_ok else "engine"
        return backend

    def forward(
        self,
        input: Tensor | PackedSequence,
        hx: Tensor | tuple[Tensor, ...] | None = None,
        *,
        lengths: Tensor | list[int] | None = None,
        return_cell_states: bool = False,
        check_finite: bool = False,
    ) -> tuple[Any, ...]:
        """Run the stack; returns ``(output, h_n)`` (GRU, RNN) or ``(output, (h_n, c_n))``.

        Args:
            input: ``[T, B, in]`` (``[B, T, in]`` with ``batch_first``), unbatched ``[T, in]``,
                or a ``PackedSequence``.
            hx: initial state, shaped as torch's (``[D*L, B, H]`` each); for cells that carry
                their gate activations (``fgr``, ``lstm1997``) an optional third tensor.
            lengths: right-padding lengths ``[B]``: a sequence's state is frozen after its end
                and its padded outputs are zero (not with a ``PackedSequence``).
            return_cell_states: also return every step's cell state of the last layer, laid out
                like ``output`` (LSTM family only; a ``PackedSequence`` for packed input).
            check_finite: raise ``ValueError`` if the input (its valid steps, with ``lengths``)
                or ``hx`` holds NaN or Inf. Off by default: it synchronises with the device.
        """
        packed = isinstance(input, PackedSequence)
        if packed:
            if lengths is not None:
                raise ValueError("lengths: a PackedSequence carries its own lengths; got both")
            sorted_indices, unsorted_indices = input.sorted_indices, input.unsorted_indices
            batch_sizes = input.batch_sizes
            x, lengths = pad_packed_sequence(input)
            batched = True
        else:
            _checks.tensor("input", input)
            if input.dim() not in (2, 3):
                raise ValueError(
                    f"input: expected a 3-D (batched) or 2-D (unbatched) tensor, "
                    f"got {input.dim()}-D with shape {tuple(input.shape)}"
                )
            batched = input.dim() == 3
            x = input if batched else input.unsqueeze(1)
            if batched and self.batch_first:
                x = x.transpose(0, 1)
        ref = next(iter(self.parameters()))
        _checks.same_float("input", x, ref.dtype, ref.device)
        if x.shape[-1] != self.input_size:
            raise ValueError(
                f"input: expected {self.input_size} features (input_size), got {x.shape[-1]}"
            )
        _checks.flag("return_cell_states", return_cell_states)
        _checks.flag("check_finite", check_finite)
        if return_cell_states and self.spec.family != "lstm":
            raise ValueError(
                f"return_cell_states: only LSTM-family cells have a cell state, got "
                f"{self.spec.name!r}"
            )
        steps, batch = x.shape[0], x.shape[1]
        if lengths is not None and not packed:
            lengths = _checks.lengths(lengths, batch, steps)
        states = self._initial_state(hx, batch, batched, x)
        backend = self._backend(return_cell_states)
        if backend == "native" and steps == 0:
            # torch's kernels refuse empty sequences; the scan returns the empty output and the
            # initial state, so both paths agree.
            backend = "reference"
        # Valid steps of right-padded input (a PackedSequence's padding is zeros already).
        valid = None
        if lengths is not None and not packed and (check_finite or backend != "native"):
            valid = (torch.arange(steps).unsqueeze(1) < lengths).unsqueeze(-1).to(x.device)
        if check_finite:
            _checks.finite("input", x if valid is None else x.masked_select(valid))
            for name, state in zip(("h_0", "c_0", "a_0"), states):
                _checks.finite(f"hx ({name})", state)
        if backend == "native":
            out, final = self._run_native(x, states, lengths)
            cells = None
        else:
            scan = engine.scan if backend == "engine" else reference.scan
            if valid is not None:
                # Padding may hold anything (NaN included); zeroing it keeps it out of padded
                # outputs (0 * NaN is NaN) and out of the weight gradients the scans form as
                # sums over all steps.
                x = torch.where(valid, x, x.new_zeros(()))
            out, final, cells = self._run_scan(scan, x, states, lengths, return_cell_states)

        if packed:
            output: Any = _repack(out, lengths, batch_sizes, sorted_indices, unsorted_indices)
        else:
            output = out if batched else out.squeeze(1)
            if batched and self.batch_first:
                output = output.transpose(0, 1)
        if cells is not None and packed:
            cells = _repack(cells, lengths, batch_sizes, sorted_indices, unsorted_indices)
        elif cells is not None:
            cells = cells if batched else cells.squeeze(1)
            if batched and self.batch_first:
                cells = cells.transpose(0, 1)
        if not batched:
            final = tuple(s.squeeze(1) for s in final)
        hidden: Any = final if self.spec.family == "lstm" else final[0]
        if return_cell_states:
            return output, hidden, cells
        return output, hidden

    def _initial_state(
        self, hx: Any, batch: int, batched: bool, x: Tensor
    ) -> tuple[Tensor, ...]:
        sizes = self._state_sizes()
        rows = self.num_layers * self._directions
        if hx is None:
            return tuple(x.new_zeros(rows, batch, n) for n in sizes)
        if not isinstance(hx, (Tensor, tuple, list)):
            raise TypeError(
                f"hx: expected a tensor or a tuple of tensors, got {type(hx).__name__}"
            )
        given = (hx,) if isinstance(hx, Tensor) else tuple(hx)
        names = ["h_0", "c_0", "a_0"][: len(sizes)]
        need = 2 if self.spec.family == "lstm" else 1
        if self.spec.family == "lstm" and isinstance(hx, Tensor):
            raise TypeError("hx: expected a tuple (h_0, c_0) for an LSTM, got a single tensor")
        if not need <= len(given) <= len(sizes):
            raise ValueError(
                f"hx: expected {' or '.join(str(n) for n in sorted({need, len(sizes)}))} "
                f"tensors ({', '.join(names)}), got {len(given)}"
            )
        states = []
        ref = next(iter(self.parameters()))
        for name, state, size in zip(names, given, sizes):
            _checks.tensor(f"hx ({name})", state)
            _checks.same_float(f"hx ({name})", state, ref.dtype, ref.device)
            expected = (rows, batch, size) if batched else (rows, size)
            _checks.shape(f"hx ({name})", state, expected)
            states.append(state if batched else state.unsqueeze(1))
        for size in sizes[len(given):]:
            states.append(x.new_zeros(rows, batch, size))
        return tuple(states)

    def _run_scan(
        self, scan: Any, x: Tensor, states: tuple[Tensor, ...], lengths: Tensor | None,
        return_cells: bool,
    ) -> tuple[Tensor, tuple[Tensor, ...], Tensor | None]:
        finals: list[list[Tensor]] = [[] for _ in states]
        layer_input, cells = x, None
        for layer in range(self.num_layers):
            outs, layer_cells = [], []
            for d in range(self._directions):
                idx = layer * self._directions + d
                out, carry, cell_seq = scan(
                    self.spec, self.cell_params(layer, d), layer_input,
                    tuple(s[idx] for s in states), hidden_size=self.hidden_size,
                    lengths=lengths, reverse=bool(d), return_cells=return_cells,
                )
                outs.append(out)
                layer_cells.append(cell_seq)
                for acc, state in zip(finals, carry):
                    acc.append(state)
            layer_input = outs[0] if len(outs) == 1 else torch.cat(outs, -1)
            if return_cells and layer == self.num_layers - 1:
                cells = layer_cells[0] if len(outs) == 1 else torch.cat(layer_cells, -1)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        return layer_input, tuple(torch.stack(acc) for acc in finals), cells

    def _run_native(
        self, x: Tensor, states: tuple[Tensor, ...], lengths: Tensor | None
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        spec = self.spec
        if spec.family == "rnn":
            fn = _VF.rnn_tanh if spec.input_activation == "tanh" else _VF.rnn_relu
        else:
            fn = _NATIVE_FN[spec.family]
        hx: Any = states if spec.family == "lstm" else states[0]
        args = (self._flat_weights, self.bias, self.num_layers, self.dropout, self.training,
                self.bidirectional)
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


def _repack(
    out: Tensor,
    lengths: Tensor,
    batch_sizes: Tensor,
    sorted_indices: Tensor | None,
    unsorted_indices: Tensor | None,
) -> PackedSequence:
    """Pack padded outputs with exactly the input ``PackedSequence``'s layout."""
    order = sorted_indices if sorted_indices is not None else torch.arange(out.shape[1])
    order = order.to(out.device)
    data = pack_padded_sequence(
        out.index_select(1, order), lengths.index_select(0, order.cpu()), enforce_sorted=True
    ).data
    return PackedSequence(data, batch_sizes, sorted_indices, unsorted_indices)


class LSTM(_Recurrent):
    """``torch.nn.LSTM`` with any LSTM-family cell (``variant="peephole"``, ``"cifg"``, ...).

    Same arguments, shapes, return values and parameter names as ``torch.nn.LSTM``; extra
    keyword-only arguments: ``variant`` (default ``"lstm"``, numerically torch's),
    ``forget_bias`` and ``backend``. Extra parameters (peepholes ``weight_ci_l0``, gate recurrence
    ``weight_gh_l0``, layer norm ``ln_*_l0``) have their own names. Cells whose pre-activation
    blocks differ (missing or coupled gates, memory blocks) have correspondingly fewer rows in
    ``weight_ih``/``weight_hh``/biases, in the order i, f, g, o.
    """

    family = "lstm"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        variant: str | CellSpec = "lstm",
        forget_bias: float | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, device, dtype, variant=variant,
                         forget_bias=forget_bias, backend=backend)


class GRU(_Recurrent):
    """``torch.nn.GRU`` (``variant="gru"``) or Cho et al.'s ordering (``variant="gru_cho"``).

    ``forget_bias`` initialises the update gate z, whose value near 1 keeps the old state.
    """

    family = "gru"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        variant: str | CellSpec = "gru",
        forget_bias: float | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype, variant=variant,
                         forget_bias=forget_bias, backend=backend)


class RNN(_Recurrent):
    """``torch.nn.RNN``: the plain Elman net (``nonlinearity`` ``"tanh"`` or ``"relu"``)."""

    family = "rnn"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        variant: str | CellSpec | None = None,
        backend: str = "auto",
    ) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
        if variant is None:
            variant = "rnn" if nonlinearity == "tanh" else "rnn_relu"
        spec = get_spec(variant, self.family)
        if nonlinearity == "relu" and spec.input_activation != "relu":
            # "tanh" is also the default, so only an explicit "relu" can contradict the variant.
            raise ValueError(
                f"nonlinearity: variant {spec.name!r} uses {spec.input_activation!r}, "
                "got nonlinearity='relu'"
            )
        self.nonlinearity = spec.input_activation
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype, variant=variant, backend=backend)
