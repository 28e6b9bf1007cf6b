"""Recurrent regularisers of the layers: recurrent dropout, zoneout and weight drop.

They are training options of a layer, not part of its cell: they add no parameters and change no
state-dict name. :class:`Regularisers` holds a layer's rates and checks them; :func:`draw` draws
one layer-direction's :class:`Masks` from torch's generator once per forward call (so
``torch.manual_seed`` reproduces them), and the same masks go to the fused engine or to the
reference, which therefore compute exactly the same thing.

* ``recurrent_dropout=p`` (Gal & Ghahramani 2016, Keras's ``recurrent_dropout``): ``h(t-1)`` is
  multiplied by one mask per sequence and layer-direction, the same at every step, as it enters
  the recurrent product (every product with ``weight_hh``; a GRU's interpolation ``z * h(t-1)``
  uses the unmasked state). Inverted scaling: kept units are divided by ``1 - p``. Off in eval.
* ``zoneout=p`` (Krueger et al. 2017): after each step every unit keeps its previous value with
  probability ``p``, drawn per step, unit and sequence: ``h(t) = d * h(t-1) + (1 - d) * h~(t)``
  with ``h~(t)`` the cell's ordinary update; LSTM-family cells also zone out the cell state, at
  their own rate with ``zoneout=(p_cell, p_hidden)``. In eval the expectation: ``d = p``. The
  ``[T, B, width]`` masks come from a counter-based hash seeded from torch's generator
  (:func:`hash_mask`), computed in one vectorised pass by the engine where it is built and by
  torch operations elsewhere, with the same values either way.
* ``weight_drop=p`` (DropConnect on the recurrent weights, Merity et al. 2018): ``weight_hh``
  (and ``weight_gh`` where the cell carries its gate activations) is multiplied by a fresh
  inverted dropout mask (from the same hash as zoneout's) once per forward call and
  layer-direction; the parameters themselves are
  unchanged and their gradient flows through the mask. Off in eval.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from . import engine
from .cells.layout import Layout

#: The recurrent weights weight drop applies to.
DROPPED_WEIGHTS = ("weight_hh", "weight_gh")


class Masks(NamedTuple):
    """One layer-direction's masks for one call (None: that regulariser is off).

    ``recurrent``: ``[B, out]``, 0 or ``1 / (1 - p)``, multiplies ``h(t-1)`` where it enters the
    recurrent product. ``zone_cell`` ``[T, B, hidden]`` and ``zone_hidden`` ``[T, B, out]``: the
    weight of the previous value, ``c(t) = d * c(t-1) + (1 - d) * c~(t)`` (1 or 0 in training,
    ``p`` in eval).
    """

    recurrent: Tensor | None = None
    zone_cell: Tensor | None = None
    zone_hidden: Tensor | None = None

    @property
    def any(self) -> bool:
        return any(m is not None for m in self)


def _rate(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a float in [0, 1), got {type(value).__name__} "
                        f"{value!r}")
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name}: expected a float in [0, 1), got {value}")
    return float(value)


@dataclass(frozen=True)
class Regularisers:
    """A layer's regularisation rates, each in [0, 1) (0: off)."""

    recurrent_dropout: float = 0.0
    zoneout_cell: float = 0.0
    zoneout_hidden: float = 0.0
    weight_drop: float = 0.0

    @staticmethod
    def of(family: str, recurrent_dropout: object = 0.0, zoneout: object = 0.0,
           weight_drop: object = 0.0) -> Regularisers:
        """Check a layer's arguments: ``zoneout`` is one rate for every state, or for the LSTM
        family ``(p_cell, p_hidden)``."""
        if isinstance(zoneout, tuple):
            if family != "lstm":
                raise TypeError(f"zoneout: expected a float (a {family.upper()} has no cell "
                                f"state), got tuple {zoneout!r}")
            if len(zoneout) != 2:
                raise ValueError(f"zoneout: expected a float or a pair (p_cell, p_hidden), got "
                                 f"a tuple of {len(zoneout)}")
            z_cell, z_hidden = (_rate("zoneout", z) for z in zoneout)
        else:
            z_cell = z_hidden = _rate("zoneout", zoneout)
        if family != "lstm":
            z_cell = 0.0
        return Regularisers(_rate("recurrent_dropout", recurrent_dropout), z_cell, z_hidden,
                            _rate("weight_drop", weight_drop))

    @property
    def zoneout(self) -> float | tuple[float, float]:
        """The ``zoneout`` argument that gives these rates."""
        if self.zoneout_cell == self.zoneout_hidden:
            return self.zoneout_hidden
        return (self.zoneout_cell, self.zoneout_hidden)

    def active(self, training: bool) -> str | None:
        """What is in force for a call in this mode, in words (None: nothing). Dropout and weight
        drop act in training only; zoneout in both modes (its expectation in eval)."""
        parts = []
        if training and self.recurrent_dropout:
            parts.append(f"recurrent_dropout={self.recurrent_dropout}")
        if self.zoneout_cell or self.zoneout_hidden:
            parts.append(f"zoneout={self.zoneout}")
        if training and self.weight_drop:
            parts.append(f"weight_drop={self.weight_drop}")
        return ", ".join(parts) or None

    def draw(self, lay: Layout, steps: int, batch: int, training: bool,
             like: Tensor) -> Masks:
        """Fresh masks for one layer-direction of one call (see :class:`Masks`)."""
        return draw(lay, steps, batch, like, training=training,
                    recurrent_dropout=self.recurrent_dropout, zoneout_cell=self.zoneout_cell,
                    zoneout_hidden=self.zoneout_hidden)


