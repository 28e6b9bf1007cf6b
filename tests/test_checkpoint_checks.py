"""Resuming checks every field of a checkpoint and whose it is; progress bars stay quiet in logs.

A good checkpoint of a small run is written once; each case breaks one field of a copy and
resumes from it: the error is one :class:`CheckpointError` line that starts with the file's path
and names the field, and the trainer is left as it was.
"""

import copy
import io
import pickle
import re

import pytest
import torch

import lstmkit
from lstmkit import tasks
from lstmkit.train import (
    CheckpointError,
    RecentSequences,
    SequentialConstruction,
    TestSet,
    TrainConfig,
    Trainer,
    load_checkpoint,
    save_checkpoint,
)
from lstmkit.train import progress as progress_module

BATCH = 4
BUDGET = 80


def _trainer(tmp_path, *, hidden=4, variant="lstm", meta=None, task_params=None,
             callbacks=False, criteria=None, name="ckpt.pt", **overrides):
    torch.manual_seed(0)
    task = tasks.make("adding", **(task_params or {"T": 6}))
    model = lstmkit.SequenceModel(lstmkit.LSTM(2, hidden, variant=variant), 1)
    settings = dict(lr=1e-2, batch_size=BATCH, max_sequences=BUDGET, checkpoint_every=40,
                    check_every=40, log_every=12, test_size=8, seed=0)
    settings.update(overrides)
    if criteria is None:
        # A window the run never fills: the rules hold state but never stop training.
        criteria = {"stream": RecentSequences(window=1000, max_wrong=0),
                    "test": TestSet(size=8, max_wrong=-1)}
    cbs = [SequentialConstruction(model.readout.weight, hidden, window=16)] if callbacks else []
    return Trainer(model, task, TrainConfig(**settings), criteria, checkpoint=tmp_path / name,
                   meta=meta, callbacks=cbs)


@pytest.fixture(scope="module")
def good_state(tmp_path_factory):
    trainer = _trainer(tmp_path_factory.mktemp("good"), callbacks=True)
    trainer.run()
    return torch.load(trainer.checkpoint, weights_only=True)


def _resume_error(tmp_path, state, **trainer_args):
    """Resume a fresh trainer from ``state``; the error, after checking it left no trace."""
    path = save_checkpoint(tmp_path / "ckpt.pt", {k: v for k, v in state.items()
                                                  if k != "format"})
    trainer = _trainer(tmp_path, callbacks=True, **trainer_args)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    data_gen = trainer.data_gen.get_state()
    with pytest.raises(CheckpointError) as info:
        trainer.run(resume=True)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert "\n" not in message
    assert info.value.path == path
    # Nothing was adopted from the refused checkpoint.
    assert trainer.sequences == 0 and trainer.curve == [] and trainer.milestones == {}
    assert torch.equal(trainer.data_gen.get_state(), data_gen)
    assert trainer.optimizer.param_groups[0]["lr"] == trainer.config.lr
    assert trainer.optimizer.state_dict()["state"] == {}
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    return message[len(f"{path}: "):]


def _set(path, value):
    """A change to a state: put ``value`` at ``path`` (keys; a function gets the old value)."""
    def change(state):
        *parents, last = path
        node = state
        for key in parents:
            node = node[key]
        node[last] = value(node[last]) if callable(value) else value
    return change


def _delete(path):
    def change(state):
        *parents, last = path
        node = state
        for key in parents:
            node = node[key]
        del node[last]
    return change


W_HH = "layer.weight_hh_l0"

