"""The identity record of a trainer: what makes a checkpoint this run's.

A checkpoint stores the record and resuming compares it field by field, so the record holds
only plain values (str, int, float, bool, None, and lists, tuples and dicts of them), which
weights-only loading reads back as they were.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..tasks.protocol import TrainingTask
from .checkpoint import describe
from .config import TrainConfig
from .construction import SequentialConstruction
from .criteria import Criterion

# Config fields that say when to write checkpoints, not what is trained: a resumed run may
# change them without being another run.
RUN_ONLY_FIELDS = ("checkpoint_every",)

_PLAIN = (str, int, float, bool, type(None))


def identity_record(config: TrainConfig, optimizer: torch.optim.Optimizer,
                    criteria: Mapping[str, Criterion], callbacks: list[Any], model: nn.Module,
                    task: TrainingTask) -> dict[str, Any]:
    """The config (all but ``checkpoint_every``), optimiser, stopping rules, callbacks, the
    model's modules, cell specs and parameter shapes, and the task's class and parameters."""
    settings = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
                if f.name not in RUN_ONLY_FIELDS}
    return {
        "config": settings,
        "optimizer": type(optimizer).__name__,
        "criteria": {name: _rule_identity(rule) for name, rule in criteria.items()},
        "callbacks": {str(i): _callback_identity(cb) for i, cb in enumerate(callbacks)},
        "model": _model_identity(model),
        "task": {"class": type(task).__qualname__, "params": plain(dict(task.params))},
    }


def first_non_plain(value: Any, where: str) -> tuple[str, Any] | None:
    """The first entry of ``value`` that weights-only loading would refuse, with its place."""
    # Exact types: subclasses (numpy floats, enums) pickle as objects weights-only refuses.
    if type(value) in _PLAIN:
        return None
    if type(value) in (list, tuple):
        for i, item in enumerate(value):
            bad = first_non_plain(item, f"{where}[{i}]")
            if bad is not None:
                return bad
        return None
    if type(value) is dict:
        for key, item in value.items():
            if type(key) not in _PLAIN:
                return f"{where} key {key!r}", key
            bad = first_non_plain(item, f"{where}[{key!r}]")
            if bad is not None:
                return bad
        return None
    return where, value


def plain(value: Any) -> Any:
    """``value`` with anything that is not a plain value replaced by its description."""
    if type(value) in _PLAIN:
        return value
    if isinstance(value, (list, tuple)):
        return (tuple if isinstance(value, tuple) else list)(plain(v) for v in value)
    if isinstance(value, dict):
        return {k if type(k) in _PLAIN else describe(k): plain(v) for k, v in value.items()}
    return describe(value, 200)


def _settings(obj: Any) -> dict[str, Any]:
    """A dataclass's public fields (its settings, not its running state)."""
    return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)
            if not f.name.startswith("_")}


def _rule_identity(rule: Criterion) -> dict[str, Any]:
    return {"class": type(rule).__qualname__, **_settings(rule)}


def _callback_identity(cb: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"class": type(cb).__qualname__}
    if isinstance(cb, SequentialConstruction):
        record.update(weight=list(cb.weight.shape), columns=cb.columns, window=cb.window,
                      min_improvement=cb.min_improvement, tolerance=cb.tolerance,
                      sample_size=cb.sample_size, at_end=cb.at_end)
    elif callable(getattr(cb, "identity", None)):
        record.update(plain(dict(cb.identity())))
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
