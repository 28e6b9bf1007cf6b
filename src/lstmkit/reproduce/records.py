"""What a ``lstmkit reproduce`` run records, and the one place that writes and reads it.

A :class:`RunResult` is one run of one experiment with one setting and cell: its
:class:`TrialRecord` per trial, their :class:`Summary`, the :class:`RunSettings` it trained
under and the :class:`PaperRow` it is compared with. :func:`lstmkit.reproduce.run` returns one,
and ``results.json`` holds one. :meth:`RunResult.to_json` and :meth:`RunResult.from_json` are the
only code that knows the file's keys; ``from_json`` checks every value it reads, so a damaged or
hand-edited file is refused with one line naming the key (``missing key 'summary.trials'``,
``summary.trials: expected an integer, got "two"``) instead of failing later inside a table.

Only the keys the tables need are required; every other one has a default, so a file with fewer
keys (an older one, or one written by hand) still loads.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._atomic import write_atomic

#: The name of the results file in a run's output folder.
RESULTS_NAME = "results.json"

_MISSING = object()


# -- reading checked values ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Kind:
    """A JSON kind a value may have, and how an error message names it."""

    types: tuple[type, ...]
    what: str
    nullable: bool = False

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        # JSON true/false load as bool, which Python also counts as an int.
        if isinstance(value, bool):
            return bool in self.types
        return isinstance(value, self.types)


_INT = _Kind((int,), "an integer")
_INT_OR_NULL = _Kind((int,), "an integer or null", nullable=True)
_NUMBER = _Kind((int, float), "a number")
_NUMBER_OR_NULL = _Kind((int, float), "a number or null", nullable=True)
_BOOL = _Kind((bool,), "true or false")
_STR = _Kind((str,), "a string")
_STR_OR_NULL = _Kind((str,), "a string or null", nullable=True)
_OBJECT = _Kind((dict,), "an object")
_OBJECT_OR_NULL = _Kind((dict,), "an object or null", nullable=True)
_LIST = _Kind((list,), "a list")


def _shown(value: Any) -> str:
    return json.dumps(value)[:40]


class _Reader:
    """Reads the keys of one JSON object, each checked; errors name the dotted key path."""

    def __init__(self, data: dict[str, Any], where: str = "") -> None:
        self.data = data
        self.where = where

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, kind: _Kind, default: Any = _MISSING) -> Any:
        """``data[key]`` if it is of ``kind``; ``default`` where it is absent (no default:
        the key is required)."""
        value = self.data.get(key, _MISSING)
        if value is _MISSING:
            if default is _MISSING:
                raise ValueError(f"missing key {self.path(key)!r}")
            return default
        if not kind.accepts(value):
            raise ValueError(f"{self.path(key)}: expected {kind.what}, got {_shown(value)}")
        return value

    def numbers(self, key: str) -> list[float]:
        """A list of numbers (empty where the key is absent)."""
        values = self.get(key, _LIST, [])
        for k, value in enumerate(values):
            if not _NUMBER.accepts(value):
                raise ValueError(f"{self.path(key)}[{k}]: expected {_NUMBER.what}, got "
                                 f"{_shown(value)}")
        return list(values)

    def mapping(self, key: str, kind: _Kind, default: dict[str, Any] | None = None
                ) -> dict[str, Any]:
        """An object whose values are all of ``kind`` (``{}`` or ``default`` where absent)."""
        values = self.get(key, _OBJECT, {} if default is None else default)
        for name, value in values.items():
            if not kind.accepts(value):
                raise ValueError(f"{self.path(key)}.{name}: expected {kind.what}, got "
                                 f"{_shown(value)}")
        return dict(values)

    def child(self, key: str, *, required: bool = False) -> _Reader | None:
        """A reader of the object at ``key`` (None where it is absent or null and not
        required)."""
        value = self.get(key, _OBJECT if required else _OBJECT_OR_NULL,
                         _MISSING if required else None)
        return None if value is None else _Reader(value, self.path(key))


# -- the records ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Curve:
    """A trial's training curve: loss and training-set correctness against sequences."""

    sequences: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    metric: list[float] = field(default_factory=list)
    metric_name: str = "fraction of training sequences correct"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def _read(cls, r: _Reader) -> Curve:
        curve = cls(sequences=r.numbers("sequences"), loss=r.numbers("loss"),
                    metric=r.numbers("metric"),
                    metric_name=r.get("metric_name", _STR, cls.metric_name))
        if not len(curve.sequences) == len(curve.loss) == len(curve.metric):
            raise ValueError(f"{r.where}: expected sequences, loss and metric of one length, "
                             f"got {len(curve.sequences)}, {len(curve.loss)} and "
                             f"{len(curve.metric)}")
        return curve


