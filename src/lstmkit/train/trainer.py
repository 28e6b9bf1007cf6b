"""Train a :class:`~lstmkit.models.SequenceModel` on a task, counting sequences as the paper did.

The trainer draws batches from a task, backpropagates through time over masked, variable-length
batches (or in detached chunks for streams: truncated BPTT), clips gradients, and steps plain SGD
(the paper's online gradient descent, batch 1) or Adam. It counts training sequences, feeds the
experiment's stopping criterion, checkpoints atomically every ``checkpoint_every`` sequences, and
with ``resume=True`` continues a killed run to the same result as an uninterrupted one: the
model, optimiser, criterion, counters and every random generator are in the checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import load_checkpoint, save_checkpoint
from .criteria import Criterion, RecentSequences, TestSet

OPTIMIZERS = ("sgd", "adam")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint (if any) is kept."""


@dataclass
class TrainConfig:
    """How to train. ``max_sequences`` is the budget in training sequences presented."""

    optimizer: str = "adam"
    lr: float = 1e-3
    batch_size: int = 32
    max_sequences: int = 100_000
    clip_norm: float | None = 1.0
    check_every: int = 1000
    checkpoint_every: int = 0
    test_size: int = 2560
    tbptt: int | None = None
    seed: int = 0
    log_every: int = 1000

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer: expected one of {OPTIMIZERS}, got {self.optimizer!r}")
        for name in ("batch_size", "max_sequences", "check_every", "test_size", "log_every"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if not (_is_real(self.lr) and self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr: expected a positive finite number, got {self.lr!r}")
        if self.clip_norm is not None and not (_is_real(self.clip_norm) and self.clip_norm > 0):
            raise ValueError(
                f"clip_norm: expected None or a positive number, got {self.clip_norm!r}"
            )
        if not _is_int(self.checkpoint_every) or self.checkpoint_every < 0:
            raise ValueError(
                f"checkpoint_every: expected an int >= 0 (0: never), got {self.checkpoint_every!r}"
            )
        if self.tbptt is not None and (not _is_int(self.tbptt) or self.tbptt < 1):
            raise ValueError(
                f"tbptt: expected None or a positive int chunk length, got {self.tbptt!r}"
            )
        if not _is_int(self.seed):
            raise ValueError(f"seed: expected an int, got {self.seed!r}")


def _is_int(value: Any) -> bool:
    # bool is an int subclass, but batch_size=True is a mistake, not a batch of one.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class TrainResult:
    """What a run reached: success, sequences to success, test metrics, curve, wall time."""

    success: bool
    sequences: int
    test: dict[str, float]
    curve: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    milestones: dict[str, int] = field(default_factory=dict)


def sequence_errors(outputs: Tensor, batch: Any) -> tuple[Tensor, Tensor]:
    """Per-sequence error over the masked steps: (summed squared error, mean absolute error).

    Where ``batch.info`` has a ``clean_target`` (H&S Exp. 3c), the absolute error is measured
    against it, as the paper's ST3c rule does. For class targets (cross-entropy tasks) both are
    the fraction of masked steps whose arg-max output is not the target class.
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
    clean = batch.info.get("clean_target") if isinstance(batch.info, dict) else None
    if clean is not None:
        last = outputs[batch.lengths.to(outputs.device) - 1,
                       torch.arange(outputs.shape[1], device=outputs.device)]
        return squared, (last[:, 0] - clean.to(outputs)).abs()
    return squared, diff.abs().sum(dim=(0, 2)) / (counted * outputs.shape[-1])


class Trainer:
    """Trains ``model`` on ``task`` under ``config`` until ``criterion`` holds or the budget ends.

    Args:
        model: maps ``(inputs, lengths)`` to outputs ``[T, B, output_size]``.
        task: a task from :mod:`lstmkit.tasks` (``sample``, ``loss``, ``evaluate``).
        config: the :class:`TrainConfig`.
        criterion: a stopping rule from :mod:`lstmkit.train.criteria`, or a mapping of named
            rules (milestones such as the paper's ST1 then ST2: each one's first sequence count
            is recorded and training stops when all hold), or None (budget only).
        checkpoint: path of the checkpoint file (needed for ``checkpoint_every`` and resume).
        progress: show a progress bar (tqdm) when it is installed.
        callbacks: objects with ``after_step(trainer, loss, sequences)``, ``state_dict()`` and
            ``load_state_dict()`` (their state is checkpointed), called after every update, e.g.
            :class:`~lstmkit.train.construction.SequentialConstruction`.
    """

    def __init__(
        self,
        model: nn.Module,
        task: Any,
        config: TrainConfig,
        criterion: Criterion | Mapping[str, Criterion] | None = None,
        *,
        checkpoint: str | Path | None = None,
        meta: dict[str, Any] | None = None,
        progress: bool = False,
        callbacks: list[Any] | None = None,
    ) -> None:
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
        self.meta = dict(meta or {})
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

    # -- checkpoints -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "model": self.model.state_dict(),
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

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.data_gen.set_state(state["data_gen"])
        self.test_gen.set_state(state["test_gen"])
        torch.set_rng_state(state["torch_rng"])
        self.sequences = int(state["sequences"])
        self.success_at = None if state["success_at"] < 0 else int(state["success_at"])
        self.milestones = {str(k): int(v) for k, v in state["milestones"].items()}
        self.curve = list(state["curve"])
        self._window = [tuple(v) for v in state["window"]]
        for name, rule in self.criteria.items():
            rule.load_state_dict(state["criteria"][name])
        saved = state.get("callbacks", [])
        if len(saved) != len(self.callbacks):
            raise ValueError(f"checkpoint: holds the state of {len(saved)} callbacks, this "
                             f"trainer has {len(self.callbacks)}")
        for cb, cb_state in zip(self.callbacks, saved):
            cb.load_state_dict(cb_state)

    def save(self) -> None:
        if self.checkpoint is not None:
            # Never replace the last good checkpoint with weights a bad update has spoiled.
            for name, param in self.model.named_parameters():
                if not bool(torch.isfinite(param).all()):
                    raise self._diverged(f"weight {name} became non-finite")
            save_checkpoint(self.checkpoint, self.state_dict())

    # -- training --------------------------------------------------------------------------

    def _forward(self, batch: Any) -> Tensor:
        return self.model(batch.inputs, batch.lengths)

    def _step(self, batch: Any) -> tuple[Tensor, float]:
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

    def _evaluate(self, batch: Any) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Correctness, squared and absolute errors per sequence, and the loss, without grad."""
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            outputs = self._forward(batch)
            correct = self.task.evaluate(outputs, batch)
            squared, absolute = sequence_errors(outputs, batch)
            loss = self.task.loss(outputs, batch)
        self.model.train(was_training)
        return correct, squared, absolute, loss

    def _test(self, size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Evaluate on ``size`` fresh sequences, or on a task's fixed test split (Reber)."""
        if hasattr(self.task, "test_batch"):
            return self._evaluate(self.task.test_batch())
        return self._evaluate(self.task.sample(size, generator=self.test_gen))

    def _check_test_rule(self, rule: TestSet) -> bool:
        """A test-set rule; with fixed splits (Reber) it must hold on training and test set."""
        if hasattr(self.task, "train_batch") and hasattr(self.task, "test_batch"):
            parts = [self._evaluate(b) for b in (self.task.train_batch(), self.task.test_batch())]
            correct = torch.cat([c for c, _, _, _ in parts])
            absolute = torch.cat([a for _, _, a, _ in parts])
        else:
            correct, _, absolute, _ = self._test(rule.size)
        return rule.judge(correct.tolist(), absolute.tolist())

    def _update_criteria(self, outputs: Tensor, batch: Any, correct: Tensor,
                         check_tests: bool) -> None:
        stream = [n for n, r in self.criteria.items() if isinstance(r, RecentSequences)]
        if stream:
            squared, _ = sequence_errors(outputs, batch)
            correct_list, squared_list = correct.tolist(), squared.tolist()
        for name, rule in self.criteria.items():
            if isinstance(rule, RecentSequences):
                held = rule.update(correct_list, squared_list)
            elif check_tests and name not in self.milestones:
                held = self._check_test_rule(rule)
            else:
                continue
            if held and name not in self.milestones:
                self.milestones[name] = self.sequences
        if self.criteria and len(self.milestones) == len(self.criteria):
            self.success_at = max(self.milestones.values())

    def run(self, *, resume: bool = False) -> TrainResult:
        """Train until every criterion holds or ``max_sequences``; then test on fresh data."""
        cfg = self.config
        if resume and self.checkpoint is not None and self.checkpoint.exists():
            self.load_state_dict(load_checkpoint(self.checkpoint, self.meta or None))
        start = time.perf_counter()
        bar = (_progress_bar(cfg.max_sequences, self.sequences, self.progress_desc,
                             self.progress_position) if self.progress else None)
        next_check = (self.sequences // cfg.check_every + 1) * cfg.check_every
        next_ckpt = ((self.sequences // cfg.checkpoint_every + 1) * cfg.checkpoint_every
                     if cfg.checkpoint_every else None)
        next_log = (self.sequences // cfg.log_every + 1) * cfg.log_every
        self.model.train()
        while self.success_at is None and self.sequences < cfg.max_sequences:
            batch = self.task.sample(cfg.batch_size, generator=self.data_gen)
            outputs, loss = self._step(batch)
            self.sequences += cfg.batch_size
            for cb in self.callbacks:
                cb.after_step(self, loss, cfg.batch_size)
            correct = self.task.evaluate(outputs, batch)
            self._window.append((float(loss), float(correct.float().mean())))
            check_tests = self.sequences >= next_check
            if check_tests:
                next_check += cfg.check_every
            self._update_criteria(outputs, batch, correct, check_tests)
            if self.sequences >= next_log or self.success_at is not None:
                next_log += cfg.log_every
                losses, accs = zip(*self._window)
                self.curve.append({"sequences": self.sequences,
                                   "loss": sum(losses) / len(losses),
                                   "accuracy": sum(accs) / len(accs)})
                self._window = []
                if bar is not None:
                    bar.set_postfix(loss=f"{self.curve[-1]['loss']:.4f}",
                                    acc=f"{self.curve[-1]['accuracy']:.2f}")
            if bar is not None:
                bar.update(cfg.batch_size)
            if next_ckpt is not None and self.sequences >= next_ckpt:
                next_ckpt += cfg.checkpoint_every
                self.save()
        if bar is not None:
            bar.close()
        self.save()
        correct, squared, absolute, loss = self._test(cfg.test_size)
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
            seconds=time.perf_counter() - start,
            milestones=dict(self.milestones),
        )


def _detach(state: Any) -> Any:
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def _keep_where(rows: Tensor, old: Any, new: Any) -> Any:
    """``new`` state with the batch columns ``rows`` (bool ``[B]``) taken from ``old``."""
    if isinstance(new, tuple):
        return tuple(_keep_where(rows, o, n) for o, n in zip(old, new))
    return torch.where(rows.view(1, -1, 1), old, new)


def _time_slice(batch: Any, start: int, stop: int) -> Any:
    """Steps ``start:stop`` of a time-major batch (for truncated BPTT over streams)."""
    steps = batch.inputs[start:stop].shape[0]
    lengths = (batch.lengths - start).clamp(1, steps)
    return dataclasses.replace(
        batch, inputs=batch.inputs[start:stop], targets=batch.targets[start:stop],
        mask=batch.mask[start:stop], lengths=lengths,
    )


def _progress_bar(total: int, initial: int, desc: str | None, position: int) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:  # progress is cosmetic; train without it
        return None
    return tqdm(total=total, initial=initial, unit="seq", dynamic_ncols=True, leave=False,
                desc=desc, position=position, mininterval=0.5)
