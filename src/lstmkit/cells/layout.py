"""Where every pre-activation, gate activation and state lives: one layer's layout, computed once.

A cell's weight matrices stack one row block per pre-activation (LSTM family ``i, f, g, o``, GRU
``r, z, n``, RNN ``h``; absent blocks left out; gate blocks one row per memory block, the
candidate one row per cell). From a :class:`~lstmkit.cells.spec.CellSpec` and a layer's sizes,
:func:`layout` computes every offset that follows from that: the block slices of a step's
pre-activation row, the slices of the biased and the gate-recurrent blocks inside their own
(shorter) parameter vectors, the gate activations carried to the next step, the widths of the
carried state tensors, and the engine's named configuration. The reference step, the engine's
Python glue, the layers, the analysis tools, the paper's initialisation and the benchmark all
read it here; nothing else adds block widths up.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from .spec import CellSpec

#: The names the engine's configuration uses for the LSTM blocks' offsets.
_OFFSET_FIELDS = {"i": "off_i", "f": "off_f", "g": "off_g", "o": "off_o"}
_CARRIED_FIELDS = {"i": "aoff_i", "f": "aoff_f", "o": "aoff_o"}


@dataclass(frozen=True)
class Layout:
    """One layer-direction's layout (see the module docstring). Build it with :func:`layout`."""

    spec: CellSpec
    hidden_size: int
    out_size: int
    #: Rows of each pre-activation block, in weight order.
    widths: dict[str, int]
    #: Each block's slice of the full pre-activation row.
    blocks: dict[str, slice]
    #: Each gate's slice of the carried gate activations (empty when nothing is carried).
    carried: dict[str, slice]

    @property
    def rows(self) -> int:
        """Width of a step's full pre-activation row (every block)."""
        return sum(self.widths.values())

    @property
    def n_blocks(self) -> int:
        """Memory blocks per direction (gate units per gate)."""
        return self.hidden_size // self.spec.block_size

    @property
    def carried_size(self) -> int:
        """Width of the gate activations carried to the next step (0 when none are)."""
        return sum(s.stop - s.start for s in self.carried.values())

    @property
    def gate_units(self) -> int:
        """Units over all gates that have weights (the input width of ``weight_gh``)."""
        return sum(self.widths[g] for g in self.spec.gate_names)

    @property
    def state_sizes(self) -> tuple[int, ...]:
        """Feature size of each carried state tensor: ``(h,)``, ``(h, c)`` or ``(h, c, a)``."""
        if self.spec.family != "lstm":
            return (self.hidden_size,)
        if self.spec.carries_gates:
            return (self.out_size, self.hidden_size, self.carried_size)
        return (self.out_size, self.hidden_size)

    @property
    def recurrent_input(self) -> int:
        """Width of what the per-step GEMM multiplies: h(t-1) and/or the carried gates."""
        width = self.out_size if self.spec.hidden_recurrence else 0
        return width + self.carried_size

    def width_of(self, names: tuple[str, ...]) -> int:
        """Rows of the blocks ``names`` together."""
        return sum(self.widths[n] for n in names)

    def sub_slices(self, names: tuple[str, ...]) -> dict[str, slice]:
        """Each block's slice inside a vector that stacks only ``names`` (in weight order), as
        the biases (biased blocks) and ``weight_gh`` (gate-recurrent blocks) do."""
        out, start = {}, 0
        for name in self.widths:
            if name in names:
                out[name] = slice(start, start + self.widths[name])
                start += self.widths[name]
        return out

    def bias_slice(self, block: str) -> slice:
        """Rows of ``block`` inside ``bias_ih``/``bias_hh`` (which cover the biased blocks)."""
        slices = self.sub_slices(self.spec.biased_blocks())
        if block not in slices:
            raise ValueError(f"block: expected one of the biased blocks {tuple(slices)}, "
                             f"got {block!r}")
        return slices[block]

    def expand(self, part: Tensor, names: tuple[str, ...], dim: int = -1) -> Tensor:
        """Place ``part``, which stacks only ``names``, into every pre-activation row along
        ``dim`` (zeros for the other blocks)."""
        if tuple(names) == tuple(self.widths):
            return part
        dim = dim % part.dim()
        pieces, start = [], 0
        for name, width in self.widths.items():
            if name in names:
                pieces.append(part.narrow(dim, start, width))
                start += width
            else:
                shape = list(part.shape)
                shape[dim] = width
                pieces.append(part.new_zeros(shape))
        return torch.cat(pieces, dim)

    def select(self, full: Tensor, names: tuple[str, ...], dim: int = -1) -> Tensor:
        """The inverse of :meth:`expand`: only the rows of ``names`` along ``dim``."""
        if tuple(names) == tuple(self.widths):
            return full
        return torch.cat([full.narrow(dim, self.blocks[n].start, self.widths[n])
                          for n in self.widths if n in names], dim)

    def engine_config(self, reverse: bool) -> dict[str, object]:
        """The layout's part of the engine's named configuration (see ``csrc/config.h``): sizes
        and offsets. The engine fills the fields named like a :class:`CellSpec` attribute
        (``peephole``, ``gate_activation``, ...) from the spec itself."""
        cfg: dict[str, object] = {"hidden": self.hidden_size, "reverse": reverse}
        if self.spec.family != "lstm":
            return cfg
        cfg.update(out=self.out_size, rows=self.rows, carried=self.carried_size,
                   proj=self.out_size != self.hidden_size)
        for name, field in _OFFSET_FIELDS.items():
            cfg[field] = self.blocks[name].start if name in self.blocks else -1
        for name, field in _CARRIED_FIELDS.items():
            cfg[field] = self.carried[name].start if name in self.carried else -1
        return cfg


@functools.lru_cache(maxsize=256)
def layout(spec: CellSpec, hidden_size: int, proj_size: int = 0) -> Layout:
    """The layout of one layer-direction of ``spec`` with ``hidden_size`` cells (and an output
    projection to ``proj_size`` when it is positive)."""
    if not isinstance(hidden_size, int) or hidden_size < 0:
        raise ValueError(f"hidden_size: expected a non-negative int, got {hidden_size!r}")
    if hidden_size % spec.block_size:
        raise ValueError(f"hidden_size: expected a multiple of the spec's block_size "
                         f"{spec.block_size}, got {hidden_size}")
    n_blocks = hidden_size // spec.block_size
    widths = {name: (hidden_size if name in ("g", "r", "z", "n", "h") else n_blocks)
              for name in spec.block_names}
    blocks, start = {}, 0
    for name, width in widths.items():
        blocks[name] = slice(start, start + width)
        start += width
    carried: dict[str, slice] = {}
    if spec.carries_gates:
        start = 0
        for gate in spec.gate_names:
            carried[gate] = slice(start, start + widths[gate])
            start += widths[gate]
    out_size = proj_size if proj_size > 0 else hidden_size
    return Layout(spec, hidden_size, out_size, widths, blocks, carried)