CASES = [
    # missing keys
    (_delete(("optimizer",)), "optimizer: missing from the checkpoint"),
    (_delete(("identity",)), "identity: missing from the checkpoint"),
    (_delete(("model", W_HH)), f"model.{W_HH}: missing from the checkpoint"),
    (_delete(("optimizer", "state", 0, "exp_avg")),
     "optimizer.state[0].exp_avg: missing from the checkpoint"),
    # weights: shapes, dtypes, values, strays
    (_set(("model", W_HH), torch.zeros(8, 4)),
     f"model.{W_HH}: expected shape (16, 4), got (8, 4)"),
    (_set(("model", W_HH), lambda w: w.double()),
     f"model.{W_HH}: expected dtype torch.float32, got torch.float64"),
    (_set(("model", W_HH), lambda w: w.to_sparse()), f"model.{W_HH}: expected a dense tensor"),
    (_set(("model", W_HH), lambda w: torch.full_like(w, float("nan"))),
     f"model.{W_HH}: holds NaN or infinite values"),
    (_set(("model", W_HH), [1.0, 2.0]), f"model.{W_HH}: expected a tensor, got [1.0, 2.0]"),
    (_set(("model", "layer.extra"), torch.zeros(2)), "model.layer.extra: not a weight of"),
    (_set(("model",), None), "model: expected a dict of tensors, got None"),
    # random generator states
    (_set(("data_gen",), torch.zeros(10, dtype=torch.uint8)),
     "data_gen: expected shape (5056,), got (10,)"),
    (_set(("test_gen",), lambda s: s.float()), "test_gen: expected dtype torch.uint8"),
    (_set(("torch_rng",), torch.zeros(5056, dtype=torch.uint8)),
     "torch_rng: not a valid random generator state"),
    (_set(("torch_rng",), "seed 0"), "torch_rng: expected a tensor, got 'seed 0'"),
    # counters and their ranges
    (_set(("sequences",), -10**18), "sequences: expected a multiple of 4 in [0, 80], got -1000"),
    (_set(("sequences",), 10**18), "sequences: expected a multiple of 4 in [0, 80], got 1000"),
    (_set(("sequences",), 42), "sequences: expected a multiple of 4 in [0, 80], got 42"),
    (_set(("sequences",), 80.0), "sequences: expected an int, got 80.0"),
    (_set(("sequences",), True), "sequences: expected an int, got True"),
    (_set(("success_at",), 40), "success_at: expected -1 (not yet) or the sequence count 80"),
    (_set(("success_at",), 80), "success_at: 80 disagrees with the milestones"),
    (_set(("milestones",), {"bogus": 4}), "milestones.'bogus': not a stopping rule"),
    (_set(("milestones",), {"stream": 84}), "milestones.stream: expected a multiple of 4 in "
                                            "[4, 80], got 84"),
    (_set(("milestones",), None), "milestones: expected a dict, got None"),
    # histories
    (_set(("curve",), lambda c: c[:-1]), "curve: expected 6 points for 80 sequences logged "
                                         "every 12, got 5"),
    (_set(("curve", 2, "loss"), float("nan")), "curve[2].loss: expected a finite number"),
    (_set(("curve", 2, "accuracy"), 1.5), "curve[2].accuracy: expected a finite number in "
                                          "[0.0, 1.0], got 1.5"),
    (_set(("curve", 2, "sequences"), 25), "curve[2].sequences: expected 36, got 25"),
    (_set(("curve", 0), [12, 0.1, 0.5]), "curve[0]: expected a dict"),
    (_set(("window",), lambda w: w + [(0.1, 0.5)]), "window: expected 2 batches since the "
                                                    "last curve point, got 3"),
    (_set(("window", 0), (float("inf"), 0.5)), "window[0][0]: expected a finite number"),
    (_set(("criteria", "stream", "errors", 3), float("nan")),
     "criteria.stream: errors[3]: expected a finite number >= 0, got nan"),
    (_set(("criteria", "stream", "correct", 0), "yes"),
     "criteria.stream: correct[0]: expected a bool, got 'yes'"),
    (_set(("criteria", "stream", "correct"), lambda c: c[:-4]),
     "criteria.stream: correct, errors: expected two lists of the same length"),
    (_set(("criteria", "test"), {"x": 1}), "criteria.test: expected an empty dict"),
    (_delete(("criteria", "test")), "criteria: expected the state of ['stream', 'test']"),
    (_set(("callbacks",), []), "callbacks: expected the state of 1 callbacks, got 0"),
    (_set(("callbacks", 0, "count"), 10**9), "callbacks[0].count: expected a multiple of 4 in "
                                             "[0, 15]"),
    (_set(("callbacks", 0, "added_at"), 1000), "callbacks[0].added_at: expected a multiple of 4 "
                                               "in [4, 80], got 1000"),
    (_set(("callbacks", 0, "initial"), torch.zeros(1, 3)),
     "callbacks[0].initial: expected shape (1, 4), got (1, 3)"),
    # optimiser
    (_set(("optimizer", "param_groups", 0, "lr"), 0.5),
     "optimizer.param_groups[0].lr: checkpoint has 0.5, expected 0.01"),
    (_set(("optimizer", "param_groups", 0, "params"), [0, 1]),
     "optimizer.param_groups[0].params: checkpoint has [0, 1], expected [0, 1, 2, 3, 4, 5]"),
    (_set(("optimizer", "param_groups"), []), "optimizer.param_groups: expected 1 groups, got 0"),
    (_set(("optimizer", "state", 0, "exp_avg"), torch.zeros(3)),
     "optimizer.state[0].exp_avg: expected shape (16, 2), got (3,)"),
    (_set(("optimizer", "state", 0, "exp_avg_sq"), lambda t: -t - 1),
     "optimizer.state[0].exp_avg_sq: holds negative values"),
    (_set(("optimizer", "state", 0, "step"), torch.tensor(-3.0)),
     "optimizer.state[0].step: expected a whole number of steps >= 0, got -3.0"),
    (_set(("optimizer", "state", 0, "step"), 20), "optimizer.state[0].step: expected a "
                                                  "floating-point scalar tensor, got 20"),
    (_set(("optimizer", "state", 9), {}), "optimizer.state[9]: expected a parameter index in "
                                          "0..5"),
    (_set(("optimizer", "state", 0, "momentum_buffer"), torch.zeros(16, 2)),
     "optimizer.state[0].momentum_buffer: not state of Adam"),
    # whose it is
    (_set(("meta",), None), "meta: expected a dict, got None"),
    (_set(("meta",), {"experiment": "exp5"}), "made for another run: meta.experiment: the "
                                              "checkpoint has 'exp5', this run has no such entry"),
    (_set(("identity", "config", "lr"), 0.5), "made for another configuration: "
                                              "identity.config.lr: checkpoint has 0.5, expected "
                                              "0.01"),
    (_set(("identity",), [1]), "identity: expected a dict, got [1]"),
]


