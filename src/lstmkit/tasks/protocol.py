"""What a trainer may ask of a task: the :class:`Batch` it draws and the :class:`TrainingTask`
base that declares every question, with a default answer for each optional one.

:class:`~lstmkit.train.Trainer` and its stopping rules only call what :class:`TrainingTask`
declares; they never look for optional methods or read a task's own ``info`` entries. A task
implements the required part (:meth:`~TrainingTask.sample`, :meth:`~TrainingTask.loss`,
:meth:`~TrainingTask.evaluate`) and overrides an optional one only where its experiment differs
from the default:

* :attr:`~TrainingTask.params`: the parameters that make two tasks the same (default: none);
  a checkpoint records them and resuming compares them.
* :meth:`~TrainingTask.train_batch`, :meth:`~TrainingTask.test_batch`: fixed training and test
  splits (default: None, no fixed split; tests draw fresh sequences from ``sample``).
* :meth:`~TrainingTask.sequence_errors`: each sequence's squared and absolute error, which the
  stopping rules bound (default: against ``batch.targets`` over the masked steps).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import torch
from torch import Tensor


@dataclass
class Batch:
    """One batch of sequences, time-major and right-padded with zeros.

    Attributes:
        inputs: float32 ``[T, B, input_size]``.
        targets: ``[T, B, output_size]`` float32, aligned with the inputs (``targets[t]`` is what
            the net should output after reading ``inputs[t]``); class indices, long ``[T, B]``,
            for cross-entropy tasks (``copy``).
        mask: bool ``[T, B]``, the steps where the loss applies (False on padding).
        lengths: long ``[B]``, the true length of each sequence.
        info: task-specific extras (classes, marker positions, clean targets, ...), tensors laid
            out like the batch: ``[B]``, ``[k, B]``, ``[T, B]`` or ``[T, B, K]``. Only the task
            that made the batch reads them.
    """

    inputs: Tensor
    targets: Tensor
    mask: Tensor
    lengths: Tensor
    info: dict[str, Tensor] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.inputs.shape[1]

    @property
    def steps(self) -> int:
        return self.inputs.shape[0]

    def clone(self) -> Batch:
        """A deep copy (every tensor cloned)."""
        return Batch(self.inputs.clone(), self.targets.clone(), self.mask.clone(),
                     self.lengths.clone(), {k: v.clone() for k, v in self.info.items()})

    def to(self, device: torch.device | str) -> Batch:
        """A copy with every tensor (``info`` included) on ``device``."""
        return Batch(
            self.inputs.to(device),
            self.targets.to(device),
            self.mask.to(device),
            self.lengths.to(device),
            {k: v.to(device) for k, v in self.info.items()},
        )


class TrainingTask(abc.ABC):
    """Everything a trainer and its stopping rules may ask of a task.

    Subclasses implement :meth:`sample`, :meth:`loss` and :meth:`evaluate`; the other members
    have defaults that describe a task drawn afresh for every batch and test, with no fixed
    splits and errors measured against ``batch.targets``.
    """

    #: The parameters that identify the task (its constructor's arguments); plain values.
    params: Mapping[str, object] = MappingProxyType({})

    # -- required ----------------------------------------------------------------------------

    @abc.abstractmethod
    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Batch:
        """``batch_size`` fresh training sequences, all randomness drawn from ``generator``."""

    @abc.abstractmethod
    def loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        """The scalar loss of ``outputs`` (``[T, B, output_size]``) on ``batch``, to minimise."""

    @abc.abstractmethod
    def evaluate(self, outputs: Tensor, batch: Batch) -> Tensor:
        """bool ``[B]``: whether each sequence of ``batch`` is correct under the task's
        success criterion."""

    # -- optional, with defaults -------------------------------------------------------------

    def train_batch(self) -> Batch | None:
        """The whole fixed training set as one batch, or None (the default) where training
        sequences are drawn afresh. With both fixed splits, a test-set stopping rule must hold
        on the training and the test set together."""
        return None

    def test_batch(self) -> Batch | None:
        """The whole fixed test set as one batch, or None (the default) where tests use fresh
        sequences drawn from :meth:`sample`."""
        return None

    def sequence_errors(self, outputs: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        """Each sequence's error over its masked steps: (summed squared error ``[B]``, mean
        absolute error ``[B]``), which the stopping rules bound.

        Default: against ``batch.targets``; for class targets (cross-entropy tasks) both are the
        fraction of masked steps whose arg-max output is not the target class.
        """
        mask = batch.mask.to(outputs.device)
        counted = mask.sum(dim=0).clamp_min(1)
        if not batch.targets.is_floating_point():
            wrong = (outputs.argmax(-1) != batch.targets.to(outputs.device)) & mask
            rate = wrong.sum(dim=0).to(outputs.dtype) / counted
            return rate, rate
        fmask = mask.unsqueeze(-1).to(outputs.dtype)
        diff = (outputs - batch.targets.to(outputs)) * fmask
        squared = diff.pow(2).sum(dim=(0, 2))
        return squared, diff.abs().sum(dim=(0, 2)) / (counted * outputs.shape[-1])
