"""Train a :class:`~lstmkit.models.SequenceModel` on a task, counting sequences as the paper did.

The trainer draws batches from a task, backpropagates through time over masked, variable-length
batches (or in detached chunks for streams: truncated BPTT), clips gradients, and steps plain SGD
(the paper's online gradient descent, batch 1) or Adam. It counts training sequences, feeds the
experiment's stopping criterion, checkpoints atomically every ``checkpoint_every`` sequences, and
with ``resume=True`` continues a killed run to the same result as an uninterrupted one: the
model, optimiser, criterion, counters and every random generator are in the checkpoint.

This module is the training loop. Beside it: :mod:`.config` (what a run is told and what it
reached), :mod:`.identity` (the record that makes a checkpoint this run's), :mod:`.state_check`
(every field of a checkpoint checked before a resumed run adopts it), :mod:`.progress` (the
progress bar), :mod:`.criteria` (the stopping rules) and :mod:`.checkpoint` (atomic files).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..tasks.protocol import Batch, TrainingTask
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import TrainConfig, TrainResult
from .criteria import Criterion, RecentSequences, TestSet
from .identity import first_non_plain, identity_record
from .progress import progress_bar, show_loss
from .state_check import StateCheck, one_line

__all__ = ["TrainConfig", "TrainResult", "Trainer", "TrainingDiverged"]


#: Fresh test sequences drawn and evaluated at a time.
_TEST_PART = 1000


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint (if any) is kept."""


