"""Helpers the analysis commands share: the small nets they build, the short training they
give them, the task they probe with, and counting nouns in captions.

``lstmkit gradflow`` and ``lstmkit inspect`` both build one-layer nets of a preset with torch's
initialisation (:func:`build_layer`, :func:`build_model`), optionally train them briefly
(:func:`quick_train`) on a task of a given length (:func:`make_task`).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from .. import tasks
from ..cells.spec import get_spec
from ..layers import GRU, LSTM, RNN, _Recurrent
from ..models import SequenceModel

_LAYERS = {"lstm": LSTM, "gru": GRU, "rnn": RNN}


def _forget_bias_for(cell: str, forget_bias: float | None) -> float | None:
    """``forget_bias`` where the cell has a forget gate (GRU: update gate), else None."""
    spec = get_spec(cell)
    if forget_bias is None:
        return None
    if spec.family == "gru" or (spec.family == "lstm" and (spec.forget_gate or spec.coupled)):
        return forget_bias
    return None


def build_layer(
    cell: str, input_size: int, hidden_size: int, *, forget_bias: float | None = None,
    dtype: torch.dtype = torch.float32, backend: str = "auto",
) -> _Recurrent:
    """A one-layer lstmkit layer of preset ``cell`` with torch's initialisation.

    ``forget_bias`` is applied only to cells that have a forget gate (or GRU's update gate), so
    one setting can be passed for a mixed set of cells.
    """
    spec = get_spec(cell)
    cls = _LAYERS[spec.family]
    kwargs: dict[str, Any] = {"variant": cell, "dtype": dtype, "backend": backend}
    bias = _forget_bias_for(cell, forget_bias)
    if bias is not None:
        kwargs["forget_bias"] = bias
    return cls(input_size, hidden_size, **kwargs)


def build_model(
    cell: str, task: tasks.Task, hidden_size: int, *, forget_bias: float | None = None
) -> SequenceModel:
    """``cell`` with a readout suited to ``task`` (output size and activation)."""
    # The fused engine, not torch's kernel: the same numbers, and torch's multi-threaded RNN
    # kernels slow down a hundredfold on a busy two-core machine.
    layer = build_layer(cell, task.input_size, hidden_size, forget_bias=forget_bias,
                        backend="engine")
    activation = "identity" if task.output_activation == "logits" else task.output_activation
    return SequenceModel(layer, task.output_size, output_activation=activation)


def quick_train(
    model: SequenceModel, task: tasks.Task, *, steps: int, seed: int, batch_size: int = 32,
    lr: float = 3e-3,
) -> list[float]:
    """A short Adam run (gradient norm clipped to 1) on ``task``; returns the loss per step.

    Meant for looking inside a net that has learnt something, not for reproducing a paper.
    """
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    data = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        batch = task.sample(batch_size, generator=data)
        loss = task.loss(model(batch.inputs, batch.lengths), batch)
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        losses.append(loss.item())
    return losses


def make_task(name: str, length: int | None) -> tasks.Task:
    """Task ``name``, with ``T=length`` where the task has a length parameter ``T``."""
    if name not in tasks.TASKS:
        raise ValueError(f"task: expected one of {tasks.names()}, got {name!r}")
    params = inspect.signature(tasks.TASKS[name]).parameters
    if length is not None and "T" in params:
        return tasks.make(name, T=length)
    return tasks.make(name)


def plural(count: int, noun: str) -> str:
    """``"1 seed"``, ``"3 seeds"``: the count with the noun in the right number."""
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


__all__ = ["build_layer", "build_model", "make_task", "plural", "quick_train"]
