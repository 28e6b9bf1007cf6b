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
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import (
    CheckpointError,
    describe,
    first_difference,
    load_checkpoint,
    save_checkpoint,
)
from .construction import SequentialConstruction
from .criteria import Criterion, RecentSequences, TestSet

OPTIMIZERS = ("sgd", "adam")

# Config fields that say when to write checkpoints, not what is trained: a resumed run may
# change them without being another run.
_RUN_ONLY_FIELDS = ("checkpoint_every",)

# The optimiser state each kind keeps per parameter (required keys, optional keys).
_OPTIMIZER_STATE = {
    "Adam": ({"step", "exp_avg", "exp_avg_sq"}, {"max_exp_avg_sq"}),
    "SGD": (set(), {"momentum_buffer"}),
}
# Hyperparameters of a parameter group that a checkpoint must agree on; torch's implementation
# switches (foreach, fused, ...) may differ between versions without changing the run.
_HYPERPARAMETERS = ("lr", "betas", "eps", "weight_decay", "momentum", "dampening", "nesterov",
                    "amsgrad", "maximize")

# Seconds between progress lines where stderr is not a terminal (logs, pipes).
_LOG_INTERVAL_S = 60.0

# Every key of a trainer checkpoint (besides "format").
_STATE_KEYS = ("identity", "meta", "model", "optimizer", "data_gen", "test_gen", "torch_rng",
               "sequences", "success_at", "milestones", "curve", "window", "criteria",
               "callbacks")


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
        if meta is not None and not isinstance(meta, Mapping):
            raise TypeError(f"meta: expected None or a dict, got {type(meta).__name__}")
        self.meta = dict(meta or {})
        # A value that weights-only loading refuses would make every checkpoint unreadable.
        bad = _first_non_plain(self.meta, "meta")
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

    # -- checkpoints -----------------------------------------------------------------------

    def identity(self) -> dict[str, Any]:
        """What makes a checkpoint this trainer's: the config (all but ``checkpoint_every``),
        optimiser, stopping rules, callbacks, the model's modules, cell specs and parameter
        shapes, and the task's class and parameters. Stored in every checkpoint and compared on
        resume."""
        config = {f.name: getattr(self.config, f.name) for f in dataclasses.fields(self.config)
                  if f.name not in _RUN_ONLY_FIELDS}
        return {
            "config": config,
            "optimizer": type(self.optimizer).__name__,
            "criteria": {name: _rule_identity(rule) for name, rule in self.criteria.items()},
            "callbacks": {str(i): _callback_identity(cb) for i, cb in enumerate(self.callbacks)},
            "model": _model_identity(self.model),
            "task": {"class": type(self.task).__qualname__,
                     "params": _plain(dict(getattr(self.task, "params", {}) or {}))},
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "identity": self.identity(),
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
        check = _StateCheck(self, state, source)
        checked = check.run()
        try:
            self._apply(checked)
        except CheckpointError:
            raise
        except Exception as err:  # noqa: BLE001 - the checks above should leave nothing here
            raise CheckpointError(source, f"could not be restored: {_one_line(err)}") from None

    def _apply(self, checked: dict[str, Any]) -> None:
        """Install a state that :class:`_StateCheck` has accepted."""
        # Callbacks first: theirs is the only state checked by its owner, while loading.
        for i, (cb, cb_state) in enumerate(zip(self.callbacks, checked["callbacks"])):
            try:
                cb.load_state_dict(cb_state)
            except Exception as err:  # noqa: BLE001 - a callback's own check of its state
                raise CheckpointError(checked["source"], f"callbacks[{i}]: {_one_line(err)}"
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
            self.load_state_dict(load_checkpoint(self.checkpoint), source=self.checkpoint)
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
    """A tqdm bar on stderr; where stderr is not a terminal (a log file, a pipe), one that
    writes at most once a minute and without cursor movements, so a log gets a line a minute
    rather than two a second per trial."""
    try:
        from tqdm import tqdm
    except ImportError:  # progress is cosmetic; train without it
        return None
    stream = sys.stderr
    try:
        terminal = bool(stream.isatty())
    except (AttributeError, ValueError):  # replaced or closed streams
        terminal = False
    if terminal:
        return tqdm(total=total, initial=initial, unit="seq", dynamic_ncols=True, leave=False,
                    desc=desc, position=position, mininterval=0.5, file=stream)
    # Rows (position) and redraws in place need a terminal: in a log they are escape codes.
    return tqdm(total=total, initial=initial, unit="seq", leave=True, desc=desc,
                mininterval=_LOG_INTERVAL_S, maxinterval=_LOG_INTERVAL_S, file=stream)


# -- identity and checks of a checkpoint's state -----------------------------------------------

_PLAIN = (str, int, float, bool, type(None))


def _first_non_plain(value: Any, where: str) -> tuple[str, Any] | None:
    """The first entry of ``value`` that weights-only loading would refuse, with its place."""
    # Exact types: subclasses (numpy floats, enums) pickle as objects weights-only refuses.
    if type(value) in _PLAIN:
        return None
    if type(value) in (list, tuple):
        for i, item in enumerate(value):
            bad = _first_non_plain(item, f"{where}[{i}]")
            if bad is not None:
                return bad
        return None
    if type(value) is dict:
        for key, item in value.items():
            if type(key) not in _PLAIN:
                return f"{where} key {key!r}", key
            bad = _first_non_plain(item, f"{where}[{key!r}]")
            if bad is not None:
                return bad
        return None
    return where, value


def _plain(value: Any) -> Any:
    """``value`` with anything that is not a plain value replaced by its description."""
    if type(value) in _PLAIN:
        return value
    if isinstance(value, (list, tuple)):
        return (tuple if isinstance(value, tuple) else list)(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k if type(k) in _PLAIN else describe(k): _plain(v) for k, v in value.items()}
    return describe(value, 200)


def _settings(obj: Any) -> dict[str, Any]:
    """A dataclass's public fields (its settings, not its running state)."""
    return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)
            if not f.name.startswith("_")}


