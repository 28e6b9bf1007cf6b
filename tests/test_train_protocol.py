"""The trainer asks a task only what :class:`~lstmkit.tasks.TrainingTask` declares: a task with
just the required part trains, and fixed splits and error measures come from the task."""

import pytest
import torch

import lstmkit
from lstmkit import tasks
from lstmkit.tasks import Batch, TrainingTask
from lstmkit.train import RecentSequences, TestSet, TrainConfig, Trainer

STEPS = 4


class Recall(TrainingTask):
    """Only the required part: output the first input at the last step."""

    def __init__(self):
        self.evaluated: list[int] = []  # batch sizes evaluate saw, in order

    def sample(self, batch_size, generator=None):
        inputs = torch.rand(STEPS, batch_size, 1, generator=generator)
        targets = torch.zeros(STEPS, batch_size, 1)
        targets[-1] = inputs[0]
        mask = torch.zeros(STEPS, batch_size, dtype=torch.bool)
        mask[-1] = True
        return Batch(inputs, targets, mask, torch.full((batch_size,), STEPS))

    def loss(self, outputs, batch):
        return ((outputs - batch.targets) ** 2)[batch.mask].mean()

    def evaluate(self, outputs, batch):
        self.evaluated.append(batch.batch_size)
        return ((outputs - batch.targets).abs()[-1, :, 0] < 0.5)


def _trainer(task, criteria=None, **config):
    torch.manual_seed(0)
    model = lstmkit.SequenceModel(lstmkit.LSTM(1, 3), 1)
    settings = dict(batch_size=4, max_sequences=16, check_every=8, log_every=8, test_size=6)
    settings.update(config)
    return Trainer(model, task, TrainConfig(**settings), criteria)


def test_a_task_with_only_the_required_part_trains():
    task = Recall()
    trainer = _trainer(task, {"stream": RecentSequences(window=8, max_wrong=8),
                              "test": TestSet(size=5, max_wrong=5)})
    result = trainer.run()
    assert result.test["size"] == 6  # tested on fresh sequences: no fixed test split
    assert task.evaluated[-1] == 6 and 5 in task.evaluated  # the test rule drew its own size
    assert set(result.milestones) == {"stream", "test"}
    assert trainer.identity()["task"] == {"class": "Recall", "params": {}}


class Measured(Recall):
    """Counts every sequence's errors as (0.5, 0.25), whatever the outputs."""

    def sequence_errors(self, outputs, batch):
        size = batch.batch_size
        return torch.full((size,), 0.5), torch.full((size,), 0.25)


@pytest.mark.parametrize("bound, holds", [(0.3, True), (0.2, False)])
def test_the_stopping_rules_bound_the_task_error_measure(bound, holds):
    criteria = {"stream": RecentSequences(window=4, max_wrong=4, max_mean_error=2 * bound),
                "test": TestSet(size=4, max_wrong=4, max_mean_abs_error=bound)}
    result = _trainer(Measured(), criteria).run()
    assert result.test["mse"] == 0.5 and result.test["mean_abs_error"] == 0.25
    assert set(result.milestones) == ({"stream", "test"} if holds else set())


def test_a_test_rule_is_checked_when_the_budget_ends_between_two_checks():
    """Budget 12, a check every 8: the rule is tested at 8 and again at 12, when training
    stops, so a net that meets it then is judged a success there, not a failure."""
    task = Recall()
    trainer = _trainer(task, {"test": TestSet(size=5, max_wrong=5)}, max_sequences=12,
                       check_every=8)
    calls = []
    check = trainer._check_test_rule
    trainer._check_test_rule = lambda rule: calls.append(trainer.sequences) or (
        check(rule) and trainer.sequences == 12)
    result = trainer.run()
    assert calls == [8, 12]
    assert result.milestones == {"test": 12}


class Split(Recall):
    """Fixed splits of 3 training and 5 test sequences."""

    def __init__(self, train=True):
        super().__init__()
        gen = torch.Generator().manual_seed(1)
        self.train_split = self.sample(3, gen) if train else None
        self.test_split = self.sample(5, gen)

    def train_batch(self):
        return self.train_split

    def test_batch(self):
        return self.test_split


def test_fixed_splits_come_from_the_task():
    task = Split()
    result = _trainer(task, {"test": TestSet(size=7, max_wrong=99)},
                      max_sequences=8).run()
    assert result.test["size"] == 5
    # The test rule once at 8 sequences, on both splits; then the final test on the test split.
    assert task.evaluated == [4, 4, 3, 5, 5]
    task = Split(train=False)
    _trainer(task, {"test": TestSet(size=7, max_wrong=99)}, max_sequences=8).run()
    assert task.evaluated == [4, 4, 5, 5]


def test_reber_trains_and_tests_on_its_fixed_splits():
    torch.manual_seed(0)
    task = tasks.make("reber", train_size=6, test_size=5)
    model = lstmkit.SequenceModel(lstmkit.LSTM(7, 3), 7, output_activation="sigmoid")
    config = TrainConfig(batch_size=2, max_sequences=4, check_every=4, log_every=4, test_size=9)
    result = Trainer(model, task, config).run()
    assert result.test["size"] == 5


def test_a_task_outside_the_protocol_is_refused():
    class Duck:
        def sample(self, batch_size, generator=None): ...
        def loss(self, outputs, batch): ...
        def evaluate(self, outputs, batch): ...

    model = lstmkit.SequenceModel(lstmkit.LSTM(1, 3), 1)
    with pytest.raises(TypeError, match="task: expected a lstmkit.tasks.TrainingTask .*got Duck"):
        Trainer(model, Duck(), TrainConfig())