@dataclass(frozen=True, kw_only=True)
class Evaluation:
    """The test after training: ``wrong`` of ``size`` fresh sequences, and the errors the
    trainer measured on them (absent for a trial that diverged)."""

    wrong: float | None = None
    size: float | None = None
    loss: float | None = None
    mse: float | None = None
    mean_abs_error: float | None = None

    @classmethod
    def of(cls, test: Mapping[str, float]) -> Evaluation:
        """The trainer's test metrics (:attr:`lstmkit.train.TrainResult.test`) as a record."""
        return cls(**{f.name: float(test[f.name]) for f in dataclasses.fields(cls)
                      if test.get(f.name) is not None})

    def to_dict(self) -> dict[str, Any]:
        # The trainer's own keys only: a diverged trial's test has just wrong and size.
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def _read(cls, r: _Reader) -> Evaluation:
        return cls(**{f.name: r.get(f.name, _NUMBER_OR_NULL, None)
                      for f in dataclasses.fields(cls)})


@dataclass(frozen=True, kw_only=True)
class TrialRecord:
    """One trained and tested network.

    ``sequences``: training sequences until every stopping criterion was met (``success``) or
    until training ended; ``milestones``: when each criterion was first met; ``diverged``: the
    message of a run stopped by a non-finite loss; ``cells_added_at``: when sequential network
    construction added the memory cells; ``weights``: the network's weight count;
    ``wall_s``: seconds from the start of training to this trial's end (trials trained together
    as one group share their start, so the group's wall time is its largest ``wall_s``, not the
    sum).
    """

    seed: int
    success: bool = False
    sequences: int | None = None
    milestones: dict[str, int] = field(default_factory=dict)
    cells_added_at: int | None = None
    diverged: str | None = None
    test: Evaluation | None = None
    wall_s: float | None = None
    weights: int | None = None
    curve: Curve = field(default_factory=Curve)

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed, "success": self.success, "sequences": self.sequences,
            "milestones": dict(self.milestones), "cells_added_at": self.cells_added_at,
            "diverged": self.diverged,
            "test": None if self.test is None else self.test.to_dict(),
            "wall_s": self.wall_s, "weights": self.weights, "curve": self.curve.to_dict(),
        }

    @classmethod
    def _read(cls, r: _Reader) -> TrialRecord:
        test = r.child("test")
        curve = r.child("curve")
        return cls(
            seed=r.get("seed", _INT), success=r.get("success", _BOOL, False),
            sequences=r.get("sequences", _INT_OR_NULL, None),
            milestones=r.mapping("milestones", _INT),
            cells_added_at=r.get("cells_added_at", _INT_OR_NULL, None),
            diverged=r.get("diverged", _STR_OR_NULL, None),
            test=None if test is None else Evaluation._read(test),
            wall_s=r.get("wall_s", _NUMBER_OR_NULL, None),
            weights=r.get("weights", _INT_OR_NULL, None),
            curve=Curve() if curve is None else Curve._read(curve),
        )