class Trainer:
    """Trains ``model`` on ``task`` under ``config`` until ``criterion`` holds or the budget ends.

    Args:
        model: maps ``(inputs, lengths)`` to outputs ``[T, B, output_size]``.
        task: a :class:`~lstmkit.tasks.protocol.TrainingTask`, such as any task of
            :mod:`lstmkit.tasks`: the trainer asks it only what that protocol declares.
        config: the :class:`TrainConfig`.
        criterion: a stopping rule from :mod:`lstmkit.train.criteria`, or a mapping of named
            rules (milestones such as the paper's ST1 then ST2: each one's first sequence count
            is recorded and training stops when all hold), or None (budget only).
        checkpoint: path of the checkpoint file (needed for ``checkpoint_every`` and resume).
        meta: plain values (str, int, float, bool, None, and lists, tuples and dicts of them)
            stored in every checkpoint; resuming needs a checkpoint with the same ``meta``.
        progress: show a progress bar (tqdm) when it is installed. When its stream (stderr) is
            not a terminal it redraws at most once a minute, as a line per redraw in a log.
        callbacks: objects with ``after_step(trainer, loss, sequences)``, ``state_dict()`` and
            ``load_state_dict()`` (their state is checkpointed), called after every update, e.g.
            :class:`~lstmkit.train.construction.SequentialConstruction`.

    Every checkpoint records the trainer's :meth:`identity` (its config, optimiser, stopping
    rules, callbacks, the model's structure and the task) and ``meta``. ``run(resume=True)``
    continues only a checkpoint whose identity and ``meta`` equal this trainer's and whose every
    field is well-formed and in range; anything else raises
    :class:`~lstmkit.train.checkpoint.CheckpointError` naming the file and the first field that
    is wrong, and leaves the trainer as it was.
    """

    def __init__(
        self,
        model: nn.Module,
        task: TrainingTask,
        config: TrainConfig,
        criterion: Criterion | Mapping[str, Criterion] | None = None,
        *,
        checkpoint: str | Path | None = None,
        meta: dict[str, Any] | None = None,
        progress: bool = False,
        callbacks: list[Any] | None = None,
    ) -> None:
        if not isinstance(task, TrainingTask):
            raise TypeError(f"task: expected a lstmkit.tasks.TrainingTask (sample, loss, "
                            f"evaluate), got {type(task).__name__}")
        self.model, self.task, self.config = model, task, config
        self.callbacks = list(callbacks or [])
        if criterion is None:
            self.criteria: dict[str, Criterion] = {}
        elif isinstance(criterion, Mapping):
            self.criteria = dict(criterion)
        else:
            self.criteria = {"criterion": criterion}
        for name, rule in self.criteria.items():
            if not isinstance(rule, (RecentSequences, TestSet)):
                raise TypeError(f"criterion ({name}): expected a RecentSequences or TestSet, "
                                f"got {type(rule).__name__}")
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        if config.checkpoint_every and self.checkpoint is None:
            raise ValueError("checkpoint: checkpoint_every > 0 needs a checkpoint path")
        if meta is not None and not isinstance(meta, Mapping):
            raise TypeError(f"meta: expected None or a dict, got {type(meta).__name__}")
        self.meta = dict(meta or {})
        # A value that weights-only loading refuses would make every checkpoint unreadable.
        bad = first_non_plain(self.meta, "meta")
        if bad is not None:
            raise TypeError(f"{bad[0]}: expected str, int, float, bool, None, or a list, tuple "
                            f"or dict of them, got {type(bad[1]).__name__}")
        self.progress = progress
        self.progress_desc: str | None = None
        self.progress_position = 0
        params = list(model.parameters())
        if config.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(params, lr=config.lr)
        else:
            self.optimizer = torch.optim.Adam(params, lr=config.lr)
        self.data_gen = torch.Generator().manual_seed(config.seed)
        self.test_gen = torch.Generator().manual_seed(config.seed + 1_000_003)
        self.sequences = 0
        self.success_at: int | None = None
        self.milestones: dict[str, int] = {}
        self.last_state: Any = None  # truncated BPTT: the state carried out of the last batch
        self.curve: list[dict[str, float]] = []
        self._window: list[tuple[float, float]] = []
        #: Called before a checkpoint is taken, by whoever keeps state outside this trainer
        #: (:mod:`lstmkit.train.trials` keeps the optimiser's state of many trials together).
        self.before_save: Any = None
        self._bar: Any = None
        self._start = time.perf_counter()

    # -- checkpoints -----------------------------------------------------------------------

    def identity(self) -> dict[str, Any]:
        """What makes a checkpoint this trainer's: the config (all but ``checkpoint_every``),
        optimiser, stopping rules, callbacks, the model's modules, cell specs and parameter
        shapes, and the task's class and parameters. Stored in every checkpoint and compared on
        resume."""
        return identity_record(self.config, self.optimizer, self.criteria, self.callbacks,
                               self.model, self.task)

    def state_dict(self) -> dict[str, Any]:
        if self.before_save is not None:
            self.before_save()
        return {
            "identity": self.identity(),
            "meta": self.meta,
            # Copies: a parameter may be a view of a larger tensor (trials trained together),
            # whose whole storage torch.save would otherwise write.
            "model": {k: v.clone() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "data_gen": self.data_gen.get_state(),
            "test_gen": self.test_gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "sequences": self.sequences,
            "success_at": -1 if self.success_at is None else self.success_at,
            "milestones": dict(self.milestones),
            "curve": self.curve,
            "window": self._window,
            "criteria": {name: rule.state_dict() for name, rule in self.criteria.items()},
            "callbacks": [cb.state_dict() for cb in self.callbacks],
        }

    def load_state_dict(self, state: dict[str, Any], *,
                        source: str | Path | None = None) -> None:
        """Continue from ``state`` (a :meth:`state_dict`, e.g. read from a checkpoint).

        Every field is checked before anything changes: a ``state`` of another run (identity
        or ``meta``), or with a missing, mistyped, misshapen or out-of-range field raises
        :class:`~lstmkit.train.checkpoint.CheckpointError`, whose message starts with ``source``
        (default: the checkpoint path), and leaves the trainer as it was (callbacks other than
        :class:`~lstmkit.train.construction.SequentialConstruction` check their own state while
        loading it, before the trainer's state changes).
        """
        if source is None:
            source = self.checkpoint if self.checkpoint is not None else "checkpoint"
        check = StateCheck(self, state, source)
        checked = check.run()
        try:
            self._apply(checked)
        except CheckpointError:
            raise
        except Exception as err:  # noqa: BLE001 - the checks above should leave nothing here
            raise CheckpointError(source, f"could not be restored: {one_line(err)}") from None

    def _apply(self, checked: dict[str, Any]) -> None:
        """Install a state that :class:`~lstmkit.train.state_check.StateCheck` has accepted."""
        # Callbacks first: theirs is the only state checked by its owner, while loading.
        for i, (cb, cb_state) in enumerate(zip(self.callbacks, checked["callbacks"])):
            try:
                cb.load_state_dict(cb_state)
            except Exception as err:  # noqa: BLE001 - a callback's own check of its state
                raise CheckpointError(checked["source"], f"callbacks[{i}]: {one_line(err)}"
                                      ) from None
        self.model.load_state_dict(checked["model"])
        self.optimizer.load_state_dict(checked["optimizer"])
        self.data_gen.set_state(checked["data_gen"])
        self.test_gen.set_state(checked["test_gen"])
        torch.set_rng_state(checked["torch_rng"])
        self.sequences = checked["sequences"]
        self.success_at = checked["success_at"]
        self.milestones = checked["milestones"]
        self.curve = checked["curve"]
        self._window = checked["window"]
        for name, rule in self.criteria.items():
            rule.load_state_dict(checked["criteria"][name])

    def save(self) -> None:
        if self.checkpoint is not None:
            # Never replace the last good checkpoint with weights a bad update has spoiled.
            for name, param in self.model.named_parameters():
                if not bool(torch.isfinite(param).all()):
                    raise self._diverged(f"weight {name} became non-finite")
            save_checkpoint(self.checkpoint, self.state_dict())

    # -- training --------------------------------------------------------------------------

    def _forward(self, batch: Batch) -> Tensor:
        return self.model(batch.inputs, batch.lengths)

    def _step(self, batch: Batch) -> tuple[Tensor, float]:
        cfg = self.config
        if cfg.tbptt is None:
            outputs = self._forward(batch)
            loss = self.task.loss(outputs, batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self._clip_and_step(loss)
            return outputs.detach(), float(loss.detach())
        # Truncated BPTT: chunks of the stream, state carried over and detached.
        state, outs, total = None, [], 0.0
        for start in range(0, batch.inputs.shape[0], cfg.tbptt):
            chunk = _time_slice(batch, start, start + cfg.tbptt)
            # A chunk where no step carries a target (the adding problem's first steps) only
            # moves the state on: a masked mean over nothing would be NaN, and there is nothing
            # to learn from it.
            has_target = bool(chunk.mask.any())
            previous = state
            with torch.set_grad_enabled(has_target):
                out, state = self.model(chunk.inputs, chunk.lengths, hx=state,
                                        return_state=True)
            state = _detach(state)
            ended = batch.lengths <= start
            if previous is not None and bool(ended.any()):
                # Sequences that ended in an earlier chunk ran one padding step here (layers
                # need a length >= 1); their state stays what it was at their end.
                state = _keep_where(ended.to(out.device), previous, state)
            outs.append(out.detach())
            if not has_target:
                continue
            loss = self.task.loss(out, chunk)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self._clip_and_step(loss)
            total += float(loss.detach())
        self.last_state = state  # the carried state at each sequence's end, for inspection
        return torch.cat(outs), total

    def _clip_and_step(self, loss: Tensor) -> None:
        if not torch.isfinite(loss):
            raise self._diverged(f"loss became {float(loss.detach())}")
        if self.config.clip_norm is not None:
            norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_norm)
            # A finite loss can still have an overflowing gradient; stepping on it would turn
            # every weight into NaN one step before the loss shows it. The norm is free here.
            if not torch.isfinite(norm):
                raise self._diverged(f"gradient norm became {float(norm)}")
        self.optimizer.step()

    def _diverged(self, what: str) -> TrainingDiverged:
        """The error for a non-finite loss/gradient/weight, naming where it happened."""
        if self.checkpoint is None:
            kept = "no checkpoint is written (no checkpoint path)"
        elif self.checkpoint.exists():
            kept = f"the last good checkpoint is kept at {self.checkpoint}"
        else:
            kept = f"no checkpoint was written yet to {self.checkpoint}"
        return TrainingDiverged(
            f"training diverged: {what} in the batch after {self.sequences} training "
            f"sequences; {kept}"
        )

    def _evaluate(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Correctness, squared and absolute errors per sequence, and the loss, without grad."""
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            outputs = self._forward(batch)
            correct = self.task.evaluate(outputs, batch)
            squared, absolute = self.task.sequence_errors(outputs, batch)
            loss = self.task.loss(outputs, batch)
        self.model.train(was_training)
        return correct, squared, absolute, loss

    def _test(self, size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Evaluate on the task's fixed test split, or on ``size`` fresh sequences."""
        fixed = self.task.test_batch()
        if fixed is not None:
            return self._evaluate(fixed)
        # In parts: 10,000 sequences of Exp. 2b at once would take about a gigabyte.
        parts, losses = [], []
        for start in range(0, size, _TEST_PART):
            n = min(_TEST_PART, size - start)
            *found, loss = self._evaluate(self.task.sample(n, generator=self.test_gen))
            parts.append(found)
            losses.append(loss * n)
        correct, squared, absolute = (torch.cat(t) for t in zip(*parts))
        return correct, squared, absolute, sum(losses) / size

    def _check_test_rule(self, rule: TestSet) -> bool:
        """A test-set rule; with both fixed splits it must hold on training and test set."""
        train, test = self.task.train_batch(), self.task.test_batch()
        if train is not None and test is not None:
            parts = [self._evaluate(b) for b in (train, test)]
            correct = torch.cat([c for c, _, _, _ in parts])
            absolute = torch.cat([a for _, _, a, _ in parts])
        else:
            correct, _, absolute, _ = self._test(rule.size)
        return rule.judge(correct.tolist(), absolute.tolist())

    def _update_criteria(self, correct: list[bool], squared: list[float] | None,
                         check_tests: bool) -> None:
        for name, rule in self.criteria.items():
            if isinstance(rule, RecentSequences):
                held = rule.update(correct, squared)
            elif check_tests and name not in self.milestones:
                held = self._check_test_rule(rule)
            else:
                continue
            if held and name not in self.milestones:
                self.milestones[name] = self.sequences
        if self.criteria and len(self.milestones) == len(self.criteria):
            self.success_at = max(self.milestones.values())

    @property
    def needs_errors(self) -> bool:
        """Whether :meth:`record` needs each sequence's squared error (a training-stream rule
        bounds it)."""
        return any(isinstance(r, RecentSequences) for r in self.criteria.values())

    @property
    def finished(self) -> bool:
        """Whether training is over: every stopping rule holds or the budget is spent."""
        return self.success_at is not None or self.sequences >= self.config.max_sequences

    def run(self, *, resume: bool = False) -> TrainResult:
        """Train until every criterion holds or ``max_sequences``; then test on fresh data."""
        cfg = self.config
        self.begin(resume=resume)
        while not self.finished:
            batch = self.task.sample(cfg.batch_size, generator=self.data_gen)
            outputs, loss = self._step(batch)
            correct = self.task.evaluate(outputs, batch).tolist()
            squared = (self.task.sequence_errors(outputs, batch)[0].tolist()
                       if self.needs_errors else None)
            self.record(loss, correct, squared)
            self.checkpoint_if_due()
        return self.finish()

    def begin(self, *, resume: bool = False) -> None:
        """Start (or with ``resume`` continue from the checkpoint) a run of :meth:`record`
        calls; :meth:`run` is ``begin``, a :meth:`record` per batch, then :meth:`finish`."""
        cfg = self.config
        if resume and self.checkpoint is not None and self.checkpoint.exists():
            self.load_state_dict(load_checkpoint(self.checkpoint), source=self.checkpoint)
        self._start = time.perf_counter()
        self._bar = (progress_bar(cfg.max_sequences, self.sequences, self.progress_desc,
                                  self.progress_position) if self.progress else None)
        self._next_check = (self.sequences // cfg.check_every + 1) * cfg.check_every
        self._next_ckpt = ((self.sequences // cfg.checkpoint_every + 1) * cfg.checkpoint_every
                           if cfg.checkpoint_every else None)
        self._next_log = (self.sequences // cfg.log_every + 1) * cfg.log_every
        self.model.train()

    def record(self, loss: float, correct: list[bool], squared: list[float] | None) -> None:
        """Account for one training batch that has updated the weights: its loss, each
        sequence's correctness and (where :attr:`needs_errors`) squared error. Counts the
        sequences, feeds the callbacks and stopping rules (testing where a test-set rule is
        due) and logs the curve (:meth:`checkpoint_if_due` takes the checkpoints)."""
        cfg = self.config
        n = len(correct)
        check_tests = self.tests_due(n)
        self.sequences += n
        for cb in self.callbacks:
            cb.after_step(self, loss, n)
        self._window.append((float(loss), sum(correct) / n))
        if self.sequences >= self._next_check:
            self._next_check += cfg.check_every
        self._update_criteria(correct, squared, check_tests)
        if self.sequences >= self._next_log or self.success_at is not None:
            self._next_log += cfg.log_every
            losses, accs = zip(*self._window)
            self.curve.append({"sequences": self.sequences,
                               "loss": sum(losses) / len(losses),
                               "accuracy": sum(accs) / len(accs)})
            self._window = []
            if self._bar is not None:
                show_loss(self._bar, self.curve[-1]["loss"], self.curve[-1]["accuracy"])
        if self._bar is not None:
            self._bar.update(n)

    def tests_due(self, n: int) -> bool:
        """Whether recording a batch of ``n`` more sequences checks the test-set rules: every
        ``check_every`` sequences, and on the budget's last batch, so that a net that meets a
        rule when training stops is judged by it whatever the cadence of the checks."""
        after = self.sequences + n
        return after >= self._next_check or after >= self.config.max_sequences

    def checkpoint_if_due(self) -> None:
        """Checkpoint if ``checkpoint_every`` sequences have passed since the last one. Called
        between batches by :meth:`run`; whoever drives :meth:`record` calls it where the data
        stream can resume exactly (between the draws of its generator)."""
        if self._next_ckpt is not None and self.sequences >= self._next_ckpt:
            while self._next_ckpt <= self.sequences:
                self._next_ckpt += self.config.checkpoint_every
            self.save()

    def finish(self) -> TrainResult:
        """End the run: the last checkpoint, the test on fresh data, the result."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self.save()
        correct, squared, absolute, loss = self._test(self.config.test_size)
        test = {
            "loss": float(loss),
            "wrong": float((~correct).sum()),
            "size": float(correct.numel()),
            "mse": float(squared.mean()),
            "mean_abs_error": float(absolute.mean()),
        }
        return TrainResult(
            success=self.success_at is not None,
            sequences=self.success_at if self.success_at is not None else self.sequences,
            test=test,
            curve=list(self.curve),
            seconds=time.perf_counter() - self._start,
            milestones=dict(self.milestones),
        )


def _detach(state: Any) -> Any:
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def _keep_where(rows: Tensor, old: Any, new: Any) -> Any:
    """``new`` state with the batch columns ``rows`` (bool ``[B]``) taken from ``old``."""
    if isinstance(new, tuple):
        return tuple(_keep_where(rows, o, n) for o, n in zip(old, new))
    return torch.where(rows.view(1, -1, 1), old, new)


def _time_slice(batch: Batch, start: int, stop: int) -> Batch:
    """Steps ``start:stop`` of a time-major batch (for truncated BPTT over streams)."""
    steps = batch.inputs[start:stop].shape[0]
    lengths = (batch.lengths - start).clamp(1, steps)
    return dataclasses.replace(
        batch, inputs=batch.inputs[start:stop], targets=batch.targets[start:stop],
        mask=batch.mask[start:stop], lengths=lengths,
    )