def draw(lay: Layout, steps: int, batch: int, like: Tensor, *, training: bool,
         recurrent_dropout: float = 0.0, zoneout_cell: float = 0.0,
         zoneout_hidden: float = 0.0) -> Masks:
    """One layer-direction's :class:`Masks` for ``steps`` x ``batch``, drawn from torch's
    generator (dtype and device of ``like``)."""
    opts = {"dtype": like.dtype, "device": like.device}
    rec = zc = zh = None
    if training and recurrent_dropout:
        keep = 1.0 - recurrent_dropout
        rec = torch.empty(batch, lay.out_size, **opts).bernoulli_(keep).div_(keep)

    def zone(p: float, width: int) -> Tensor | None:
        if not p:
            return None
        if training:
            return hash_mask((steps, batch, width), p, _seeds(), **opts)
        return torch.full((steps, batch, width), p, **opts)

    if lay.spec.family == "lstm":
        zc = zone(zoneout_cell, lay.hidden_size)
    zh = zone(zoneout_hidden, lay.out_size)
    return Masks(rec, zc, zh)


_U32 = 0xFFFFFFFF


def _seeds() -> tuple[int, int]:
    """Two 32-bit seeds from torch's default generator, so ``torch.manual_seed`` fixes a mask."""
    s0, s1 = torch.randint(0, 1 << 32, (2,), dtype=torch.int64).tolist()
    return int(s0), int(s1)


def _mul32(x: Tensor, c: int) -> Tensor:
    # x * c mod 2^32 with every intermediate below 2^49, so int64 never overflows.
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _U32


def _mix32(x: Tensor) -> Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _threshold(p: float) -> int:
    return min(int(p * 4294967296.0), _U32)


def hash_mask_torch(shape: tuple[int, ...], p: float, seeds: tuple[int, int], *,
                    dtype: torch.dtype, device: torch.device | str) -> Tensor:
    """:func:`hash_mask` in torch operations (any device, traceable)."""
    n = torch.arange(math.prod(shape), dtype=torch.int64, device=device)
    s0, s1 = seeds
    u = _mix32(_mix32((n & _U32) ^ s0) ^ ((s1 + (n >> 32)) & _U32))
    return (u < _threshold(p)).to(dtype).reshape(shape)


def hash_mask(shape: tuple[int, ...], p: float, seeds: tuple[int, int], *,
              dtype: torch.dtype, device: torch.device | str) -> Tensor:
    """A 0/1 mask of ``shape`` whose values are 1 with probability ``p``, independently.

    Value ``n`` (row-major) is 1 when ``u(n) < p * 2**32``, with ``u`` a counter-based hash of
    ``n`` and the two 32-bit ``seeds`` (Wellons' ``lowbias32`` mixer applied twice). The engine
    fills it in one vectorised pass on CPU where it is built; elsewhere (another device, no
    engine, under ``torch.compile``) torch operations compute the same values.
    """
    dev = torch.device(device)
    if (dev.type == "cpu" and dtype in (torch.float32, torch.float64)
            and not torch.compiler.is_compiling() and engine.available()):
        out = torch.empty(shape, dtype=dtype, device=dev)
        return engine._build.load().hash_mask(out, seeds[0], seeds[1], _threshold(p))
    return hash_mask_torch(shape, p, seeds, dtype=dtype, device=dev)


def drop_weights(params: dict[str, Tensor], p: float) -> dict[str, Tensor]:
    """``params`` with the recurrent weights under a fresh DropConnect mask (inverted scaling);
    the gradient reaches the parameters through the mask. The masks are :func:`hash_mask`'s
    (a ``[4H, H]`` matrix has a million values at H = 512, where torch's ``bernoulli_`` would
    cost milliseconds a call)."""
    out = {}
    for k, v in params.items():
        if k in DROPPED_WEIGHTS and v is not None:
            dropped = hash_mask(tuple(v.shape), p, _seeds(), dtype=v.dtype, device=v.device)
            v = v * ((1.0 - dropped) * (1.0 / (1.0 - p)))
        out[k] = v
    return out