def _rule_identity(rule: Criterion) -> dict[str, Any]:
    return {"class": type(rule).__qualname__, **_settings(rule)}


def _callback_identity(cb: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"class": type(cb).__qualname__}
    if isinstance(cb, SequentialConstruction):
        record.update(weight=list(cb.weight.shape), columns=cb.columns, window=cb.window,
                      min_improvement=cb.min_improvement)
    elif callable(getattr(cb, "identity", None)):
        record.update(_plain(dict(cb.identity())))
    return record


def _model_identity(model: nn.Module) -> dict[str, Any]:
    modules: dict[str, Any] = {}
    for name, module in model.named_modules():
        record: dict[str, Any] = {"class": type(module).__qualname__,
                                  "config": module.extra_repr()}
        spec = getattr(module, "spec", None)
        if dataclasses.is_dataclass(spec) and not isinstance(spec, type):
            record["cell"] = _settings(spec)
        # What extra_repr leaves out of lstmkit's SequenceModel: how outputs are squashed.
        for attr in ("output_activation", "input_shortcut"):
            if isinstance(getattr(module, attr, None), (str, bool)):
                record[attr] = getattr(module, attr)
        modules[name or "(model)"] = record
    parameters = {name: {"shape": list(p.shape), "dtype": str(p.dtype)}
                  for name, p in model.named_parameters()}
    return {"class": type(model).__qualname__, "modules": modules, "parameters": parameters}