@pytest.mark.parametrize("change, expected", CASES, ids=[e[:40] for _, e in CASES])
def test_a_broken_field_is_named_in_one_line_and_nothing_is_adopted(
        tmp_path, good_state, change, expected):
    state = copy.deepcopy(good_state)
    change(state)
    problem = _resume_error(tmp_path, state)
    assert problem.startswith(expected), problem


def test_the_good_checkpoint_resumes(tmp_path, good_state):
    # The cases above start from a checkpoint that is accepted as it is.
    path = save_checkpoint(tmp_path / "ckpt.pt", dict(good_state))
    trainer = _trainer(tmp_path, callbacks=True)
    trainer.load_state_dict(load_checkpoint(path), source=path)
    assert trainer.sequences == BUDGET
    assert len(trainer.curve) == 6 and len(trainer._window) == 2


def test_unreadable_and_foreign_files_are_checkpoint_errors(tmp_path, good_state):
    trainer = _trainer(tmp_path)
    trainer.checkpoint.write_bytes(b"\x80\x02garbage")
    with pytest.raises(CheckpointError, match=f"^{re.escape(str(trainer.checkpoint))}: not a "
                                              "readable lstmkit checkpoint"):
        trainer.run(resume=True)
    torch.save([1, 2], trainer.checkpoint)
    with pytest.raises(CheckpointError, match="not an lstmkit checkpoint .*got 'list'"):
        trainer.run(resume=True)


@pytest.mark.parametrize("meta, expect, problem", [
    (None, None, "meta: expected a dict, got None"),
    (None, {"cell": "lstm"}, "meta: expected a dict, got None"),
    ([("cell", "lstm")], {"cell": "lstm"}, "meta: expected a dict, got [('cell', 'lstm')]"),
    ({}, {"cell": "lstm"}, "made for another run: meta.cell: missing from the checkpoint, "
                           "expected 'lstm'"),
])
def test_load_checkpoint_checks_meta(tmp_path, meta, expect, problem):
    # The check a caller (such as the reproduce runner) makes before building a trainer.
    path = save_checkpoint(tmp_path / "c.pt", {"meta": meta})
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, expect)
    assert str(info.value) == f"{path}: {problem}"


