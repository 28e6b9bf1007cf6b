"""Shared machinery of the task suite: the Task base class, paper data, helpers.

Every task builds time-major batches (``[T, B, ...]``) whose sequences are right-padded with
zeros, draws all its randomness from one ``torch.Generator`` and knows the error function and the
success criterion of the paper it comes from. The paper's published rows and its network/training
setting travel with the task as frozen dataclasses (:class:`PaperReference`,
:class:`PaperSetting`, :class:`Criterion`) so that a reproduction harness reads them instead of
restating them.

Conventions shared by all tasks:

* ``outputs`` given to :meth:`Task.loss` and :meth:`Task.evaluate` are ``[T, B, output_size]``,
  time-major, aligned with ``batch.inputs``. What they are is ``task.output_activation``:
  ``"sigmoid"`` (the 1997 tasks: activations of logistic output units, in [0, 1]),
  ``"identity"`` (raw linear outputs), ``"logits"`` (pre-softmax scores) or ``"softmax"``
  (probabilities over the output units, :meth:`Task.with_softmax_readout`).
* ``loss_kind`` ``"sse"``: the 1997 error E = sum_k (t_k - y_k)^2, summed over output units and
  over the masked steps of a sequence, then averaged over the batch. With one sequence per batch
  its gradient times the learning rate is exactly the paper's on-line weight update.
  ``"mse"``: mean over masked (step, sequence) positions of the squared error summed over units.
  ``"ce"``: cross-entropy averaged over the masked positions (``targets`` are class indices).
  ``"xent"``: cross-entropy -sum_k t_k log y_k of probability outputs (a softmax readout)
  against the float targets (one-hot), averaged over the masked positions; log y_k is the
  readout's own log-softmax where it comes with the outputs, so that a probability that
  underflows in float32 neither makes the loss infinite nor its gradient NaN.
* ``one_hot_targets``: every masked step's target is one one-hot vector over the output units
  (a one-of-N choice), so the task can also be trained through a softmax readout with
  cross-entropy (:meth:`Task.with_softmax_readout`); its success criterion then reads the
  probabilities.
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models import log_probs_of
from .protocol import Batch, TrainingTask, group_width

# ----------------------------------------------------------------------------------------------
# The paper as data


@dataclass(frozen=True)
class Criterion:
    """A stopping or success criterion by name, with its parameters (the trainer implements it).

    Names used in this package (H&S 1997 Table 11 and text, Gers et al. 2000/2002):

    * ``ABS``: absolute error of every output unit below ``beta`` (at ``where``: ``"end"``,
      ``"every_step"`` or ``"spikes"``), for ``successive`` random sequences when given; with
      ``after_training`` those sequences are a test of the net with its weights frozen (H&S
      1997 Exps. 2a/2b: "after training, during 10,000 successive, randomly chosen input
      sequences"), without it the most recent training sequences (Exp. 2c).
    * ``ABS_CLEAN``: H&S Exp. 3c, |output - noise-free target| at most ``beta`` at the end.
    * ``ST1``: at most ``max_wrong`` of ``test_size`` test sequences misclassified.
    * ``ST2``: ST1 and mean absolute test-set error below ``beta``.
    * ``ST3``: average training error below ``beta`` and the ``window`` most recent training
      sequences processed correctly.
    * ``ST3c``: H&S Exp. 3c, none of ``test_size`` test sequences off its noise-free target by
      more than ``tolerance`` and the mean absolute difference below ``beta``.
    * ``RECENT``: fewer than ``n_seq`` of the ``window`` most recent training sequences have an
      absolute error above ``tolerance`` (H&S Exp. 5).
    * ``ALL_CORRECT``: every symbol of every training and test string predicted correctly.
    * ``MAX_SEQUENCES``: stop after ``limit`` training sequences (or streams).
    * ``STREAM``: a training stream ends at the first wrong prediction or after ``limit`` steps.
    * ``PERFECT_STREAMS``: ``streams`` test streams of ``length`` symbols without an error.
    """

    name: str
    params: Mapping[str, object] = field(default_factory=dict, hash=False)
    text: str = ""


def abs_criterion(beta: float, where: str = "end", **more: object) -> Criterion:
    """Table 11's ABS(beta): every output unit's absolute error below ``beta`` at ``where``."""
    return Criterion("ABS", {"beta": beta, "where": where, **more})


@dataclass(frozen=True)
class PaperSetting:
    """The network and training setup a paper used for a task (H&S 1997 Tables 10-11 layout).

    Attributes:
        source: where the setting is stated.
        row: the Table 10 row label (or a descriptive label).
        blocks, cells_per_block: memory blocks and cells per block.
        input_size, output_size: input and output units.
        weights: the paper's weight count, or None where not stated.
        connectivity: ``"F"`` (outputs from cells only; cells and gates from inputs, cells and
            gates), ``"B"`` (every layer from all layers below, H&S 2a/2b), ``"C"`` (cells and
            gates from inputs and cell outputs only, Gers et al.).
        output_from_cells_only: the output layer's only incoming connections are from cells.
        input_shortcut: outputs also receive the inputs directly.
        output_gate, forget_gate, peephole: which gate mechanisms the cells have.
        output_gate_bias, input_gate_bias, forget_gate_bias: per-block initial biases, or
            ``"random"`` (drawn from the initial weight interval) or ``"none"`` (no such bias).
        biased: which units have biases: ``"all"`` (all non-input units, Table 10 "all"),
            ``"hidden"`` (all hidden units, "b1"), ``"gates"`` ("ga"), ``"gates+output"``
            (gates and output units, Gers et al. 2000) or ``"none"``.
        h, g: cell output and cell input squashing, as names of
            :data:`lstmkit.cells.spec.ACTIVATIONS` (``"sigmoid_pm1"`` is the paper's h1 in
            [-1, 1], ``"sigmoid_pm2"`` its g2 in [-2, 2], ``"sigmoid"`` its g1).
        output_activation: the output units' squashing.
        learning_rate, momentum, learning_rate_decay: plain on-line gradient descent unless
            stated otherwise (decay is a factor per time step).
        init_range: initial weights uniform in ``[-init_range, init_range]``.
        reset: activations are reset to zero at the start of every sequence.
        stopping: the stopping criteria, in the order the paper applies them.
        success: the success / correctness criterion (Table 11 "success" column).
        test_set_size: sequences in the test set (None: no test set).
        selection: how training sequences are chosen (Table 11 ``t1``/``t2``/``t3``).
        trials: independent trials the published mean is over.
        sequential_construction: the memory cells join the net only once the error of the net
            without them has stopped decreasing (H&S 1997 Exp. 2a/2b, against the abuse problem).
        construction_tolerance: with sequential construction, the cells join only the output
            units whose largest absolute error on the test sequences is above this at the
            plateau; ``None`` joins them to every output unit.
        input_gate_shift: added to every initial input-to-input-gate weight. With one-hot
            inputs and no bias unit this is the gate's initial bias (§4's remedy for internal
            state drift: "initially bias the input gate towards zero").
        evidence: the reference file's label for these facts (``"V"`` verbatim-checked,
            ``"Q"`` quoted, ``"S"`` secondary).
        notes: anything the fields do not capture.
    """

    source: str
    row: str
    blocks: int
    cells_per_block: int
    input_size: int
    output_size: int
    weights: int | None
    connectivity: str
    learning_rate: float
    init_range: float
    output_gate_bias: tuple[float, ...] | str
    input_gate_bias: tuple[float, ...] | str
    biased: str
    stopping: tuple[Criterion, ...]
    success: Criterion
    test_set_size: int | None
    selection: str = "t3"
    trials: int | None = None
    output_from_cells_only: bool = True
    input_shortcut: bool = False
    output_gate: bool = True
    forget_gate: bool = False
    peephole: bool = False
    forget_gate_bias: tuple[float, ...] | str = "none"
    h: str = "sigmoid_pm1"
    g: str = "sigmoid_pm2"
    output_activation: str = "sigmoid"
    momentum: float = 0.0
    learning_rate_decay: float | None = None
    reset: bool = True
    sequential_construction: bool = False
    construction_tolerance: float | None = None
    input_gate_shift: float = 0.0
    evidence: str = "V"
    notes: str = ""

    @property
    def bias_units(self) -> str:
        """The hidden-layer biases in :class:`lstmkit.CellSpec` terms (``all/gates/none``)."""
        return {"all": "all", "hidden": "all", "gates": "gates", "gates+output": "gates"}.get(
            self.biased, "none"
        )

    @property
    def output_bias(self) -> bool:
        """Whether the output units have a bias."""
        return self.biased in ("all", "gates+output")


@dataclass(frozen=True)
class PaperReference:
    """One published result row.

    Attributes:
        source: paper and table, e.g. ``"H&S 1997 Table 7"``.
        method: ``"LSTM"``, ``"RTRL"``, ... (``setting`` is the LSTM setup where known).
        params: the task parameters the row applies to (a subset of ``task.params``).
        sequences: mean number of training sequences (streams for continual tasks) until the
            stopping criterion; None where none was reached or none is given.
        success_rate: fraction of successful trials.
        trials: trials the means are over.
        weights: weight count of the network in this row.
        wrong, test_size: wrong predictions out of ``test_size`` test sequences.
        mse: test mean squared error.
        criterion: which stopping criterion ``sequences`` refers to (e.g. ``"ST1"``).
        metrics: further published numbers of the row, by name.
        setting: the network/training setup of this row.
        notes: caveats, text of cells that are not numbers (``"> 5,000,000"``).
    """

    source: str
    method: str = "LSTM"
    params: Mapping[str, object] = field(default_factory=dict, hash=False)
    sequences: int | None = None
    success_rate: float | None = None
    trials: int | None = None
    weights: int | None = None
    wrong: int | None = None
    test_size: int | None = None
    mse: float | None = None
    criterion: str | None = None
    metrics: Mapping[str, float] = field(default_factory=dict, hash=False)
    setting: PaperSetting | None = None
    evidence: str = "V"
    notes: str = ""

    def matches(self, params: Mapping[str, object]) -> bool:
        """True when every parameter of this row has the same value in ``params``."""
        return all(params.get(k) == v for k, v in self.params.items())


# ----------------------------------------------------------------------------------------------
# Argument checks: every one names the argument, what was expected and what came.


def int_param(task: str, name: str, value: object, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{task}: {name}: expected an int, got {type(value).__name__} {value!r}")
    if value < low or (high is not None and value > high):
        want = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{task}: {name}: expected an int {want}, got {value}")
    return int(value)


def float_param(task: str, name: str, value: object, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{task}: {name}: expected a float, got {type(value).__name__} {value!r}")
    if not low < float(value) <= high:
        raise ValueError(f"{task}: {name}: expected a float in ({low}, {high}], got {value}")
    return float(value)


def choice_param(task: str, name: str, value: object, choices: Sequence[object]) -> object:
    # Same type too: True == 1 and 2.0 == 2 must not pass for 1 and 2.
    if not any(type(value) is type(c) and value == c for c in choices):
        raise ValueError(f"{task}: {name}: expected one of {list(choices)}, got {value!r}")
    return value


# ----------------------------------------------------------------------------------------------
# Tensor helpers shared by the generators


def one_hot(index: Tensor, n: int) -> Tensor:
    """float32 one-hot of ``index``; negative entries (padding) give all-zero rows."""
    if index.numel() and int(index.max()) >= n:
        raise ValueError(f"index: expected entries below {n}, got {int(index.max())}")
    # Written into one float32 tensor: torch's one_hot builds int64 first, three times the
    # memory, which for thousand-step, thousand-symbol rows (Exp. 2c) is many gigabytes.
    out = torch.zeros(*index.shape, n, dtype=torch.float32)
    valid = (index >= 0).unsqueeze(-1).to(torch.float32)
    return out.scatter_(-1, index.clamp(min=0).unsqueeze(-1), valid)


def step_mask(lengths: Tensor, steps: int) -> Tensor:
    """bool ``[steps, B]``: True on the first ``lengths[b]`` steps of sequence b."""
    return torch.arange(steps).unsqueeze(1) < lengths.unsqueeze(0)


def end_mask(lengths: Tensor, steps: int) -> Tensor:
    """bool ``[steps, B]``: True only on the last step of each sequence."""
    return torch.arange(steps).unsqueeze(1) == (lengths - 1).unsqueeze(0)


def uniform_int(low: int, high: int, size: tuple[int, ...], gen: torch.Generator) -> Tensor:
    """Integers uniform in ``[low, high]`` (both ends included, as the papers state ranges)."""
    return torch.randint(low, high + 1, size, generator=gen)


def at_end(values: Tensor, lengths: Tensor, steps: int) -> Tensor:
    """``[steps, B, K]`` zeros with ``values`` (``[B, K]``) at each sequence's last step."""
    out = torch.zeros(steps, *values.shape, dtype=values.dtype)
    out[lengths - 1, torch.arange(values.shape[0])] = values
    return out


