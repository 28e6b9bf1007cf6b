"""What a layer call looks like from outside, turned into the ``[T, B, features]`` the scans run on,
and back: batched, unbatched, ``batch_first`` and ``PackedSequence`` input, and the initial state.

:func:`read_input` checks and normalises the input; the :class:`InputForm` it returns puts
outputs (and per-step cell states) back into the caller's form with :meth:`InputForm.restore`.
:func:`initial_state` checks or creates the carried state tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import _checks


@dataclass(frozen=True)
class InputForm:
    """How the caller's input was shaped, so that outputs can be returned the same way."""

    batched: bool
    batch_first: bool
    packed: PackedSequence | None = None

    def restore(self, seq: Tensor, lengths: Tensor | None) -> Any:
        """``seq`` (``[T, B, F]``) in the caller's form: packed, batch-first or unbatched."""
        if self.packed is not None:
            return _repack(seq, lengths, self.packed)
        if not self.batched:
            return seq.squeeze(1)
        return seq.transpose(0, 1) if self.batch_first else seq

    def restore_state(self, states: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """Final states without the batch dimension for unbatched input."""
        return states if self.batched else tuple(s.squeeze(1) for s in states)


def read_input(
    input: Tensor | PackedSequence, lengths: Tensor | list[int] | None, batch_first: bool,
    input_size: int, ref: Tensor,
) -> tuple[Tensor, Tensor | None, InputForm]:
    """``(x [T, B, in], lengths or None, form)`` for a layer whose parameters are like ``ref``."""
    if isinstance(input, PackedSequence):
        if lengths is not None:
            raise ValueError("lengths: a PackedSequence carries its own lengths; got both")
        x, packed_lengths = pad_packed_sequence(input)
        form = InputForm(batched=True, batch_first=False, packed=input)
        lengths_out: Tensor | None = packed_lengths
    else:
        _checks.tensor("input", input)
        if input.dim() not in (2, 3):
            raise ValueError(
                f"input: expected a 3-D (batched) or 2-D (unbatched) tensor, "
                f"got {input.dim()}-D with shape {tuple(input.shape)}"
            )
        batched = input.dim() == 3
        x = input if batched else input.unsqueeze(1)
        if batched and batch_first:
            x = x.transpose(0, 1)
        form = InputForm(batched=batched, batch_first=batch_first)
        lengths_out = None
    x = _autocast_input(x, ref)
    _checks.same_float("input", x, ref.dtype, ref.device)
    if x.shape[-1] != input_size:
        raise ValueError(f"input: expected {input_size} features (input_size), got {x.shape[-1]}")
    if lengths is not None:
        if torch.compiler.is_compiling() and isinstance(lengths, Tensor):
            lengths_out = _compiled_lengths(lengths, x.shape[1], x.shape[0])
        else:
            lengths_out = _checks.lengths(lengths, x.shape[1], x.shape[0])
    return x, lengths_out, form


def _compiled_lengths(lengths: Tensor, batch: int, steps: int) -> Tensor:
    """:func:`lstmkit._checks.lengths` inside a compiled graph, which cannot branch on tensor
    values: the range check becomes an assertion the graph makes when it runs."""
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise TypeError(f"lengths: expected an integer tensor, got dtype {lengths.dtype}")
    if lengths.dim() != 1 or lengths.shape[0] != batch:
        raise ValueError(f"lengths: expected {batch} lengths (one per sequence in the batch), "
                         f"got shape {tuple(lengths.shape)}")
    out = lengths.detach().to("cpu", torch.int64)
    torch._assert_async(((out >= 1) & (out <= steps)).all(),
                        "lengths: expected every length in [1, the input's time steps]")
    return out


def initial_state(hx: Any, sizes: tuple[int, ...], rows: int, x: Tensor, form: InputForm,
                  lstm: bool, ref: Tensor) -> tuple[Tensor, ...]:
    """The carried state tensors ``[rows, B, size]`` each: ``hx`` checked, or zeros.

    ``sizes`` are the feature sizes of h, c and the carried gate activations (as far as the cell
    has them); ``hx`` gives every one of them. A cell that carries its gate activations (a third
    size) refuses ``(h_0, c_0)`` alone: starting the gate activations from zero would silently
    change the outputs of a continued sequence.
    """
    batch = x.shape[1]
    if hx is None:
        return tuple(x.new_zeros(rows, batch, n) for n in sizes)
    if not isinstance(hx, (Tensor, tuple, list)):
        raise TypeError(f"hx: expected a tensor or a tuple of tensors, got {type(hx).__name__}")
    if lstm and isinstance(hx, Tensor):
        raise TypeError("hx: expected a tuple (h_0, c_0) for an LSTM, got a single tensor")
    given = (hx,) if isinstance(hx, Tensor) else tuple(hx)
    names = ["h_0", "c_0", "a_0"][: len(sizes)]
    if len(given) != len(sizes):
        note = ""
        if len(sizes) == 3:
            note = ("; this cell carries its previous gate activations as a third state "
                    "tensor: pass all three states a previous call returned, or None to start "
                    "from zeros")
        raise ValueError(f"hx: expected {len(sizes)} tensors ({', '.join(names)}), "
                         f"got {len(given)}{note}")
    states = []
    for name, state, size in zip(names, given, sizes):
        _checks.tensor(f"hx ({name})", state)
        state = _autocast_input(state, ref)
        _checks.same_float(f"hx ({name})", state, ref.dtype, ref.device)
        expected = (rows, batch, size) if form.batched else (rows, size)
        _checks.shape(f"hx ({name})", state, expected)
        states.append(state if form.batched else state.unsqueeze(1))
    return tuple(states)


_AUTOCAST_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _autocast_input(value: Tensor, ref: Tensor) -> Tensor:
    """Under ``torch.autocast``, ``value`` in the parameters' dtype.

    An autocast region hands a layer reduced-precision tensors (another op's output), which
    torch's RNN layers accept; the recurrence then computes in the parameters' dtype (see
    :mod:`lstmkit.stack`). Outside autocast a dtype mismatch is an error, as in torch.
    """
    if (value.dtype != ref.dtype and value.dtype in _AUTOCAST_DTYPES
            and ref.dtype in _AUTOCAST_DTYPES and value.device == ref.device
            and torch.amp.is_autocast_available(value.device.type)
            and torch.is_autocast_enabled(value.device.type)):
        return value.to(ref.dtype)
    return value


def _repack(out: Tensor, lengths: Tensor | None, like: PackedSequence) -> PackedSequence:
    """Pack padded outputs with exactly the input ``PackedSequence``'s layout."""
    assert lengths is not None
    order = like.sorted_indices if like.sorted_indices is not None else torch.arange(out.shape[1])
    order = order.to(out.device)
    data = pack_padded_sequence(
        out.index_select(1, order), lengths.index_select(0, order.cpu()), enforce_sorted=True
    ).data
    return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)
