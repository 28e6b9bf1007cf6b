"""Cell specs: every gated recurrent cell of lstmkit described as data.

A :class:`CellSpec` says which gates a cell has, what its activations are, whether gates look at
the cell state (peepholes), whether the input and forget gates are coupled, what feeds back into
the gates, where biases sit and how gradients flow back in time. The reference step function in
:mod:`lstmkit.cells.reference` and the layers read these flags; nothing else distinguishes one
variant from another. Named presets live in :data:`PRESETS`; :func:`get_spec` resolves a name.

Pre-activation layout. A cell's input and recurrent weight matrices stack one row block per
pre-activation, in torch's order with absent blocks left out:

* LSTM family: ``i, f, g, o`` (input gate, forget gate, candidate, output gate). Gate blocks have
  one row per *memory block* (``hidden_size // block_size``), the candidate block one per cell.
  ``lstm`` therefore has exactly torch's ``[4H, in]`` layout; ``cifg`` has ``[3H, in]`` (i, g, o).
* GRU family: ``r, z, n`` as in ``torch.nn.GRU``.
* RNN: a single block ``h``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from .layout import Layout

Family = Literal["lstm", "gru", "rnn"]

#: Names of the activations a spec may use, with their formulas (used in docs and errors).
ACTIVATIONS: dict[str, str] = {
    "tanh": "tanh(x)",
    "sigmoid": "1 / (1 + exp(-x))",
    "identity": "x",
    "relu": "max(0, x)",
    "sigmoid_pm1": "2 * sigmoid(x) - 1, range [-1, 1] (h of the 1997 paper)",
    "sigmoid_pm2": "4 * sigmoid(x) - 2, range [-2, 2] (g of the 1997 paper)",
}

_GATE_RECURRENCE = ("none", "gates", "all")
_BIAS_UNITS = ("all", "gates", "none")


@dataclass(frozen=True)
class CellSpec:
    """A gated recurrent cell as a set of flags.

    Attributes:
        name: preset name, used in messages and checkpoints.
        family: ``"lstm"`` (carry ``(h, c)``), ``"gru"`` or ``"rnn"`` (carry ``h``).
        input_gate, forget_gate, output_gate: which LSTM gates exist; a missing gate is the
            constant 1.
        coupled: CIFG, the forget gate is ``1 - i`` (needs ``input_gate`` and no ``forget_gate``).
        peephole: diagonal peephole weights; i and f see ``c(t-1)``, o sees ``c(t)``.
        input_activation: ``g``, the squashing of the cell input (LSTM), or the RNN's
            nonlinearity, or the GRU candidate's.
        output_activation: ``h``, the squashing of the cell state before the output gate.
        gate_activation: the gates' squashing.
        gate_recurrence: previous gate activations feed back as recurrent inputs:
            ``"none"``; ``"gates"`` into the gates only (Greff et al.'s FGR); ``"all"`` into
            the gates and the cell input (the 1997 paper's fully connected hidden layer).
        hidden_recurrence: whether ``h(t-1)`` feeds back through ``weight_hh`` (False only for
            the 1997 Exp. 2a net, whose only recurrence is the constant error carousel).
        block_size: memory cells per block sharing one set of gates (1997 paper, S).
        bias_units: which pre-activation blocks get a bias when the layer has ``bias=True``:
            ``"all"``, ``"gates"`` (not the cell input), ``"none"``.
        double_bias: torch's redundant ``bias_ih`` + ``bias_hh`` pair (needed for state-dict
            compatibility); False gives one ``bias_ih`` vector, as in the paper's weight counts.
        truncated_gradient: the 1997 truncated gradient: errors reach earlier time steps only
            through the cell state, never through the recurrent inputs ``h(t-1)`` or the gate
            activations.
        reset_after: GRU only; True applies the reset gate after the recurrent product (torch),
            False before it (Cho et al. 2014).
        layer_norm: layer normalisation (Ba et al. 2016) of the input and the recurrent
            pre-activations, each over all its blocks with a gain and no shift (the biases add
            after it), and, LSTM family, of the cell state before ``h`` with a gain and a shift;
            LSTM, and GRU in torch's reset placement (``reset_after``), as haste's LayerNormLSTM
            and LayerNormGRU.
        doc: the preset's equation in one line (not part of the spec's identity).
    """

    name: str
    family: Family = "lstm"
    input_gate: bool = True
    forget_gate: bool = True
    output_gate: bool = True
    coupled: bool = False
    peephole: bool = False
    input_activation: str = "tanh"
    output_activation: str = "tanh"
    gate_activation: str = "sigmoid"
    gate_recurrence: str = "none"
    hidden_recurrence: bool = True
    block_size: int = 1
    bias_units: str = "all"
    double_bias: bool = True
    truncated_gradient: bool = False
    reset_after: bool = True
    layer_norm: bool = False
    doc: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.family not in ("lstm", "gru", "rnn"):
            raise ValueError(
                f"CellSpec.family: expected 'lstm', 'gru' or 'rnn', got {self.family!r}"
            )
        for attr in ("input_activation", "output_activation", "gate_activation"):
            value = getattr(self, attr)
            if value not in ACTIVATIONS:
                raise ValueError(
                    f"CellSpec.{attr}: expected one of {sorted(ACTIVATIONS)}, got {value!r}"
                )
        if self.gate_recurrence not in _GATE_RECURRENCE:
            raise ValueError(
                f"CellSpec.gate_recurrence: expected one of {_GATE_RECURRENCE}, "
                f"got {self.gate_recurrence!r}"
            )
        if self.bias_units not in _BIAS_UNITS:
            raise ValueError(
                f"CellSpec.bias_units: expected one of {_BIAS_UNITS}, got {self.bias_units!r}"
            )
        if not isinstance(self.block_size, int) or self.block_size < 1:
            raise ValueError(
                f"CellSpec.block_size: expected a positive int, got {self.block_size!r}"
            )
        if self.family == "rnn" and self.layer_norm:
            raise ValueError(f"CellSpec {self.name!r}: layer_norm applies to the 'lstm' and "
                             "'gru' families, got family='rnn'")
        if self.family != "lstm":
            lstm_only = {
                "peephole": self.peephole,
                "coupled": self.coupled,
                "truncated_gradient": self.truncated_gradient,
                "block_size != 1": self.block_size != 1,
                "gate_recurrence != 'none'": self.gate_recurrence != "none",
                "hidden_recurrence=False": not self.hidden_recurrence,
                "missing gates": not (self.input_gate and self.forget_gate and self.output_gate),
            }
            bad = [k for k, v in lstm_only.items() if v]
            if bad:
                raise ValueError(
                    f"CellSpec {self.name!r}: options {bad} apply to the 'lstm' family only, "
                    f"got family={self.family!r}"
                )
            if self.layer_norm and not self.reset_after:
                raise ValueError(
                    f"CellSpec {self.name!r}: layer_norm normalises R h as one product, which "
                    "needs the reset gate applied after it, so expected reset_after=True, got "
                    "reset_after=False"
                )
            return
        if self.coupled and (not self.input_gate or self.forget_gate):
            raise ValueError(
                f"CellSpec {self.name!r}: coupled=True means f = 1 - i, so it needs "
                f"input_gate=True and forget_gate=False, got input_gate={self.input_gate}, "
                f"forget_gate={self.forget_gate}"
            )
        if self.gate_recurrence != "none" and not self.gate_names:
            raise ValueError(
                f"CellSpec {self.name!r}: gate_recurrence={self.gate_recurrence!r} needs at "
                "least one gate"
            )

    # -- layout -----------------------------------------------------------------------------

    @property
    def gate_names(self) -> tuple[str, ...]:
        """The gates that carry their own weights (LSTM family), in torch order."""
        if self.family != "lstm":
            return ()
        present = {"i": self.input_gate, "f": self.forget_gate, "o": self.output_gate}
        return tuple(n for n in ("i", "f", "o") if present[n])

    @property
    def block_names(self) -> tuple[str, ...]:
        """Pre-activation row blocks in weight order (see the module docstring)."""
        if self.family == "gru":
            return ("r", "z", "n")
        if self.family == "rnn":
            return ("h",)
        gates = self.gate_names
        return tuple(n for n in ("i", "f", "g", "o") if n == "g" or n in gates)

    def block_widths(self, hidden_size: int) -> dict[str, int]:
        """Rows of each pre-activation block for a layer of ``hidden_size`` cells."""
        return dict(self.layout(hidden_size).widths)

    def layout(self, hidden_size: int, proj_size: int = 0) -> Layout:
        """Every offset of a layer-direction of this cell (:func:`lstmkit.cells.layout.layout`)."""
        from .layout import layout

        return layout(self, hidden_size, proj_size)

    def biased_blocks(self) -> tuple[str, ...]:
        """Pre-activation blocks that carry a bias (when the layer has ``bias=True``)."""
        if self.bias_units == "none":
            return ()
        if self.bias_units == "gates":
            return tuple(n for n in self.block_names if n in self.gate_names)
        return self.block_names

    def gate_recurrent_blocks(self) -> tuple[str, ...]:
        """Pre-activation blocks that receive the previous gate activations."""
        if self.gate_recurrence == "none":
            return ()
        if self.gate_recurrence == "gates":
            return self.gate_names
        return self.block_names

    @property
    def carries_gates(self) -> bool:
        """True when the carry holds the previous gate activations as a third tensor."""
        return self.gate_recurrence != "none"

    @property
    def torch_native(self) -> bool:
        """True when the spec is exactly a torch ``nn.LSTM``/``GRU``/``RNN`` cell."""
        return self.replace(name="") in _TORCH_NATIVE

    def replace(self, **changes: object) -> CellSpec:
        """A copy with some flags changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