@dataclass(frozen=True, kw_only=True)
class PaperRow:
    """The paper's published row a run is shown beside (its numbers as the paper gives them)."""

    label: str | None = None
    success_rate: float | None = None
    sequences: float | None = None
    trials: int | None = None
    test: str | None = None
    criterion: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def _read(cls, r: _Reader) -> PaperRow:
        return cls(label=r.get("label", _STR_OR_NULL, None),
                   success_rate=r.get("success_rate", _NUMBER_OR_NULL, None),
                   sequences=r.get("sequences", _NUMBER_OR_NULL, None),
                   trials=r.get("trials", _INT_OR_NULL, None),
                   test=r.get("test", _STR_OR_NULL, None),
                   criterion=r.get("criterion", _STR_OR_NULL, None))


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """How the trials of a run were trained: the recipe, the budget, the stopping criteria (by
    name and in words), the paper's Table 10 row, and how the trials were spread over
    processes."""

    max_sequences: int
    optimizer: str | None = None
    lr: float | None = None
    batch_size: int | None = None
    clip_norm: float | None = None
    init_range: float | None = None
    criteria: list[str] = field(default_factory=list)
    criteria_rules: dict[str, str] = field(default_factory=dict)
    paper_row: str | None = None
    weights: int | None = None
    workers: int | None = None
    threads_per_worker: int | None = None
    #: The nets' output units and loss, e.g. ``"sigmoid, sse"``, ``"softmax, xent"``.
    readout: str | None = None
    #: Where trials share data sets by groups: trial seed s used the task seed
    #: s // trials_per_data_set (``task_params`` then shows the first trial's).
    trials_per_data_set: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        # The order results.json has always had.
        ordered = {k: out[k] for k in ("optimizer", "lr", "batch_size", "clip_norm", "init_range",
                                       "max_sequences", "criteria", "criteria_rules", "paper_row",
                                       "weights", "workers", "threads_per_worker", "readout")}
        if self.trials_per_data_set is not None:  # only where trials share data sets by groups
            ordered["trials_per_data_set"] = self.trials_per_data_set
        return ordered

    @classmethod
    def _read(cls, r: _Reader) -> RunSettings:
        criteria = r.get("criteria", _LIST, [])
        for k, name in enumerate(criteria):
            if not _STR.accepts(name):
                raise ValueError(f"{r.path('criteria')}[{k}]: expected a string, got "
                                 f"{_shown(name)}")
        return cls(
            max_sequences=r.get("max_sequences", _INT),
            optimizer=r.get("optimizer", _STR_OR_NULL, None),
            lr=r.get("lr", _NUMBER_OR_NULL, None),
            batch_size=r.get("batch_size", _INT_OR_NULL, None),
            clip_norm=r.get("clip_norm", _NUMBER_OR_NULL, None),
            init_range=r.get("init_range", _NUMBER_OR_NULL, None),
            criteria=list(criteria), criteria_rules=r.mapping("criteria_rules", _STR),
            paper_row=r.get("paper_row", _STR_OR_NULL, None),
            weights=r.get("weights", _INT_OR_NULL, None),
            workers=r.get("workers", _INT_OR_NULL, None),
            threads_per_worker=r.get("threads_per_worker", _INT_OR_NULL, None),
            readout=r.get("readout", _STR_OR_NULL, None),
            trials_per_data_set=r.get("trials_per_data_set", _INT_OR_NULL, None),
        )


@dataclass(frozen=True, kw_only=True)
class Summary:
    """The trials of a run together: successes, the sequences the successful ones needed
    (mean and median), the mean test errors and the run's wall time."""

    trials: int
    successes: int
    mean_sequences: float | None
    diverged: int = 0
    success_rate: float | None = None
    median_sequences: float | None = None
    mean_test_wrong: float | None = None
    test_size: float | None = None
    wall_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        return {k: out[k] for k in ("trials", "successes", "diverged", "success_rate",
                                    "mean_sequences", "median_sequences", "mean_test_wrong",
                                    "test_size", "wall_s")}

    @classmethod
    def _read(cls, r: _Reader) -> Summary:
        summary = cls(
            trials=r.get("trials", _INT), successes=r.get("successes", _INT),
            mean_sequences=r.get("mean_sequences", _NUMBER_OR_NULL),
            diverged=r.get("diverged", _INT, 0),
            success_rate=r.get("success_rate", _NUMBER_OR_NULL, None),
            median_sequences=r.get("median_sequences", _NUMBER_OR_NULL, None),
            mean_test_wrong=r.get("mean_test_wrong", _NUMBER_OR_NULL, None),
            test_size=r.get("test_size", _NUMBER_OR_NULL, None),
            wall_s=r.get("wall_s", _NUMBER_OR_NULL, None),
        )
        if summary.mean_test_wrong is not None and summary.test_size is None:
            raise ValueError(f"missing key {r.path('test_size')!r} (needed with "
                             f"{r.path('mean_test_wrong')})")
        return summary