def next_symbol_batch(symbols: Tensor, n: int, info: dict[str, Tensor] | None = None) -> Batch:
    """Next-symbol prediction over symbol strings ``symbols`` (long ``[L, B]``, padded with -1):
    the net reads symbol t and its target is the one-hot symbol t + 1, so a string of k symbols
    gives k - 1 steps (the last symbol is never read)."""
    lengths = (symbols >= 0).sum(0) - 1
    steps = int(lengths.max())
    mask = step_mask(lengths, steps)
    inputs = one_hot(torch.where(mask, symbols[:steps], -1), n)
    return Batch(inputs, one_hot(symbols[1 : steps + 1], n), mask, lengths, info or {})


def last_step(x: Tensor, lengths: Tensor) -> Tensor:
    """``x[lengths[b] - 1, b]`` for every b: ``[B, ...]``."""
    return x[lengths.to(x.device) - 1, torch.arange(x.shape[1], device=x.device)]


# ----------------------------------------------------------------------------------------------
# Task


class Task(TrainingTask):
    """Base class of the suite: validation, seeding, the paper's losses and the ABS correctness
    criterion, on top of :class:`~lstmkit.tasks.protocol.TrainingTask` (what a trainer asks).

    Subclasses set the class attributes, validate their parameters in ``__init__`` (storing them
    with :meth:`_set_params`) and implement :meth:`_sample`.
    """

    name: ClassVar[str] = ""
    #: Every published row of the experiment family; :attr:`references` filters by parameters.
    REFERENCES: ClassVar[tuple[PaperReference, ...]] = ()
    input_size: int
    output_size: int
    output_activation: str = "sigmoid"
    loss_kind: str = "sse"
    #: Whether every masked step's target is one one-hot vector over the output units.
    one_hot_targets: ClassVar[bool] = False
    #: Absolute-error tolerance of the ABS success criterion (None: the task overrides evaluate).
    tolerance: float | None = None
    #: Loss of the best memoryless predictor, where the source defines one.
    baseline: float | None = None
    #: The ``info`` entries of a batch laid out along time (``[T, B, ...]``).
    time_info: ClassVar[tuple[str, ...]] = ()

    def _set_params(self, **params: object) -> None:
        self.params = dict(params)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"make({self.name!r}{', ' if args else ''}{args})"

    # -- data --------------------------------------------------------------------------------

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Batch:
        """``batch_size`` fresh sequences. ``generator=None`` uses torch's default generator, so
        ``torch.manual_seed`` makes it reproducible; the same seeded generator gives the same
        batch."""
        batch_size = int_param(self.name, "batch_size", batch_size, 1)
        batch = self._sample(batch_size, self._generator(generator))
        batch.time_info = tuple(k for k in self.time_info if k in batch.info)
        return batch

    def _generator(self, generator: torch.Generator | None) -> torch.Generator:
        if generator is None:
            return torch.default_generator
        if not isinstance(generator, torch.Generator):
            raise TypeError(
                f"{self.name}: generator: expected a torch.Generator or None, "
                f"got {type(generator).__name__}"
            )
        if generator.device.type != "cpu":
            raise ValueError(
                f"{self.name}: generator: expected a CPU generator (batches are built on the "
                f"CPU; move them with batch.to(device)), got one on {generator.device}"
            )
        return generator

    def _sample(self, batch_size: int, gen: torch.Generator) -> Batch:
        raise NotImplementedError

    # -- paper data --------------------------------------------------------------------------

    @property
    def references(self) -> tuple[PaperReference, ...]:
        """The published rows that apply to this task's parameters."""
        return tuple(r for r in self.REFERENCES if r.matches(self.params))

    @property
    def setting(self) -> PaperSetting | None:
        """The paper's LSTM setting for these parameters (the first matching row that has one)."""
        return next((r.setting for r in self.references if r.setting is not None), None)

    # -- readout -----------------------------------------------------------------------------

    def with_softmax_readout(self) -> Task:
        """This task with softmax outputs trained by cross-entropy: a copy whose
        ``output_activation`` is ``"softmax"`` and ``loss_kind`` ``"xent"``. Data, success
        criterion and error measures are this task's, applied to the probabilities. Only for
        tasks with :attr:`one_hot_targets`; a task that already has this readout is returned
        as it is."""
        if not self.one_hot_targets:
            raise ValueError(f"{self.name}: readout: expected a task whose targets are one-hot "
                             f"(softmax with cross-entropy), got targets that are not")
        if self.output_activation == "softmax" and self.loss_kind == "xent":
            return self
        task = copy.copy(self)
        task.output_activation, task.loss_kind = "softmax", "xent"
        return task

    # -- loss and evaluation -----------------------------------------------------------------

    def _check_outputs(self, outputs: object, batch: Batch) -> Tensor:
        if not isinstance(outputs, Tensor):
            raise TypeError(f"{self.name}: outputs: expected a torch.Tensor, got "
                            f"{type(outputs).__name__}")
        if not isinstance(batch, Batch):
            raise TypeError(f"{self.name}: batch: expected a Batch, got {type(batch).__name__}")
        want = (batch.steps, batch.batch_size, self.output_size)
        if tuple(outputs.shape) != want:
            raise ValueError(
                f"{self.name}: outputs: expected shape {want} ([T, B, output_size], time-major "
                f"like batch.inputs), got {tuple(outputs.shape)}"
            )
        if not outputs.is_floating_point():
            raise TypeError(f"{self.name}: outputs: expected a floating-point tensor, "
                            f"got {outputs.dtype}")
        return outputs

    def loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        """The paper's error function over ``batch.mask`` (see the module docstring)."""
        outputs = self._check_outputs(outputs, batch)
        mask = batch.mask.to(outputs.device)
        if self.loss_kind == "ce":
            per_step = F.cross_entropy(
                outputs.flatten(0, 1), batch.targets.to(outputs.device).flatten(), reduction="none"
            ).view(mask.shape)
            return (per_step * mask).sum() / mask.sum()
        if self.loss_kind == "xent":
            return _xent(outputs, batch.targets.to(outputs), mask).sum() / mask.sum()
        sq = (outputs - batch.targets.to(outputs)).pow(2).sum(-1) * mask
        if self.loss_kind == "sse":
            return sq.sum() / batch.batch_size
        return sq.sum() / mask.sum()

    def group_loss(self, outputs: Tensor, batch: Batch, groups: int) -> Tensor:
        """:meth:`loss` of each of ``groups`` consecutive groups of sequences, in one pass."""
        if type(self).loss is not Task.loss:  # a subclass's own loss: ask it group by group
            return super().group_loss(outputs, batch, groups)
        outputs = self._check_outputs(outputs, batch)
        size = group_width(batch, groups)
        mask = batch.mask.to(outputs.device)
        if self.loss_kind == "ce":
            per_step = F.cross_entropy(
                outputs.flatten(0, 1), batch.targets.to(outputs.device).flatten(), reduction="none"
            ).view(mask.shape) * mask
        elif self.loss_kind == "xent":
            per_step = _xent(outputs, batch.targets.to(outputs), mask)
        else:
            per_step = (outputs - batch.targets.to(outputs)).pow(2).sum(-1) * mask
        total = per_step.sum(0).view(groups, size).sum(1)
        if self.loss_kind == "sse":
            return total / size
        return total / mask.sum(0).view(groups, size).sum(1)

    def group_loss_grad(self, outputs: Tensor, batch: Batch, groups: int
                        ) -> tuple[Tensor, Tensor]:
        """:meth:`group_loss` and its gradient; the squared-error losses and ``"xent"`` by
        their formulas."""
        if self.loss_kind == "ce" or type(self).loss is not Task.loss:
            return super().group_loss_grad(outputs, batch, groups)
        outputs = self._check_outputs(outputs, batch)
        size = group_width(batch, groups)
        mask = batch.mask.to(outputs.device)
        if self.loss_kind == "xent":
            losses, targets, per_column = self._group_xent(outputs, batch, groups)
            # d/dy of -t log y is -t / y: infinite where a target's probability is 0. A softmax
            # readout is differentiated with respect to its logits instead
            # (group_loss_logit_grad), which has no such division.
            return losses, -targets / torch.where(targets > 0, outputs, 1.0) * per_column
        diff = (outputs - batch.targets.to(outputs)) * mask.unsqueeze(-1)
        total = diff.pow(2).sum((0, 2)).view(groups, size).sum(1)
        if self.loss_kind == "sse":
            scale = outputs.new_full((groups,), 1.0 / size)
        else:
            scale = 1.0 / mask.sum(0).view(groups, size).sum(1).to(outputs.dtype)
        per_column = scale.repeat_interleave(size)
        return total * scale, diff * (2.0 * per_column).view(1, -1, 1)

    def group_loss_logit_grad(self, outputs: Tensor, batch: Batch, groups: int
                              ) -> tuple[Tensor, Tensor]:
        """For a softmax readout trained by ``"xent"``: :meth:`group_loss` and the gradient of
        its sum with respect to the softmax's pre-activations, ``scale * (y * sum_k t_k - t)``
        at each masked step. Nothing is divided by a probability, so the gradient stays exact
        where a target's probability underflows towards 0 while its loss is still finite (there
        ``t / y`` through the softmax's Jacobian would overflow to inf * 0 = NaN)."""
        kind = type(self)
        if self.loss_kind != "xent" or kind.loss is not Task.loss or (
                kind.group_loss is not Task.group_loss):
            raise ValueError(f"{self.name}: loss_kind: expected 'xent' of the base task's "
                             f"loss for a gradient with respect to logits, got "
                             f"{self.loss_kind!r}")
        outputs = self._check_outputs(outputs, batch)
        losses, targets, per_column = self._group_xent(outputs, batch, groups)
        return losses, (outputs * targets.sum(-1, keepdim=True) - targets) * per_column

    def _group_xent(self, outputs: Tensor, batch: Batch, groups: int
                    ) -> tuple[Tensor, Tensor, Tensor]:
        """Each group's ``"xent"`` loss, the masked targets ``[T, B, out]`` and each column's
        loss scale ``[1, B, 1]`` (one over its group's masked steps)."""
        size = group_width(batch, groups)
        mask = batch.mask.to(outputs.device)
        targets = batch.targets.to(outputs) * mask.unsqueeze(-1)
        counts = mask.sum(0).view(groups, size).sum(1).to(outputs.dtype)
        total = _xent(outputs, targets, mask).sum(0).view(groups, size).sum(1)
        per_column = (1.0 / counts).repeat_interleave(size).view(1, -1, 1)
        return total / counts, targets, per_column

    def _eval_mask(self, batch: Batch) -> Tensor:
        return batch.mask

    def evaluate(self, outputs: Tensor, batch: Batch) -> Tensor:
        """bool ``[B]``: each sequence correct under the paper's criterion. Default (ABS): the
        absolute error of every output unit is below ``tolerance`` at every evaluated step."""
        outputs = self._check_outputs(outputs, batch).detach()
        err = (outputs - batch.targets.to(outputs)).abs().amax(-1)
        ok = (err < self.tolerance) | ~self._eval_mask(batch).to(outputs.device)
        return ok.all(0)