def lstm1997(
    block_size: int = 1,
    *,
    output_gate: bool = True,
    input_activation: str = "sigmoid_pm2",
    output_activation: str = "sigmoid_pm1",
    bias_units: str = "all",
    gate_recurrence: str = "all",
    hidden_recurrence: bool = True,
    truncated_gradient: bool = True,
) -> CellSpec:
    """The original LSTM of Hochreiter & Schmidhuber (1997), configurable as in its Table 10.

    No forget gate: ``s_c(t) = s_c(t-1) + y_in(t) * g(net_c(t))``, ``y_c(t) = y_out(t) *
    h(s_c(t))``. Memory cells come in blocks of ``block_size`` sharing one input and one output
    gate; g is in [-2, 2] and h in [-1, 1] (Appendix eqs. 4-5); the hidden layer is fully
    connected, so cells and gates also receive the previous gate activations
    (``gate_recurrence="all"``); one bias vector (``double_bias=False``); and the paper's
    truncated gradient is on.
    """
    return CellSpec(
        name="lstm1997",
        forget_gate=False,
        output_gate=output_gate,
        input_activation=input_activation,
        output_activation=output_activation,
        gate_recurrence=gate_recurrence,
        hidden_recurrence=hidden_recurrence,
        block_size=block_size,
        bias_units=bias_units,
        double_bias=False,
        truncated_gradient=truncated_gradient,
    )


