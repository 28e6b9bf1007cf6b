"""A recurrent layer plus a readout: the networks the experiments train.

The 1997 paper's output units read only the memory cells (``input_shortcut=False``), except in
Experiment 2a where they also read the inputs; some nets have no output bias. The readout is a
linear map followed by ``output_activation`` (elementwise, or a softmax over the output units);
:meth:`SequenceModel.num_weights` counts the trainable scalars, which reproduces the paper's
weight counts for the ``lstm1997`` nets.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .cells.reference import activation
from .layers import _Recurrent

_OUTPUT_ACTIVATIONS = ("identity", "sigmoid", "tanh", "softmax")


_LOG_PROBS = "_lstmkit_log_probs"


def with_log_probs(probs: Tensor, log_probs: Tensor) -> Tensor:
    """``probs`` carrying their logarithm as computed from the logits, for a cross-entropy.

    A probability that underflows to a subnormal float (logits about 90 apart) still has a
    finite loss, but ``log`` of it differentiates to ``1 / y``, which overflows, and the
    softmax's backward then makes the gradient NaN where the true one, ``y - t``, is small.
    ``log_softmax`` has no such step, so a loss reads it when it is there
    (:func:`log_probs_of`)."""
    setattr(probs, _LOG_PROBS, log_probs)
    return probs


def log_probs_of(probs: Tensor) -> Tensor | None:
    """The log-probabilities :func:`with_log_probs` attached to ``probs`` (None if none:
    a tensor derived from them by any operation does not keep them)."""
    log_probs = getattr(probs, _LOG_PROBS, None)
    return log_probs if log_probs is not None and log_probs.shape == probs.shape else None


def apply_readout(name: str, z: Tensor, width: int | None = None) -> Tensor:
    """The readout activation ``name`` (one of ``identity``, ``sigmoid``, ``tanh``,
    ``softmax``) of pre-activations ``z``. ``softmax`` normalises each run of ``width``
    consecutive output units on its own (default: the whole last dimension), so that a merged
    network of several trials side by side gives each trial its own distribution."""
    if name == "softmax":
        runs = z if width is None or width == z.shape[-1] else z.unflatten(-1, (-1, width))
        y, log_y = torch.softmax(runs, -1), torch.log_softmax(runs, -1)
        if runs is not z:
            y, log_y = y.flatten(-2), log_y.flatten(-2)
        return with_log_probs(y, log_y)
    if name not in _OUTPUT_ACTIVATIONS:
        raise ValueError(f"output_activation: expected one of {_OUTPUT_ACTIVATIONS}, "
                         f"got {name!r}")
    return activation(name)(z)


class SequenceModel(nn.Module):
    """``layer`` followed by a per-step readout ``act(W [h; x] + b)``.

    Args:
        layer: an :class:`lstmkit.LSTM`/``GRU``/``RNN``.
        output_size: number of output units.
        output_bias: whether the output units have a bias.
        input_shortcut: whether the output units also read the layer's input.
        output_activation: ``"identity"`` (logits or linear outputs), ``"sigmoid"``, ``"tanh"``,
            ``"softmax"`` (probabilities over the output units).
    """

    def __init__(
        self,
        layer: _Recurrent,
        output_size: int,
        *,
        output_bias: bool = True,
        input_shortcut: bool = False,
        output_activation: str = "identity",
    ) -> None:
        super().__init__()
        if not isinstance(layer, _Recurrent):
            raise TypeError(
                f"layer: expected an lstmkit LSTM, GRU or RNN, got {type(layer).__name__}"
            )
        if output_activation not in _OUTPUT_ACTIVATIONS:
            raise ValueError(
                f"output_activation: expected one of {_OUTPUT_ACTIVATIONS}, "
                f"got {output_activation!r}"
            )
        self.layer = layer
        self.input_shortcut = input_shortcut
        self.output_activation = output_activation
        features = (layer.proj_size or layer.hidden_size) * (2 if layer.bidirectional else 1)
        if input_shortcut:
            features += layer.input_size
        ref = next(layer.parameters())
        self.readout = nn.Linear(
            features, output_size, bias=output_bias, device=ref.device, dtype=ref.dtype
        )

    def forward(
        self,
        x: Tensor,
        lengths: Tensor | None = None,
        *,
        hx: Any = None,
        return_state: bool = False,
    ) -> Tensor | tuple[Tensor, Any]:
        """Outputs for every step, laid out like ``x`` (time-major unless ``batch_first``).

        ``hx`` is the layer's initial state; with ``return_state`` the layer's final state is
        returned too, so a stream can be fed in chunks (truncated BPTT, stateful use).
        """
        hidden, state = self.layer(x, hx, lengths=lengths)
        if self.input_shortcut:
            hidden = torch.cat([hidden, x], -1)
        y = apply_readout(self.output_activation, self.readout(hidden))
        return (y, state) if return_state else y

    def num_weights(self) -> int:
        """Number of trainable scalars (the paper's "# weights")."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
