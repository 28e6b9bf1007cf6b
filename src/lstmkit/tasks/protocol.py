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
* :meth:`~TrainingTask.group_loss`: the loss of each of several groups of columns of one batch
  (default: :meth:`~TrainingTask.loss` of each group), which trains independent networks side
  by side (:mod:`lstmkit.train.trials`).
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
            out like the batch: ``[B]``, ``[k, B]``, ``[T, B]`` or ``[T, B, K]`` (the batch is
            the first dimension of a vector, the second of anything else). Only the task that
            made the batch reads them.
        time_info: the names of the ``info`` entries laid out along time (``[T, B, ...]``),
            which :meth:`padded` pads with the steps.
    """

    inputs: Tensor
    targets: Tensor
    mask: Tensor
    lengths: Tensor
    info: dict[str, Tensor] = field(default_factory=dict)
    time_info: tuple[str, ...] = ()

    @property
    def batch_size(self) -> int:
        return self.inputs.shape[1]

    @property
    def steps(self) -> int:
        return self.inputs.shape[0]

    def clone(self) -> Batch:
        """A deep copy (every tensor cloned)."""
        return self._map(lambda t, dim: t.clone(), lambda t: t.clone())

    def to(self, device: torch.device | str) -> Batch:
        """A copy with every tensor (``info`` included) on ``device``."""
        return self._map(lambda t, dim: t.to(device), lambda t: t.to(device))

    def take(self, columns: Tensor) -> Batch:
        """The sequences ``columns`` (long ``[n]``), in that order, as a batch of ``n``."""
        return self._map(lambda t, dim: t.index_select(dim, columns),
                         lambda t: t.index_select(0, columns))

    def columns(self, start: int, stop: int) -> Batch:
        """Sequences ``start:stop`` (views, no copy)."""
        return self._map(lambda t, dim: t.narrow(dim, start, stop - start),
                         lambda t: t[start:stop])

    def padded(self, steps: int) -> Batch:
        """The batch right-padded to ``steps`` time steps (zeros, mask False); every tensor
        laid out along time (``info`` in :attr:`time_info` included) is padded."""
        extra = steps - self.steps
        if extra < 0:
            raise ValueError(f"steps: expected at least the batch's {self.steps}, got {steps}")
        if extra == 0:
            return self

        def pad(t: Tensor) -> Tensor:
            return torch.cat([t, t.new_zeros((extra, *t.shape[1:]))])

        info = {k: pad(v) if k in self.time_info else v for k, v in self.info.items()}
        return Batch(pad(self.inputs), pad(self.targets), pad(self.mask), self.lengths, info,
                     self.time_info)

    @staticmethod
    def cat(batches: list[Batch]) -> Batch:
        """The sequences of ``batches`` side by side (padded to the longest), in order."""
        if not batches:
            raise ValueError("batches: expected at least one Batch, got none")
        steps = max(b.steps for b in batches)
        parts = [b.padded(steps) for b in batches]
        first = parts[0]
        info = {k: torch.cat([p.info[k] for p in parts], 0 if v.dim() == 1 else 1)
                for k, v in first.info.items()}
        return Batch(torch.cat([p.inputs for p in parts], 1),
                     torch.cat([p.targets for p in parts], 1),
                     torch.cat([p.mask for p in parts], 1),
                     torch.cat([p.lengths for p in parts]), info, first.time_info)

    def _map(self, along_batch, on_lengths) -> Batch:
        """Apply ``along_batch(tensor, batch_dim)`` to every tensor laid out like the batch."""
        info = {k: along_batch(v, 0 if v.dim() == 1 else 1) for k, v in self.info.items()}
        return Batch(along_batch(self.inputs, 1), along_batch(self.targets, 1),
                     along_batch(self.mask, 1), on_lengths(self.lengths), info, self.time_info)


def group_width(batch: Batch, groups: int) -> int:
    """Sequences per group when ``batch`` is ``groups`` equal, consecutive groups."""
    size = batch.batch_size // groups if isinstance(groups, int) and groups > 0 else 0
    if size * groups != batch.batch_size or size == 0:
        raise ValueError(f"groups: expected a divisor of the batch size {batch.batch_size}, "
                         f"got {groups}")
    return size


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

    def group_loss(self, outputs: Tensor, batch: Batch, groups: int) -> Tensor:
        """``[groups]``: :meth:`loss` of each of ``groups`` equal, consecutive groups of the
        batch's sequences, as if each group were a batch of its own (independent networks
        trained side by side each see only their own loss).

        Default: :meth:`loss` per group; a task may override it with one computation.
        """
        size = group_width(batch, groups)
        return torch.stack([self.loss(outputs[:, g * size:(g + 1) * size],
                                      batch.columns(g * size, (g + 1) * size))
                            for g in range(groups)])

    def group_loss_grad(self, outputs: Tensor, batch: Batch, groups: int
                        ) -> tuple[Tensor, Tensor]:
        """:meth:`group_loss` and the gradient of its sum with respect to ``outputs``.

        Default: by autograd through :meth:`group_loss`; a task may give the formula."""
        leaf = outputs.detach().requires_grad_(True)
        with torch.enable_grad():
            losses = self.group_loss(leaf, batch, groups)
            (grad,) = torch.autograd.grad(losses.sum(), leaf)
        return losses.detach(), grad

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