@dataclass(frozen=True, kw_only=True)
class RunResult:
    """One run: ``experiment`` (its ``title`` with the task parameters used) in ``setting``
    with ``cell``, every trial, their summary, the settings and the paper's row.

    ``task_params`` are all of the task's parameters; ``changed_params`` the ones the run
    changed from the experiment's own (a smaller T, say), which the tables mark.
    """

    experiment: str
    setting: str
    cell: str
    summary: Summary
    settings: RunSettings
    trials: list[TrialRecord]
    title: str = ""
    task: str = ""
    task_params: dict[str, Any] = field(default_factory=dict)
    changed_params: dict[str, Any] = field(default_factory=dict)
    paper: PaperRow | None = None

    def to_dict(self) -> dict[str, Any]:
        """The ``results.json`` object: plain JSON types, keys in the file's order."""
        return {
            "experiment": self.experiment, "title": self.title, "setting": self.setting,
            "cell": self.cell, "task": self.task, "task_params": dict(self.task_params),
            "changed_params": dict(self.changed_params),
            "paper": None if self.paper is None else self.paper.to_dict(),
            "settings": self.settings.to_dict(), "summary": self.summary.to_dict(),
            "trials": [t.to_dict() for t in self.trials],
        }

    def to_json(self) -> str:
        """The text of ``results.json``."""
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, data: Any) -> RunResult:
        """The run a ``results.json`` object describes; ``ValueError`` (one line, naming the
        key) where a key the tables need is missing or any value has the wrong kind."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        r = _Reader(data)
        experiment, setting, cell = (r.get(k, _STR) for k in ("experiment", "setting", "cell"))
        summary = Summary._read(r.child("summary", required=True))  # type: ignore[arg-type]
        settings = RunSettings._read(r.child("settings", required=True))  # type: ignore[arg-type]
        trials = r.get("trials", _LIST)
        if not trials:
            raise ValueError("trials: expected at least one trial, got none")
        records = []
        for k, trial in enumerate(trials):
            if not isinstance(trial, dict):
                raise ValueError(f"trials[{k}]: expected an object, got {_shown(trial)}")
            records.append(TrialRecord._read(_Reader(trial, f"trials[{k}]")))
        paper = r.child("paper")
        return cls(
            experiment=experiment, setting=setting, cell=cell, summary=summary,
            settings=settings, trials=records, title=r.get("title", _STR, ""),
            task=r.get("task", _STR, ""), task_params=r.get("task_params", _OBJECT, {}),
            changed_params=r.get("changed_params", _OBJECT, {}),
            paper=None if paper is None else PaperRow._read(paper),
        )

    @classmethod
    def from_json(cls, text: str) -> RunResult:
        """:meth:`from_dict` of the JSON ``text``."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"not readable JSON ({err})") from None
        return cls.from_dict(data)

    @classmethod
    def read(cls, path: str | Path) -> RunResult:
        """The run in the results file ``path``; every error is one ``ValueError`` line
        starting with ``results file PATH:``."""
        path = Path(path)
        try:
            return cls.from_json(path.read_text())
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"results file {path}: not readable JSON ({err})") from None
        except ValueError as err:
            raise ValueError(f"results file {path}: {err}") from None

    def write(self, folder: str | Path) -> Path:
        """Write ``FOLDER/results.json`` atomically (a reader never sees half a file)."""
        text = self.to_json().encode()
        return write_atomic(Path(folder) / RESULTS_NAME, lambda handle: handle.write(text))


def load_results(folder: str | Path) -> list[RunResult]:
    """Every ``results.json`` under ``folder`` (recursively), in path order.

    A file that lacks a key the tables need or holds the wrong kind of value is refused with
    one ``ValueError`` naming the file and the key.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"folder: expected a directory of reproduce results, got {folder}")
    found = [RunResult.read(path) for path in sorted(folder.rglob(RESULTS_NAME))]
    if not found:
        raise ValueError(f"folder: no {RESULTS_NAME} under {folder}")
    return found


__all__ = ["Curve", "Evaluation", "PaperRow", "RESULTS_NAME", "RunResult", "RunSettings",
           "Summary", "TrialRecord", "load_results"]