def _first_run(tmp_path, **args):
    first = _trainer(tmp_path, **args)
    first.run()
    return first


def test_another_configuration_is_refused_without_meta(tmp_path):
    """As in the README: no ``meta`` given, and the trainer still knows its own checkpoints."""
    first = _first_run(tmp_path)
    again = _trainer(tmp_path)
    result = again.run(resume=True)  # its own checkpoint: the budget is already spent
    assert result.sequences == first.sequences and again.curve == first.curve
    for args, expected in [
        (dict(lr=1e-3), "identity.config.lr: checkpoint has 0.01, expected 0.001"),
        (dict(optimizer="sgd"), "identity.config.optimizer: checkpoint has 'adam', expected "
                                "'sgd'"),
        (dict(batch_size=8), "identity.config.batch_size: checkpoint has 4, expected 8"),
        (dict(max_sequences=160), "identity.config.max_sequences: checkpoint has 80, "
                                  "expected 160"),
        (dict(clip_norm=None), "identity.config.clip_norm: checkpoint has 1.0, expected None"),
        (dict(hidden=8), "identity.model.modules.layer.config: checkpoint has \"2, 4, "
                         "variant='lstm'\", expected \"2, 8, variant='lstm'\""),
        (dict(task_params={"T": 9}), "identity.task.params.T: checkpoint has 6, expected 9"),
        (dict(criteria=RecentSequences(window=7)), "identity.criteria.criterion: missing from "
                                                   "the checkpoint"),
        (dict(callbacks=True), "identity.callbacks.0: missing from the checkpoint"),
    ]:
        other = _trainer(tmp_path, **args)
        with pytest.raises(CheckpointError) as info:
            other.run(resume=True)
        assert str(info.value).startswith(f"{first.checkpoint}: made for another "
                                          f"configuration: {expected}"), args
        assert other.sequences == 0
        assert other.optimizer.param_groups[0]["lr"] == other.config.lr  # not adopted


def test_same_shapes_other_cell_is_refused(tmp_path):
    # peephole and niaf have the same parameter shapes: only the cell tells them apart.
    _first_run(tmp_path, variant="peephole")
    with pytest.raises(CheckpointError, match=r"identity\.model\.modules\.layer\.config: "
                                              r"checkpoint has .*peephole.*, expected .*niaf"):
        _trainer(tmp_path, variant="niaf").run(resume=True)


def test_meta_is_compared_both_ways(tmp_path):
    _first_run(tmp_path, meta={"experiment": "exp4", "cell": "lstm"})
    with pytest.raises(CheckpointError, match="made for another run: meta.experiment: "
                                              "checkpoint has 'exp4', expected 'exp5'"):
        _trainer(tmp_path, meta={"experiment": "exp5", "cell": "lstm"}).run(resume=True)
    with pytest.raises(CheckpointError, match="meta.experiment: the checkpoint has 'exp4', this "
                                              "run has no such entry"):
        _trainer(tmp_path).run(resume=True)
    with pytest.raises(CheckpointError, match="made for another run: meta.experiment: "
                                              "checkpoint has 'exp4', expected 'exp5'"):
        load_checkpoint(tmp_path / "ckpt.pt", {"experiment": "exp5"})


def test_changing_only_when_checkpoints_are_written_still_resumes(tmp_path):
    _first_run(tmp_path, max_sequences=40)
    straight = _first_run(tmp_path / "straight", max_sequences=40)
    resumed = _trainer(tmp_path, max_sequences=40, checkpoint_every=8)
    resumed.run(resume=True)
    assert resumed.sequences == straight.sequences and resumed.curve == straight.curve


def test_meta_must_hold_plain_values(tmp_path):
    with pytest.raises(TypeError, match=r"meta\['where'\]: expected str, int, float, bool, None"
                                        r", or a list, tuple or dict of them, got PosixPath"):
        _trainer(tmp_path, meta={"where": tmp_path})
    with pytest.raises(TypeError, match="meta: expected None or a dict, got list"):
        _trainer(tmp_path, meta=["exp4"])

    class Rate(float):  # pickled as an object of its class, which loading refuses
        pass

    with pytest.raises(TypeError, match=r"meta\['lr'\]\[1\]: .* got Rate"):
        _trainer(tmp_path, meta={"lr": [0.1, Rate(0.2)]})


