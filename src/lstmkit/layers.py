"""``torch.nn.LSTM``/``GRU``/``RNN``-compatible layers for every cell spec.

:class:`LSTM`, :class:`GRU` and :class:`RNN` take torch's arguments, shapes and parameter names,
so ``load_state_dict(torch_module.state_dict())`` works and outputs match torch. A ``variant``
(preset name or :class:`~lstmkit.cells.CellSpec`) selects the cell. Beyond torch: ``lengths=``
for right-padded batches, ``return_cell_states=True`` for every step's cell state, and two
initialisations of the forget gate: a constant ``forget_bias`` or ``chrono_init=T_max``; and
three recurrent regularisers computed inside the recurrence, ``recurrent_dropout``, ``zoneout``
and ``weight_drop`` (:mod:`lstmkit.regularise`), which torch's kernels cannot compute.

This module owns the parameters and torch compatibility; the rest of a call is delegated:
:mod:`lstmkit._layer_io` reads the input and initial state and shapes the output,
:mod:`lstmkit.dispatch` picks the path (torch's kernel, the fused engine of
:mod:`lstmkit.engine` or the reference of :mod:`lstmkit.cells.reference`) and says why, and
:mod:`lstmkit.stack` runs the layers and directions. ``backend="native"``, ``"engine"`` or
``"reference"`` (or the environment variable ``LSTMKIT_BACKEND``) forces one path, and raises
where that path cannot run the call.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import _checks, _layer_io, dispatch, engine, onnx_export, stack
from .cells import reference
from .cells.spec import CellSpec, get_spec
from .dispatch import BACKENDS, Route
from .regularise import Regularisers

__all__ = ["BACKENDS", "GRU", "LSTM", "RNN", "Route"]


class _Recurrent(nn.Module):
    """Shared machinery of :class:`LSTM`, :class:`GRU` and :class:`RNN` (stack, directions)."""

    family: str = "lstm"
    default_variant: str = "lstm"

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
        variant: str | CellSpec | None = None,
        forget_bias: float | None = None,
        chrono_init: int | None = None,
        backend: str = "auto",
        recurrent_dropout: float = 0.0,
        zoneout: float | tuple[float, float] = 0.0,
        weight_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.spec = get_spec(self.default_variant if variant is None else variant, self.family)
        self.regularisers = Regularisers.of(self.family, recurrent_dropout, zoneout, weight_drop)
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
            dispatch.route(self.spec, backend, None)  # fail at construction, not on first call
            reg = self.regularisers.active(training=True)
            if reg is not None:
                raise ValueError(f"backend: 'native' cannot run {reg}: torch's kernels do not "
                                 "compute recurrent regularisers; use 'auto' or 'engine'")
        self.layout = self.spec.layout(hidden_size, self.proj_size)
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
        if chrono_init is not None:
            chrono_init = _checks.positive_int("chrono_init", chrono_init)
            if chrono_init < 2:
                raise ValueError(f"chrono_init: expected an int T_max >= 2 (the longest "
                                 f"dependency, in steps), got {chrono_init}")
            if self.forget_bias is not None:
                raise ValueError(f"chrono_init: sets the forget-gate bias itself, so expected "
                                 f"forget_bias=None, got forget_bias={forget_bias}")
        self.chrono_init = chrono_init
        self.reset_parameters()

    # -- parameters ------------------------------------------------------------------------

    def reset_parameters(self) -> None:
        """torch's initialisation, U(-1/sqrt(H), 1/sqrt(H)), then ``forget_bias`` or
        ``chrono_init`` if given (a fresh draw from torch's global generator each call).

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
            if self.chrono_init is not None:
                self._set_chrono(self.chrono_init)

    def _forget_target(self, option: str, value: object) -> tuple[str, float]:
        """The bias block that sets the forget gate, and the sign that turns a forget-gate bias
        into that block's bias: ``("f", 1)``; GRU ``("z", 1)``; CIFG, where f = 1 - i and so
        σ(-b_i) is the forget gate, ``("i", -1)``. Refuses cells without one or without its
        bias, naming ``option`` (given ``value``)."""
        spec = self.spec
        target: str | None
        target, sign = {"lstm": ("f", 1.0), "gru": ("z", 1.0)}.get(spec.family, (None, 1.0))
        if spec.coupled:
            target, sign = "i", -1.0
        elif spec.family == "lstm" and not spec.forget_gate:
            target = None
        if target is None:
            raise ValueError(
                f"{option}: the {spec.name!r} cell has no forget gate, got {option}={value}"
            )
        if not self.bias or target not in spec.biased_blocks():
            raise ValueError(
                f"{option}: the layer has no bias for the {target!r} gate (bias={self.bias},"
                f" bias_units={spec.bias_units!r}), got {option}={value}"
            )
        return target, sign

    def _set_block_bias(self, block: str, values: list[Tensor] | float) -> None:
        """Give ``block`` a total bias of ``values`` (one tensor per layer-direction, or one
        number for all): with torch's two bias vectors the whole value goes into ``bias_ih``
        and the block's part of ``bias_hh`` is zeroed, so that their sum is the value."""
        rows = self.layout.bias_slice(block)
        k = 0
        for per_dir in self._param_names:
            for names in per_dir:
                value = values if isinstance(values, float) else values[k]
                getattr(self, names["bias_ih"])[rows] = value
                if "bias_hh" in names:
                    getattr(self, names["bias_hh"])[rows] = 0.0
                k += 1

    def _set_forget_bias(self, value: float) -> None:
        """Give the forget gate (GRU: update gate z) a total bias of ``value``; for CIFG
        (f = 1 - i) the input gate gets ``-value``."""
        target, sign = self._forget_target("forget_bias", value)
        self._set_block_bias(target, sign * value)

    def _set_chrono(self, t_max: int) -> None:
        """Chrono initialisation (Tallec & Ollivier 2018): forget-gate bias b_f = log(u), u
        uniform in [1, T_max - 1] drawn per gate row and layer-direction, and b_i = -b_f.

        The forget gate then starts at σ(b_f) = u / (1 + u), a memory of about u steps, spread
        over the time scales up to T_max. Cells without an input gate (``nig``) get b_f only;
        CIFG, whose forget gate is 1 - i, gets b_i = -log(u), which is both rules at once; GRU's
        update gate z keeps the old state (h = z h + (1 - z) n, torch's convention), so z plays
        f and 1 - z plays i: b_z = log(u), and 1 - z = σ(-b_z) follows by itself.
        """
        target, sign = self._forget_target("chrono_init", t_max)
        rows = self.layout.bias_slice(target)
        ref = self._ref_param()
        draws = [torch.log(torch.empty(rows.stop - rows.start, dtype=ref.dtype,
                                       device=ref.device).uniform_(1.0, t_max - 1.0))
                 for _ in range(self.num_layers * self._directions)]
        self._set_block_bias(target, [sign * d for d in draws])
        spec = self.spec
        if spec.family == "lstm" and not spec.coupled and spec.input_gate:
            # bias_units "gates" and "all" both bias i whenever they bias f.
            self._set_block_bias("i", [-d for d in draws])

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
        reg = self.regularisers.active(training=True)
        if reg is not None:
            s += f", {reg}"
        return s + f", variant={self.spec.name!r}"

    # -- forward ---------------------------------------------------------------------------

    @property
    def state_sizes(self) -> tuple[int, ...]:
        """Feature size of each carried state tensor: h, then c and the carried gate
        activations as far as the cell has them."""
        return self.layout.state_sizes

    def route(self, input: Tensor | None = None, *, return_cell_states: bool = False,
              lengths: object = None, training: bool | None = None) -> Route:
        """Which path a call with ``input`` would take (torch's kernel, the engine or the
        reference) and why; without ``input``, for CPU float32 input. ``lengths``: anything
        but None for a call with lengths (or a ``PackedSequence`` input); ``training``: whether
        the call records gradients (None: as a call here and now would). Runs nothing.
        Regularisers in force in the layer's mode (``self.training``) rule out torch's kernel."""
        x, packed = None, False
        if input is not None:
            packed = isinstance(input, PackedSequence)
            x, _, _ = _layer_io.read_input(input, None, self.batch_first, self.input_size,
                                           self._ref_param())
        if training is None:
            training = self._records_gradients(x)
        return dispatch.route(self.spec, self.backend, x, return_cells=return_cell_states,
                              lengths=lengths is not None or packed, grad=bool(training),
                              regularised=self.regularisers.active(self.training))

    def _records_gradients(self, x: Tensor | None, states: tuple[Tensor, ...] = ()) -> bool:
        """Whether a call on ``x`` from ``states`` is a training step (records a gradient)."""
        if not torch.is_grad_enabled():
            return False
        tensors = [*self.parameters(), *states] + ([x] if x is not None else [])
        return any(t.requires_grad for t in tensors)

    def _ref_param(self) -> Tensor:
        return next(iter(self.parameters()))

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
        if onnx_export.exporting():
            # torch.onnx.export captures ONNX operators instead of kernels it cannot translate.
            return onnx_export.forward(self, input, hx, lengths=lengths,
                                       return_cell_states=return_cell_states,
                                       check_finite=check_finite)
        ref = self._ref_param()
        x, lengths, form = _layer_io.read_input(input, lengths, self.batch_first,
                                                self.input_size, ref)
        _checks.flag("return_cell_states", return_cell_states)
        _checks.flag("check_finite", check_finite)
        if return_cell_states and self.spec.family != "lstm":
            raise ValueError(
                f"return_cell_states: only LSTM-family cells have a cell state, got "
                f"{self.spec.name!r}"
            )
        states = _layer_io.initial_state(hx, self.state_sizes, self.num_layers * self._directions,
                                         x, form, self.spec.family == "lstm", ref)
        path = dispatch.route(
            self.spec, self.backend, x, return_cells=return_cell_states,
            lengths=lengths is not None or form.packed is not None,
            grad=self._records_gradients(x, states),
            regularised=self.regularisers.active(self.training)).path
        steps = x.shape[0]
        # Valid steps of right-padded input (a PackedSequence's padding is zeros already).
        valid = None
        if lengths is not None and form.packed is None and (check_finite or path != "native"):
            valid = (torch.arange(steps).unsqueeze(1) < lengths).unsqueeze(-1).to(x.device)
        if check_finite:
            _checks.finite("input", x if valid is None else x.masked_select(valid))
            for name, state in zip(("h_0", "c_0", "a_0"), states):
                _checks.finite(f"hx ({name})", state)
        shape = stack.Stack(self.spec, self.hidden_size, self.num_layers, self.bidirectional,
                            self.dropout, self.training, self.regularisers, self.layout)
        cells = None
        if path == "native":
            out, final = stack.run_native(shape, self._flat_weights, self.bias, x, states,
                                          lengths)
        else:
            if valid is not None:
                # Padding may hold anything (NaN included); zeroing it keeps it out of padded
                # outputs (0 * NaN is NaN) and out of the weight gradients the scans form as
                # sums over all steps.
                x = torch.where(valid, x, x.new_zeros(()))
            scan = engine.scan if path == "engine" else reference.scan
            out, final, cells = stack.run_scans(shape, scan, self.cell_params, x, states,
                                                lengths, return_cell_states)
        output = form.restore(out, lengths)
        final = form.restore_state(final)
        hidden: Any = final if self.spec.family == "lstm" else final[0]
        if return_cell_states:
            return output, hidden, form.restore(cells, lengths)
        return output, hidden


class LSTM(_Recurrent):
    """``torch.nn.LSTM`` with any LSTM-family cell (``variant="peephole"``, ``"cifg"``, ...).

    Same arguments, shapes, return values and parameter names as ``torch.nn.LSTM``; extra
    keyword-only arguments: ``variant`` (default ``"lstm"``, numerically torch's),
    ``forget_bias``, ``chrono_init`` and ``backend``. Extra parameters (peepholes
    ``weight_ci_l0``, gate recurrence ``weight_gh_l0``, layer norm ``ln_*_l0``) have their own
    names. Cells whose pre-activation blocks differ (missing or coupled gates, memory blocks)
    have correspondingly fewer rows in ``weight_ih``/``weight_hh``/biases, in the order i, f, g,
    o.

    ``forget_bias=b`` sets every forget-gate bias to ``b`` (1 is the usual choice).
    ``chrono_init=T_max`` is chrono initialisation (Tallec & Ollivier 2018), for dependencies
    of up to about ``T_max`` steps: forget-gate biases b_f = log(u), u uniform in
    [1, T_max - 1] drawn per gate, and input-gate biases b_i = -b_f, so the gates start with
    memories spread over time scales up to T_max steps instead of the few steps that
    σ(1) ≈ 0.73 keeps. Cells without an input gate get b_f only; coupled cells (``cifg``,
    f = 1 - i) get b_i = -log(u), which is both. Either option applies at construction and at
    every :meth:`reset_parameters` (``chrono_init`` draws afresh from torch's generator) and
    puts the whole value into ``bias_ih``, zeroing the gate's rows of ``bias_hh`` so that the
    sum is the value. They exclude each other, need a forget gate and ``bias=True``, and
    ``chrono_init`` takes an int >= 2.

    Recurrent regularisers (rates in [0, 1), default 0; see :mod:`lstmkit.regularise`):
    ``recurrent_dropout=p`` drops units of h(t-1) where it enters the recurrent product, one
    mask per sequence and layer-direction, kept units scaled by 1 / (1 - p) (off in eval);
    ``zoneout=p`` or ``zoneout=(p_cell, p_hidden)`` lets each unit of c and h keep its previous
    value with that probability at each step (in eval the expectation,
    h = p h(t-1) + (1 - p) h~(t)); ``weight_drop=p`` is DropConnect on ``weight_hh`` (and
    ``weight_gh``), a fresh mask per forward call, parameters and state dict unchanged (off in
    eval). The masks come from torch's generator, so ``torch.manual_seed`` reproduces them.
    Calls with a regulariser in force never run on torch's kernel.
    """

    family = "lstm"
    default_variant = "lstm"


class GRU(_Recurrent):
    """``torch.nn.GRU`` (``variant="gru"``), Cho et al.'s ordering (``variant="gru_cho"``) or
    the layer-normalised GRU (``variant="layernorm_gru"``, with gains ``ln_ih_weight_l0`` and
    ``ln_hh_weight_l0``).

    Takes ``torch.nn.GRU``'s arguments (``proj_size`` is refused, as torch does). In torch's
    convention h = z h + (1 - z) n, the update gate z keeps the old state, so z plays the LSTM's
    forget gate and 1 - z its input gate: ``forget_bias=b`` sets z's bias to b, and
    ``chrono_init=T_max`` draws z's bias as log(u), u uniform in [1, T_max - 1] per unit (so
    1 - z gets -log(u) by itself), as :class:`LSTM` does with its forget gate. The whole value
    goes into ``bias_ih``; z's rows of ``bias_hh`` are zeroed.

    ``recurrent_dropout``, ``zoneout`` (one rate: a GRU has only h) and ``weight_drop`` as for
    :class:`LSTM`; recurrent dropout masks h(t-1) in every product with ``weight_hh``, not in
    the interpolation z h(t-1).
    """

    family = "gru"
    default_variant = "gru"


class RNN(_Recurrent):
    """``torch.nn.RNN``: the plain Elman net (``nonlinearity`` ``"tanh"`` or ``"relu"``).

    Takes ``torch.nn.RNN``'s arguments: ``nonlinearity`` comes fourth, as in torch; the rest
    are :class:`LSTM`'s, ``recurrent_dropout``, ``zoneout`` (one rate) and ``weight_drop``
    included.
    """

    family = "rnn"
    default_variant = "rnn"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", *args: Any, variant: str | CellSpec | None = None,
                 **kwargs: Any) -> None:
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
        super().__init__(input_size, hidden_size, num_layers, *args, variant=variant, **kwargs)
