"""Checks of a trainer checkpoint's state before a resumed run adopts any of it.

:class:`StateCheck` compares every field of a checkpoint with the live trainer: whose run it is
(``meta`` and the identity record), the weights, the optimiser's state, the random generators,
the counters and histories, the stopping rules' and the callbacks' state. Each problem is a
:class:`~lstmkit.train.checkpoint.CheckpointError` naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .checkpoint import CheckpointError, describe, first_difference
from .config import is_real
from .construction import SequentialConstruction
from .criteria import RecentSequences

if TYPE_CHECKING:
    from .trainer import Trainer

# Every key of a trainer checkpoint (besides "format").
STATE_KEYS = ("identity", "meta", "model", "optimizer", "data_gen", "test_gen", "torch_rng",
              "sequences", "success_at", "milestones", "curve", "window", "criteria",
              "callbacks")

# The optimiser state each kind keeps per parameter (required keys, optional keys).
_OPTIMIZER_STATE = {
    "Adam": ({"step", "exp_avg", "exp_avg_sq"}, {"max_exp_avg_sq"}),
    "SGD": (set(), {"momentum_buffer"}),
}
# Hyperparameters of a parameter group that a checkpoint must agree on; torch's implementation
# switches (foreach, fused, ...) may differ between versions without changing the run.
_HYPERPARAMETERS = ("lr", "betas", "eps", "weight_decay", "momentum", "dampening", "nesterov",
                    "amsgrad", "maximize")


def one_line(err: BaseException, limit: int = 200) -> str:
    """An error's message on one line, cut to ``limit`` characters."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


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


class StateCheck:
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
        if not is_real(value) or not math.isfinite(value) or not low <= value <= high:
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
        for key in STATE_KEYS:
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
            raise self.fail(field, f"not a valid random generator state ({one_line(err)})"
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
                raise self.fail(f"criteria.{name}", one_line(err)) from None
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
        keys = {"initial", "held", "added_at", "sum", "count", "previous"}
        if set(value) != keys:
            raise self.fail(field, f"expected the keys {sorted(keys)}, got "
                                   f"{describe(sorted(map(str, value)))}")
        self.tensor(value["initial"], f"{field}.initial", cb.initial)
        held = self.tensor(value["held"], f"{field}.held", cb.held)
        batch = self.trainer.config.batch_size
        added = value["added_at"]
        if isinstance(added, int) and added == -1 and not bool(held.all()):
            raise self.fail(f"{field}.held", "expected every cell weight held before the cells "
                                             "are added")
        if not (isinstance(added, int) and added == -1):
            if sequences < batch:
                raise self.fail(f"{field}.added_at", f"expected -1 (not yet) before any "
                                                     f"training, got {describe(added)}")
            self.integer(added, f"{field}.added_at", batch, sequences, batch)
        self.real(value["sum"], f"{field}.sum", 0.0)
        # Sequences of the loss window being summed: a full window is averaged and restarted.
        self.integer(value["count"], f"{field}.count", 0, max(cb.window - 1, 0), batch)
        previous = value["previous"]
        if not (is_real(previous) and previous == -1):
            self.real(previous, f"{field}.previous", 0.0)
