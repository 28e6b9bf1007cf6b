"""The rows of Hochreiter & Schmidhuber (1997) that ``lstmkit reproduce`` can rerun.

An :class:`Experiment` names one row of the paper (``exp4-T100``) by the task that generates its
data and the task parameters; the paper's network, learning rate, stopping rule and published
numbers are read from the task (:attr:`lstmkit.tasks.Task.setting`, ``.references``) rather than
restated here. The stopping rules of the paper become :mod:`lstmkit.train.criteria` objects in
:func:`criteria_for`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .. import tasks
from ..tasks.base import PaperReference, PaperSetting
from ..train.criteria import RecentSequences, TestSet


@dataclass(frozen=True)
class Experiment:
    """One row of the paper: ``task`` with ``params``, compared with one of the task's LSTM rows.

    Where the task publishes several LSTM rows for the same parameters, ``row`` and
    ``criterion`` name the one this experiment is: ``row`` the row label of its network and
    training (:attr:`PaperSetting.row`, e.g. Table 10's ``"1-5"``), ``criterion`` the stopping
    criterion its numbers refer to (:attr:`PaperReference.criterion`, e.g. ``"ST2"``). Otherwise
    it is the first LSTM row for the parameters.

    ``title`` may name task parameters in braces (``"adding problem T={T}"``): :meth:`title_for`
    fills them with the parameters a run actually used.

    ``trials_per_data_set``: where the paper trains a few trials on each of several fixed data
    sets (Exp. 1: "3 different, randomly generated pairs of training and test sets. With each
    such pair we run 10 trials"), trial seed ``s`` trains on the data set drawn from the task
    seed ``s // trials_per_data_set`` (:meth:`trial_params`), so that trials with seeds 5000 to
    5029 use three data sets, ten trials each, as the paper's 30 did.
    """

    id: str
    task: str
    params: dict[str, Any] = field(default_factory=dict, hash=False)
    title: str = ""
    row: str | None = None
    criterion: str | None = None
    trials_per_data_set: int | None = None

    def data_set_group(self, overrides: dict[str, Any] | None = None) -> int | None:
        """How many trials share a data set in a run with ``overrides``: ``trials_per_data_set``,
        or None where the row has no fixed data sets or ``overrides`` fixes one for every trial
        (a ``seed``)."""
        return None if "seed" in (overrides or {}) else self.trials_per_data_set

    def trial_params(self, seed: int, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """The task parameters of the trial with ``seed``: ``overrides``, plus the data set's
        seed where trials share data sets by groups (:meth:`data_set_group`)."""
        params = dict(overrides or {})
        group = self.data_set_group(overrides)
        if group:
            params["seed"] = seed // group
        return params

    def is_reference(self, ref: PaperReference) -> bool:
        """Whether ``ref`` is an LSTM row with this experiment's labels."""
        return (ref.method.startswith("LSTM")
                and (self.row is None
                     or (ref.setting is not None and ref.setting.row == self.row))
                and (self.criterion is None or ref.criterion == self.criterion))

    def make_task(self, overrides: dict[str, Any] | None = None) -> tasks.Task:
        """The row's task; ``overrides`` change its parameters (a smaller T, say)."""
        return tasks.make(self.task, **{**self.params, **(overrides or {})})

    def title_for(self, overrides: dict[str, Any] | None = None) -> str:
        """The row's title for a run with ``overrides``; a changed parameter the title does not
        name is appended, so the title never states a value the run did not use."""
        params = {**self.params, **(overrides or {})}
        named = {m.group(1) for m in re.finditer(r"\{(\w+)\}", self.title)}
        text = self.title.format_map({k: params.get(k, f"{{{k}}}") for k in named})
        extra = [f"{k}={v}" for k, v in (overrides or {}).items()
                 if k not in named and v != self.params.get(k, object())]
        return text + (" [" + ", ".join(extra) + "]" if extra else "")

    def reference(self, task: tasks.Task | None = None) -> PaperReference | None:
        """The paper's LSTM row this experiment is compared with."""
        task = task or self.make_task()
        return next((r for r in task.references if self.is_reference(r)), None)

    def setting(self, task: tasks.Task | None = None) -> PaperSetting:
        """The paper's network and training for this row.

        A task with changed parameters (a smaller T) that the paper has no row for keeps the
        setting of the experiment's own parameters.
        """
        candidates = [task] if task is not None else []
        candidates.append(self.make_task())
        for candidate in candidates:
            ref = self.reference(candidate)
            setting = (ref.setting if ref is not None and ref.setting is not None
                       else candidate.setting)
            if setting is not None:
                return setting
        raise ValueError(f"experiment {self.id!r}: the task has no paper setting")


def _build() -> dict[str, Experiment]:
    rows = [
        Experiment("exp1", "reber", {}, "Exp. 1, embedded Reber grammar (3 blocks of 2, lr 0.5)",
                   row="1-5", trials_per_data_set=10),
        Experiment("exp2a", "noiseless_lag", {"p": 100}, "Exp. 2a, noise-free lag p={p}"),
        Experiment("exp2b", "noiseless_lag_random", {"p": 100},
                   "Exp. 2b, no local regularities, p={p}"),
    ]
    for q, p in [(50, 50), (100, 100), (200, 200), (500, 500), (1000, 1000), (1000, 500),
                 (1000, 200), (1000, 100), (1000, 50)]:
        rows.append(Experiment(f"exp2c-q{q}-p{p}", "very_long_lag", {"p": p, "q": q},
                               "Exp. 2c, very long lag q={q}, p={p}"))
    for variant, crit in (("a", "ST2"), ("b", "ST2"), ("c", "ST3c")):
        rows.append(Experiment(
            f"exp3{variant}", "two_sequence", {"variant": variant, "T": 100, "N": 3},
            f"Exp. 3{variant}, two-sequence problem T={{T}} N={{N}}", criterion=crit))
    for T in (100, 500, 1000):
        rows.append(Experiment(f"exp4-T{T}", "adding1997", {"T": T},
                               "Exp. 4, adding problem T={T}"))
    rows.append(Experiment("exp5-T100", "multiplication1997", {"T": 100},
                           "Exp. 5, multiplication problem T={T}, n_seq=140",
                           criterion="RECENT(n_seq=140)"))
    rows.append(Experiment("exp6a", "temporal_order", {"positions": 2},
                           "Exp. 6a, temporal order, {positions} relevant symbols"))
    rows.append(Experiment("exp6b", "temporal_order", {"positions": 3},
                           "Exp. 6b, temporal order, {positions} relevant symbols"))
    return {e.id: e for e in rows}


EXPERIMENTS: dict[str, Experiment] = _build()


def names() -> list[str]:
    """Every experiment id, in the paper's order."""
    return list(EXPERIMENTS)


def get(name: str) -> Experiment:
    """The experiment called ``name``; the error lists the valid ones."""
    if not isinstance(name, str) or name not in EXPERIMENTS:
        raise ValueError(f"experiment: expected one of {names()}, got {name!r}")
    return EXPERIMENTS[name]


def criteria_for(setting: PaperSetting) -> dict[str, RecentSequences | TestSet]:
    """The paper's stopping rules for ``setting`` as named trainer criteria.

    Where the paper only stops after a fixed budget (Exp. 2: "after 5 million exemplars"), the
    success criterion decides when a trial counts as solved. Its wording decides the rule:

    * Exps. 2a/2b: "after training, during 10,000 successive, randomly chosen input sequences,
      the maximal absolute error of all output units is always below 0.25" is a test of the
      frozen net (``ABS`` with ``after_training``): a :class:`TestSet` of ``successive``
      sequences with no wrong one, checked while training goes on. For 2a the task's test batch
      is its two sequences, which 10,000 random draws from two contain (with probability
      1 - 2^-9999), so the frozen net is judged on both.
    * Exp. 2c: "prediction error ... always below 0.2, for 10,000 successive, randomly chosen
      input sequences" says nothing of frozen weights: a window of ``successive`` training
      sequences (:class:`RecentSequences`).
    """
    out: dict[str, RecentSequences | TestSet] = {}
    for rule in setting.stopping:
        prm = dict(rule.params)
        if rule.name == "ST3":
            out["ST3"] = RecentSequences(window=int(prm.get("window", 2000)), max_wrong=0,
                                         max_mean_error=float(prm["beta"]))
        elif rule.name == "RECENT":
            out["RECENT"] = RecentSequences(window=int(prm["window"]),
                                            max_wrong=int(prm["n_seq"]) - 1)
        elif rule.name in ("ST1", "ST2", "ST3c"):
            beta = prm.get("beta")
            out[rule.name] = TestSet(size=int(prm["test_size"]), max_wrong=int(prm["max_wrong"]),
                                     max_mean_abs_error=None if beta is None else float(beta))
        elif rule.name == "ALL_CORRECT":
            out["ALL_CORRECT"] = TestSet(size=setting.test_set_size or 256, max_wrong=0)
    success = setting.success
    if not out and success.name == "ABS" and success.params.get("successive"):
        successive = int(success.params["successive"])
        if success.params.get("after_training"):
            out["ABS"] = TestSet(size=successive, max_wrong=0)
        else:
            out["ABS"] = RecentSequences(window=successive, max_wrong=0)
    if not out:
        raise ValueError(f"setting {setting.row}: no stopping criterion lstmkit can run")
    return out


def budget_for(setting: PaperSetting) -> int | None:
    """The paper's own training budget (``MAX_SEQUENCES``), if it states one."""
    for rule in setting.stopping:
        if rule.name == "MAX_SEQUENCES":
            return int(rule.params["limit"])
    return None


def _correct_text(setting: PaperSetting) -> str:
    """What makes one sequence count as correct under ``setting``'s success rule."""
    success = setting.success
    prm = dict(success.params)
    if success.name in ("ABS", "ABS_CLEAN") and "beta" in prm:
        where = {"every_step": "at every step", "end": "at the end"}.get(
            str(prm.get("where", "end")), f"at {prm.get('where')}")
        target = "the noise-free target" if success.name == "ABS_CLEAN" else "the target"
        return f"absolute error to {target} < {prm['beta']:g} {where}"
    return success.text or success.name


def describe_criteria(setting: PaperSetting) -> dict[str, str]:
    """Each rule of :func:`criteria_for` in words, e.g. for a table saying which one a failed
    trial did not meet."""
    correct = _correct_text(setting)
    out: dict[str, str] = {}
    for name, rule in criteria_for(setting).items():
        if isinstance(rule, RecentSequences):
            if rule.max_wrong == 0:
                text = f"all of the {rule.window:,} most recent training sequences correct"
            else:
                text = (f"at most {rule.max_wrong:,} of the {rule.window:,} most recent "
                        "training sequences wrong")
            text += f" ({correct})"
            if rule.max_mean_error is not None:
                text += f", their mean squared error < {rule.max_mean_error:g}"
        elif name == "ALL_CORRECT":
            text = "every training and test sequence predicted correctly"
        elif name == "ABS" and setting.test_set_size is None:
            # Exp. 2a: the task has two sequences, so 10,000 random draws are both of them.
            text = (f"with the weights frozen, {rule.size:,} successive random sequences "
                    f"correct ({correct}): both of the task's sequences")
        elif name == "ABS":
            text = (f"with the weights frozen, all of {rule.size:,} successive random "
                    f"sequences correct ({correct})")
        else:
            if rule.max_wrong == 0:
                text = f"all of {rule.size:,} fresh test sequences correct ({correct})"
            else:
                text = (f"at most {rule.max_wrong:,} of {rule.size:,} fresh test sequences "
                        f"incorrect ({correct})")
            if rule.max_mean_abs_error is not None:
                text += f", mean absolute error < {rule.max_mean_abs_error:g}"
        out[name] = text
    return out