def _one_line(err: BaseException, limit: int = 200) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _log_points(sequences: int, batch: int, every: int, success: bool) -> tuple[int, Any]:
    """How many curve points a run that reached ``sequences`` has logged, and their sequence
    counts (lazily). A point is logged in each batch that passes a multiple of ``every``, and
    in the batch where the run succeeded."""
    if batch >= every:
        count = sequences // batch
        points: Any = range(batch, count * batch + 1, batch)
    else:
        count = sequences // every
        points = (-(-m * every // batch) * batch for m in range(1, count + 1))
        last = -(-count * every // batch) * batch if count else 0
        if success and last != sequences:
            count += 1
            points = _chain(points, sequences)
    return count, points


def _chain(points: Any, extra: int) -> Any:
    yield from points
    yield extra


class _StateCheck:
    """Checks every field of a trainer checkpoint against the live trainer, before any of it is
    used; each failure is a :class:`CheckpointError` naming the field."""

    def __init__(self, trainer: Trainer, state: Any, source: str | Path) -> None:
        self.trainer, self.state, self.source = trainer, state, source

    def fail(self, field: str, problem: str) -> CheckpointError:
        return CheckpointError(self.source, f"{field}: {problem}")

    def get(self, mapping: dict[str, Any], key: str, field: str) -> Any:
        if key not in mapping:
            raise self.fail(field, "missing from the checkpoint")
        return mapping[key]

    def of_type(self, value: Any, kind: type | tuple[type, ...], what: str, field: str) -> Any:
        if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
            raise self.fail(field, f"expected {what}, got {describe(value)}")
        return value

    def integer(self, value: Any, field: str, low: int, high: int, step: int = 1) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(field, f"expected an int, got {describe(value)}")
        if not low <= value <= high or (value - low) % step:
            multiple = f"a multiple of {step} " if step > 1 else "an int "
            raise self.fail(field, f"expected {multiple}in [{low}, {high}], got {value}")
        return value

    def real(self, value: Any, field: str, low: float = -math.inf,
             high: float = math.inf) -> float:
        if not _is_real(value) or not math.isfinite(value) or not low <= value <= high:
            bounds = "" if (low, high) == (-math.inf, math.inf) else f" in [{low}, {high}]"
            raise self.fail(field, f"expected a finite number{bounds}, got {describe(value)}")
        return float(value)

    def tensor(self, value: Any, field: str, like: Tensor, *, finite: bool = True) -> Tensor:
        """A dense tensor with ``like``'s shape and dtype (and finite, when floating)."""
        if not isinstance(value, Tensor):
            raise self.fail(field, f"expected a tensor, got {describe(value)}")
        if value.layout != torch.strided:
            raise self.fail(field, f"expected a dense tensor, got layout {value.layout}")
        if value.dtype != like.dtype:
            raise self.fail(field, f"expected dtype {like.dtype}, got {value.dtype}")
        if value.shape != like.shape:
            raise self.fail(field, f"expected shape {tuple(like.shape)}, got "
                                   f"{tuple(value.shape)}")
        if finite and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise self.fail(field, "holds NaN or infinite values")
        return value

    # -- the fields ------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        state = self.of_type(self.state, dict, "a dict", "checkpoint")
        for key in _STATE_KEYS:
            self.get(state, key, key)
        tr = self.trainer
        # Which run wrote it, before how: "another experiment" says more than a shape.
        meta = self.of_type(state["meta"], dict, "a dict", "meta")
        diff = first_difference(tr.meta, meta, "meta")
        if diff is not None:
            raise CheckpointError(self.source, f"made for another run: {diff}")
        identity = self.of_type(state["identity"], dict, "a dict", "identity")
        diff = first_difference(tr.identity(), identity, "identity")
        if diff is not None:
            raise CheckpointError(self.source, f"made for another configuration: {diff}")
        checked: dict[str, Any] = {"source": self.source}
        checked["model"] = self.model(state["model"])
        checked["optimizer"] = self.optimizer(state["optimizer"])
        for key, live in (("data_gen", tr.data_gen), ("test_gen", tr.test_gen),
                          ("torch_rng", torch.default_generator)):
            checked[key] = self.rng(state[key], key, live)
        self.counters(state, checked)
        checked["criteria"] = self.criteria(state["criteria"], checked["sequences"])
        checked["callbacks"] = self.callbacks(state["callbacks"], checked["sequences"])
        return checked

    def model(self, value: Any) -> dict[str, Tensor]:
        value = self.of_type(value, dict, "a dict of tensors", "model")
        live = self.trainer.model.state_dict()
        for name, tensor in live.items():
            self.tensor(self.get(value, name, f"model.{name}"), f"model.{name}", tensor)
        extra = next((k for k in value if k not in live), None)
        if extra is not None:
            raise self.fail(f"model.{extra}", "not a weight of this model")
        return value

    def optimizer(self, value: Any) -> dict[str, Any]:
        opt = self.trainer.optimizer
        value = self.of_type(value, dict, "a dict", "optimizer")
        live = opt.state_dict()
        groups = self.of_type(self.get(value, "param_groups", "optimizer.param_groups"), list,
                              "a list", "optimizer.param_groups")
        if len(groups) != len(live["param_groups"]):
            raise self.fail("optimizer.param_groups", f"expected {len(live['param_groups'])} "
                                                      f"groups, got {len(groups)}")
        index: dict[int, Tensor] = {}
        for g, (group, live_group) in enumerate(zip(groups, live["param_groups"])):
            field = f"optimizer.param_groups[{g}]"
            group = self.of_type(group, dict, "a dict", field)
            diff = first_difference(live_group["params"],
                                    self.get(group, "params", f"{field}.params"),
                                    f"{field}.params")
            if diff is not None:
                raise CheckpointError(self.source, diff)
            for key in _HYPERPARAMETERS:
                if key in live_group:
                    diff = first_difference(live_group[key],
                                            self.get(group, key, f"{field}.{key}"),
                                            f"{field}.{key}")
                    if diff is not None:
                        raise CheckpointError(self.source, diff)
            index.update(zip(live_group["params"], opt.param_groups[g]["params"]))
        per_param = self.of_type(self.get(value, "state", "optimizer.state"), dict, "a dict",
                                 "optimizer.state")
        required, optional = _OPTIMIZER_STATE.get(type(opt).__name__, (set(), None))
        for pid, entry in per_param.items():
            field = f"optimizer.state[{describe(pid)}]"
            if not isinstance(pid, int) or isinstance(pid, bool) or pid not in index:
                raise self.fail(field, f"expected a parameter index in 0..{len(index) - 1}")
            entry = self.of_type(entry, dict, "a dict", field)
            missing = sorted(required - set(entry))
            if missing:
                raise self.fail(f"{field}.{missing[0]}", "missing from the checkpoint")
            for key, item in entry.items():
                sub = f"{field}.{key}"
                if key == "step":
                    self.step(item, sub)
                elif optional is None:
                    # An optimiser this trainer does not build: check what has a known shape.
                    if isinstance(item, Tensor) and item.dim() > 0:
                        self.tensor(item, sub, index[pid].detach())
                elif key not in required | optional:
                    raise self.fail(sub, f"not state of {type(opt).__name__}")
                elif item is not None or key in required:
                    self.tensor(item, sub, index[pid].detach())
                    if key in ("exp_avg_sq", "max_exp_avg_sq") and bool((item < 0).any()):
                        raise self.fail(sub, "holds negative values (a mean of squares)")
        return value

    def step(self, value: Any, field: str) -> None:
        if not isinstance(value, Tensor) or value.numel() != 1 or value.dim() != 0 \
                or not value.is_floating_point():
            raise self.fail(field, f"expected a floating-point scalar tensor, got "
                                   f"{describe(value)}")
        step = float(value)
        if not math.isfinite(step) or step < 0 or step != int(step):
            raise self.fail(field, f"expected a whole number of steps >= 0, got {step}")

    def rng(self, value: Any, field: str, live: torch.Generator) -> Tensor:
        self.tensor(value, field, live.get_state(), finite=False)
        try:  # the state's content (e.g. an all-zero Mersenne Twister) is torch's to judge
            torch.Generator().set_state(value)
        except (RuntimeError, TypeError, ValueError) as err:
            raise self.fail(field, f"not a valid random generator state ({_one_line(err)})"
                            ) from None
        return value

    def counters(self, state: dict[str, Any], checked: dict[str, Any]) -> None:
        cfg = self.trainer.config
        batch = cfg.batch_size
        # Training stops at the first batch that reaches the budget.
        top = -(-cfg.max_sequences // batch) * batch
        sequences = self.integer(state["sequences"], "sequences", 0, top, batch)
        criteria = self.trainer.criteria
        raw = self.of_type(state["milestones"], dict, "a dict", "milestones")
        milestones: dict[str, int] = {}
        for name, at in raw.items():
            if name not in criteria:
                raise self.fail(f"milestones.{describe(name)}",
                                f"not a stopping rule of this trainer ({sorted(criteria)})")
            if sequences < batch:
                raise self.fail(f"milestones.{name}", "recorded before any training")
            milestones[name] = self.integer(at, f"milestones.{name}", batch, sequences, batch)
        success_at = state["success_at"]
        if not isinstance(success_at, int) or isinstance(success_at, bool) or (
                success_at != -1 and success_at != sequences) or (success_at == 0):
            raise self.fail("success_at", f"expected -1 (not yet) or the sequence count "
                                          f"{sequences}, got {describe(success_at)}")
        all_held = bool(criteria) and len(milestones) == len(criteria)
        if (success_at != -1) != all_held:
            raise self.fail("success_at", f"{success_at} disagrees with the milestones "
                                          f"{describe(milestones)} of the rules {sorted(criteria)}")
        if all_held and max(milestones.values()) != success_at:
            raise self.fail("success_at", f"expected the last milestone "
                                          f"{max(milestones.values())}, got {success_at}")
        checked.update(sequences=sequences, milestones=milestones,
                       success_at=None if success_at == -1 else success_at)
        checked["curve"] = self.curve(state["curve"], sequences, success_at != -1)
        last = checked["curve"][-1]["sequences"] if checked["curve"] else 0
        checked["window"] = self.window(state["window"], (sequences - last) // batch)

    def curve(self, value: Any, sequences: int, success: bool) -> list[dict[str, float]]:
        cfg = self.trainer.config
        value = self.of_type(value, list, "a list", "curve")
        count, points = _log_points(sequences, cfg.batch_size, cfg.log_every, success)
        if len(value) != count:
            raise self.fail("curve", f"expected {count} points for {sequences} sequences "
                                     f"logged every {cfg.log_every}, got {len(value)}")
        for i, (point, at) in enumerate(zip(value, points)):
            field = f"curve[{i}]"
            point = self.of_type(point, dict, "a dict", field)
            if set(point) != {"sequences", "loss", "accuracy"}:
                raise self.fail(field, f"expected the keys accuracy, loss, sequences, got "
                                       f"{sorted(map(str, point))}")
            at_point = point["sequences"]
            if not isinstance(at_point, int) or isinstance(at_point, bool) or at_point != at:
                raise self.fail(f"{field}.sequences", f"expected {at}, got "
                                                      f"{describe(point['sequences'])}")
            self.real(point["loss"], f"{field}.loss")
            self.real(point["accuracy"], f"{field}.accuracy", 0.0, 1.0)
        return [dict(p) for p in value]

    def window(self, value: Any, batches: int) -> list[tuple[float, float]]:
        value = self.of_type(value, list, "a list", "window")
        if len(value) != batches:
            raise self.fail("window", f"expected {batches} batches since the last curve "
                                      f"point, got {len(value)}")
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, (list, tuple)) or len(item) != 2:
                raise self.fail(f"window[{i}]", f"expected a (loss, accuracy) pair, got "
                                                f"{describe(item)}")
            out.append((self.real(item[0], f"window[{i}][0]"),
                        self.real(item[1], f"window[{i}][1]", 0.0, 1.0)))
        return out

    def criteria(self, value: Any, sequences: int) -> dict[str, Any]:
        value = self.of_type(value, dict, "a dict", "criteria")
        rules = self.trainer.criteria
        if set(value) != set(rules):
            raise self.fail("criteria", f"expected the state of {sorted(rules)}, got "
                                        f"{describe(sorted(map(str, value)))}")
        for name, rule in rules.items():
            # A copy checks the state, so a bad one leaves the live rule untouched.
            probe = dataclasses.replace(rule)
            try:
                probe.load_state_dict(value[name])
            except ValueError as err:
                raise self.fail(f"criteria.{name}", _one_line(err)) from None
            if isinstance(rule, RecentSequences):
                seen = min(rule.window, sequences)
                if len(value[name]["correct"]) != seen:
                    raise self.fail(f"criteria.{name}.correct",
                                    f"expected the last {seen} sequences, got "
                                    f"{len(value[name]['correct'])}")
        return value

    def callbacks(self, value: Any, sequences: int) -> list[Any]:
        value = self.of_type(value, list, "a list", "callbacks")
        callbacks = self.trainer.callbacks
        if len(value) != len(callbacks):
            raise self.fail("callbacks", f"expected the state of {len(callbacks)} callbacks, "
                                         f"got {len(value)}")
        for i, (cb, cb_state) in enumerate(zip(callbacks, value)):
            if isinstance(cb, SequentialConstruction):
                self.construction(cb, cb_state, f"callbacks[{i}]", sequences)
        return value

    def construction(self, cb: SequentialConstruction, value: Any, field: str,
                     sequences: int) -> None:
        value = self.of_type(value, dict, "a dict", field)
        keys = {"initial", "added_at", "sum", "count", "previous"}
        if set(value) != keys:
            raise self.fail(field, f"expected the keys {sorted(keys)}, got "
                                   f"{describe(sorted(map(str, value)))}")
        self.tensor(value["initial"], f"{field}.initial", cb.initial)
        batch = self.trainer.config.batch_size
        added = value["added_at"]
        if not (isinstance(added, int) and added == -1):
            if sequences < batch:
                raise self.fail(f"{field}.added_at", f"expected -1 (not yet) before any "
                                                     f"training, got {describe(added)}")
            self.integer(added, f"{field}.added_at", batch, sequences, batch)
        self.real(value["sum"], f"{field}.sum", 0.0)
        # Sequences of the loss window being summed: a full window is averaged and restarted.
        self.integer(value["count"], f"{field}.count", 0, max(cb.window - 1, 0), batch)
        previous = value["previous"]
        if not (_is_real(previous) and previous == -1):
            self.real(previous, f"{field}.previous", 0.0)