def _xent(outputs: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """``[T, B]``: -sum_k t_k log y_k at each step of ``mask``, 0 elsewhere. Only the units with
    a positive target take a logarithm, so an output of exactly 0 elsewhere costs nothing and
    gets no infinite slope; where the outputs carry their log-probabilities (a softmax
    readout), those are read instead of taking the logarithm of a probability that may have
    underflowed."""
    targets = targets * mask.unsqueeze(-1)
    log_y = log_probs_of(outputs)
    if log_y is None:
        log_y = torch.where(targets > 0, outputs, 1.0).log()
    else:
        log_y = torch.where(targets > 0, log_y, 0.0)
    return -(targets * log_y).sum(-1)


class EndTask(Task):
    """A task whose only target comes at the end of each sequence (H&S 1997 Exps. 2c-6, the
    adding task). Subclasses return inputs, lengths, the final target ``[B, output_size]`` and
    info from :meth:`_sequences`; the mask is the last step of each sequence."""

    def _sequences(
        self, batch_size: int, gen: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def _sample(self, batch_size: int, gen: torch.Generator) -> Batch:
        inputs, lengths, final, info = self._sequences(batch_size, gen)
        steps = inputs.shape[0]
        inputs = inputs * step_mask(lengths, steps).unsqueeze(-1)
        return Batch(
            inputs.to(torch.float32),
            at_end(final.to(torch.float32), lengths, steps),
            end_mask(lengths, steps),
            lengths,
            info,
        )