def _preset(base: CellSpec, name: str, doc: str, **changes: object) -> CellSpec:
    return base.replace(name=name, doc=doc, **changes)


_LSTM = CellSpec(name="lstm")
_VANILLA = CellSpec(name="vanilla", peephole=True)
_PEEP = "i,f see p*c(t-1), o sees p*c(t)"

#: Every named preset with its equation. Notation: x input, h(t-1) previous output, c cell
#: state, σ sigmoid, p diagonal peephole weights, "Wx+Rh+b" each gate's pre-activation.
PRESETS: dict[str, CellSpec] = {
    s.name: s
    for s in [
        _preset(_LSTM, "lstm", "i,f,o=σ(Wx+Rh+b); g=tanh(Wx+Rh+b); c=f*c+i*g; h=o*tanh(c) "
                "(torch.nn.LSTM)"),
        _preset(_VANILLA, "peephole", f"lstm with peepholes: {_PEEP} (Gers & Schmidhuber 2000)"),
        _preset(_LSTM, "cifg", "lstm with coupled gates f = 1 - i (CIFG)",
                forget_gate=False, coupled=True),
        _preset(_VANILLA, "vanilla", f"Greff et al. 2017's baseline: lstm + peepholes ({_PEEP})"),
        _preset(_VANILLA, "nig", "vanilla, no input gate: i = 1", input_gate=False),
        _preset(_VANILLA, "nfg", "vanilla, no forget gate: f = 1", forget_gate=False),
        _preset(_VANILLA, "nog", "vanilla, no output gate: o = 1", output_gate=False),
        _preset(_VANILLA, "niaf", "vanilla, no input activation: g(x) = x",
                input_activation="identity"),
        _preset(_VANILLA, "noaf", "vanilla, no output activation: h = o*c",
                output_activation="identity"),
        _preset(_VANILLA, "np", "vanilla, no peepholes (the same equations as lstm)",
                peephole=False),
        _preset(_VANILLA, "cifg_peephole", "vanilla with coupled gates f = 1 - i (Greff's CIFG)",
                forget_gate=False, coupled=True),
        _preset(_VANILLA, "fgr", "vanilla with full gate recurrence: i,f,o also get G a(t-1), "
                "a = [i,f,o](t-1)", gate_recurrence="gates"),
        lstm1997().replace(doc="s=s+i*g(Wx+Rh+Ga+b), g in [-2,2]; y=o*h(s), h in [-1,1]; "
                           "no forget gate; blocks share gates; truncated gradient (1997)"),
        _preset(_LSTM, "layernorm", "lstm with LN(Wx)+LN(Rh)+b and h = o*tanh(LN(c)) "
                "(Ba et al. 2016)", layer_norm=True),
        CellSpec(name="gru", family="gru", doc="r,z=σ(Wx+b+Rh+b'); n=tanh(Wx+b+r*(Rh+b')); "
                 "h=(1-z)*n+z*h (torch.nn.GRU)"),
        CellSpec(name="gru_cho", family="gru", reset_after=False,
                 doc="gru with n=tanh(Wx+b+R(r*h)+b') (Cho et al. 2014, eq. 8)"),
        CellSpec(name="layernorm_gru", family="gru", layer_norm=True,
                 doc="gru with LN(Wx)+b and LN(Rh)+b' in place of Wx+b and Rh+b' "
                 "(haste's LayerNormGRU)"),
        CellSpec(name="rnn", family="rnn", doc="h=tanh(Wx+b+Rh+b') (torch.nn.RNN)"),
        CellSpec(name="rnn_relu", family="rnn", input_activation="relu",
                 doc="h=relu(Wx+b+Rh+b') (torch.nn.RNN, nonlinearity='relu')"),
    ]
}

_TORCH_NATIVE = frozenset(PRESETS[n].replace(name="") for n in ("lstm", "gru", "rnn", "rnn_relu"))


def names(family: str | None = None) -> list[str]:
    """Preset names, optionally only those of one family."""
    return [n for n, s in PRESETS.items() if family is None or s.family == family]


def get_spec(variant: str | CellSpec, family: str | None = None) -> CellSpec:
    """Resolve a preset name or pass a spec through, checking it belongs to ``family``."""
    if isinstance(variant, CellSpec):
        spec = variant
    elif isinstance(variant, str):
        if variant not in PRESETS:
            raise ValueError(
                f"variant: expected one of {names(family)}, or a CellSpec, got {variant!r}"
            )
        spec = PRESETS[variant]
    else:
        raise TypeError(
            f"variant: expected a preset name (str) or a CellSpec, got {type(variant).__name__}"
        )
    if family is not None and spec.family != family:
        raise ValueError(
            f"variant: this layer takes the {family!r} family {names(family)}, got "
            f"{spec.name!r} of family {spec.family!r}"
        )
    return spec