class _Counter:
    """A user's callback that keeps a count and checks its state only by using it."""

    def __init__(self, every=1):
        self.every, self.count = every, 0

    def identity(self):
        return {"every": self.every}

    def after_step(self, trainer, loss, sequences):
        self.count += sequences

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = int(state["count"])


def test_other_callbacks_state_errors_and_identity(tmp_path):
    first = _trainer(tmp_path, max_sequences=8)
    first.callbacks = [_Counter()]
    first.run()
    state = torch.load(first.checkpoint, weights_only=True)
    assert state["callbacks"] == [{"count": 8}]
    other = _trainer(tmp_path, max_sequences=8)
    other.callbacks = [_Counter(every=2)]
    with pytest.raises(CheckpointError, match=r"identity\.callbacks\.0\.every: checkpoint has 1"):
        other.run(resume=True)
    del state["format"]
    state["callbacks"] = [{"total": 8}]
    path = save_checkpoint(first.checkpoint, state)
    again = _trainer(tmp_path, max_sequences=8)
    again.callbacks = [_Counter()]
    with pytest.raises(CheckpointError, match=f"^{re.escape(str(path))}: callbacks\\[0\\]: "
                                              "'count'$"):
        again.run(resume=True)
    assert again.sequences == 0


def test_checkpoint_error_crosses_process_boundaries_intact(tmp_path):
    # A worker process hands its exception back pickled: it must come back whole.
    path = tmp_path / "trial-0.pt"
    err = pickle.loads(pickle.dumps(CheckpointError(path, "sequences: expected an int, got 'x'")))
    assert type(err) is CheckpointError and isinstance(err, ValueError)
    assert str(err) == f"{path}: sequences: expected an int, got 'x'"
    assert err.path == path and err.problem == "sequences: expected an int, got 'x'"


def test_a_multi_line_problem_becomes_one_line(tmp_path):
    err = CheckpointError(tmp_path / "c.pt", "first\nsecond\n")
    assert str(err) == f"{tmp_path / 'c.pt'}: first second"


# -- progress bars ---------------------------------------------------------------------------


class _Stream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def _progress_writes(monkeypatch, tty):
    """Redraws of a trainer's bar over 200 batches that take a (fake) second each."""
    tqdm_std = pytest.importorskip("tqdm.std")
    clock = {"now": 0.0}

    def fake_time():
        clock["now"] += 1.0
        return clock["now"]

    monkeypatch.setattr(tqdm_std, "time", fake_time)
    monkeypatch.setattr(tqdm_std.tqdm, "monitor_interval", 0)  # no monitor thread
    stream = _Stream(tty)
    monkeypatch.setattr(progress_module.sys, "stderr", stream)
    bar = progress_module.progress_bar(200 * BATCH, 0, "exp", 1)
    for k in range(200):
        if k % 10 == 0:  # as the trainer sets its loss every logging interval
            progress_module.show_loss(bar, 0.1, 0.5)
        bar.update(BATCH)
    bar.close()
    return stream.getvalue()


def test_progress_bar_writes_a_line_a_minute_when_not_a_terminal(monkeypatch):
    text = _progress_writes(monkeypatch, tty=False)
    redraws = text.count("\r")
    # 200 fake seconds: the first draw, about one per minute, and the last.
    assert 2 <= redraws <= 6, redraws
    assert "\x1b[" not in text  # no cursor movements into a log
    assert text.endswith("\n") and "800/800" in text  # the final count stays in the log


def test_progress_bar_stays_live_on_a_terminal(monkeypatch):
    assert _progress_writes(monkeypatch, tty=True).count("\r") > 50


def test_trainer_progress_to_a_log(tmp_path, monkeypatch):
    pytest.importorskip("tqdm")
    stream = _Stream(False)
    monkeypatch.setattr(progress_module.sys, "stderr", stream)
    trainer = _trainer(tmp_path, checkpoint_every=0)
    trainer.progress = True
    trainer.run()
    text = stream.getvalue()
    assert f"{BUDGET}/{BUDGET}" in text and text.count("\n") == 1
