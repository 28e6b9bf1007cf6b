"""The paper setting's stopping rules and sequential construction against the paper's wording."""

from __future__ import annotations

import pytest
import torch

from lstmkit import tasks
from lstmkit.reproduce.experiments import criteria_for, describe_criteria, get
from lstmkit.reproduce.nets import build, recipe_for
from lstmkit.tasks.protocol import Batch
from lstmkit.train import SequentialConstruction
from lstmkit.train.criteria import RecentSequences, TestSet


def _setting(name: str):
    exp = get(name)
    return exp.setting(exp.make_task())


@pytest.mark.parametrize("name", ["exp2a", "exp2b"])
def test_exp2ab_success_is_a_frozen_weight_test(name: str) -> None:
    # "after training, during 10,000 successive, randomly chosen input sequences, the maximal
    # absolute error of all output units is always below 0.25": a test of the frozen net, not
    # a window over the training stream (which could not hold before 10,000 sequences).
    rules = criteria_for(_setting(name))
    assert list(rules) == ["ABS"]
    rule = rules["ABS"]
    assert isinstance(rule, TestSet)
    assert rule.size == 10_000 and rule.max_wrong == 0
    assert "frozen" in describe_criteria(_setting(name))["ABS"]


def test_exp2c_success_stays_a_window_over_training_sequences() -> None:
    # Exp. 2c's wording has no "after training": ABS(0.2) for 10,000 successive sequences.
    rules = criteria_for(_setting("exp2c-q50-p50"))
    assert isinstance(rules["ABS"], RecentSequences) and rules["ABS"].window == 10_000


def test_exp2a_test_batch_is_its_two_sequences() -> None:
    task = tasks.make("noiseless_lag", p=5)
    batch = task.test_batch()
    assert batch is not None and batch.batch_size == 2
    assert batch.info["label"].tolist() == [0, 1]
    first = batch.inputs[0].argmax(-1).tolist()
    last = batch.targets[-1].argmax(-1).tolist()
    assert first == last == [4, 5]  # x = a_p, y = a_{p+1}: the first symbol is the last
    assert tasks.make("noiseless_lag_random", p=5).test_batch() is None


def test_exp2a_frozen_test_can_hold_early() -> None:
    # The rule is judged on the frozen net: a net that is right on both sequences passes at
    # once, long before 10,000 training sequences could have filled a window.
    task = tasks.make("noiseless_lag", p=5)
    rule = criteria_for(task.setting)["ABS"]
    batch = task.test_batch()
    right = batch.targets.clone()
    assert rule.judge(task.evaluate(right, batch).tolist(), [0.0, 0.0])
    wrong = right.clone()
    wrong[-1, 0] = 0.5
    assert not rule.judge(task.evaluate(wrong, batch).tolist(), [0.0, 0.0])


class _Trainer:
    sequences = 0


def _feed(cb: SequentialConstruction, losses: list[float], trainer: _Trainer) -> int | None:
    for loss in losses:
        trainer.sequences += 1
        cb.after_step(trainer, loss, 1)
    return cb.added_at


def test_plateau_rule_waits_while_the_loss_falls_and_adds_on_a_plateau() -> None:
    weight = torch.nn.Parameter(torch.full((3, 4), 0.3))
    cb = SequentialConstruction(weight, 1, window=10, min_improvement=0.05)
    trainer = _Trainer()
    # falling 10 % per window: no plateau
    losses = [0.9 ** (k // 10) for k in range(50)]
    assert _feed(cb, losses, trainer) is None
    assert torch.all(weight[:, 0] == 0) and torch.all(weight[:, 1:] == 0.3)
    # a window only 2 % below the previous one is a plateau: the cells join after it
    assert _feed(cb, [0.9 ** 4 * 0.98] * 10, trainer) == 60
    assert torch.all(weight[:, 0] == 0.3)


class _FixedNet(torch.nn.Module):
    """Outputs 0.5 on unit 0 and 0.1 on the others, whatever the input."""

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        out = torch.full((*inputs.shape[:2], 3), 0.1)
        out[..., 0] = 0.5
        return out


class _TaskWithTest:
    def test_batch(self) -> Batch:
        T, B = 4, 2
        return Batch(torch.zeros(T, B, 1), torch.zeros(T, B, 3), torch.ones(T, B, dtype=torch.bool),
                     torch.full((B,), T))


def test_plateau_rule_with_a_tolerance_joins_only_the_unlearned_outputs() -> None:
    # §4: memory cells are kept from "perturbing already learned outputs" by zero weights.
    weight = torch.nn.Parameter(torch.full((3, 4), 0.3))
    cb = SequentialConstruction(weight, 2, window=10, min_improvement=0.05, tolerance=0.25)
    trainer = _Trainer()
    trainer.task, trainer.model = _TaskWithTest(), _FixedNet()
    assert _feed(cb, [1.0] * 20, trainer) == 20
    # unit 0 is wrong by 0.5 on the test sequences: the cells join it; units 1, 2 are learned
    assert torch.all(weight[0, :2] == 0.3) and torch.all(weight[1:, :2] == 0)
    assert torch.all(weight[:, 2:] == 0.3)
    assert cb.held_mask is not None and cb.held_mask.tolist() == [[False, False], [True, True],
                                                                   [True, True]]
    with torch.no_grad():
        weight.add_(1.0)  # an optimiser's step
    _feed(cb, [1.0], trainer)
    assert torch.all(weight[1:, :2] == 0) and torch.all(weight[0, :2] == 1.3)
    state = cb.state_dict()
    restored = SequentialConstruction(torch.nn.Parameter(torch.zeros(3, 4)), 2, tolerance=0.25)
    restored.load_state_dict(state)
    assert torch.equal(restored.held, cb.held) and restored.added_at == 20


class _TaskWrongEarly:
    """Unit 1's target is 1 at the first step only: the fixed net's 0.1 is wrong there by 0.9
    and right at the end."""

    def test_batch(self) -> Batch:
        T, B = 4, 2
        targets = torch.zeros(T, B, 3)
        targets[0, :, 1] = 1.0
        return Batch(torch.zeros(T, B, 1), targets, torch.ones(T, B, dtype=torch.bool),
                     torch.full((B,), T))


@pytest.mark.parametrize("at_end", [False, True])
def test_plateau_rule_judges_where_the_success_rule_does(at_end: bool) -> None:
    weight = torch.nn.Parameter(torch.full((3, 2), 0.3))
    cb = SequentialConstruction(weight, 1, window=10, tolerance=0.25, at_end=at_end)
    trainer = _Trainer()
    trainer.task, trainer.model = _TaskWrongEarly(), _FixedNet()
    assert _feed(cb, [1.0] * 20, trainer) == 20
    joined = (~cb.held).any(1).tolist()
    assert joined == ([True, False, False] if at_end else [True, True, False])


def test_plateau_rule_defaults_and_checks() -> None:
    cb = SequentialConstruction(torch.nn.Parameter(torch.zeros(2, 3)), 1)
    assert (cb.window, cb.min_improvement) == (100, 0.01)
    for bad in (dict(window=0), dict(window=2.5), dict(min_improvement=1.0),
                dict(min_improvement=-0.1), dict(min_improvement="1%")):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SequentialConstruction(torch.nn.Parameter(torch.zeros(2, 3)), 1, **bad)
    for bad in (dict(tolerance=0.0), dict(tolerance=1.5), dict(tolerance=True),
                dict(sample_size=0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SequentialConstruction(torch.nn.Parameter(torch.zeros(2, 3)), 1, **bad)


def test_exp2a_paper_cell_state_drift_and_its_remedy() -> None:
    # Table 10 row 2a: g logistic in [0, 1], no biases, no output gate, h = identity. Every step
    # adds y_in * g > 0 to the state, so with Table 10's weights alone a new cell's output reaches
    # about p / 4 at the sequence end, for both sequences alike: the drift that saturates the
    # output units as soon as the cell joins (docs/paper-setting-notes.md, E6). The paper
    # setting starts the input gate nearly shut (§4's remedy), which keeps the state small.
    import dataclasses

    exp = get("exp2a")
    task = exp.make_task()
    setting = exp.setting(task)
    assert setting.input_gate_shift < 0
    literal = dataclasses.replace(setting, input_gate_shift=0.0)
    batch = task.test_batch()
    for seed in (2000, 2001):
        ends = []
        for row in (literal, setting):
            torch.manual_seed(seed)
            model = build(task, row, recipe_for("paper", None, row))
            assert model.num_weights() == 10504  # the shift changes values, not the net
            with torch.no_grad():
                cell, _ = model.layer(batch.inputs, None, lengths=batch.lengths)
            state = cell[..., 0]  # h = identity and no output gate: the output is the state
            assert (state.diff(dim=0) > 0).all()
            ends.append(state[-1])
        assert (ends[0] > 20).all()
        assert (ends[1] < 5).all()


def test_a_setting_whose_output_units_differ_from_the_task_is_refused() -> None:
    """The paper net's output units are the task's; a row asking for others is an error, not a
    net built without them."""
    import dataclasses

    exp = get("exp4-T100")
    task = exp.make_task()
    setting = exp.setting(task)
    build(task, setting, recipe_for("paper", None, setting))  # the row as it is builds
    linear = dataclasses.replace(setting, output_activation="identity")
    with pytest.raises(ValueError, match="output_activation 'identity' differs from the task"):
        build(task, linear, recipe_for("paper", None, linear))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_exp2a_paper_setting_trial_succeeds(seed: int) -> None:
    # The paper setting end to end on Exp. 2a with a short lag (p = 10, so it fits the suite):
    # on-line updates, the cell added on the plateau and joined to the outputs that still err
    # (x and y), the input gate started nearly shut; the frozen-weight test passes.
    from lstmkit.reproduce.runner import _make_trainer

    trainer, (construction,) = _make_trainer(
        "exp2a", "paper", None, seed, 20_000, task_params={"p": 10}, checkpoint_dir=None,
        checkpoint_every=0, progress=False, position=0)
    trainer.run()
    assert construction.added_at is not None
    joined = (~construction.held).any(1).nonzero().flatten().tolist()
    assert joined == [9, 10]  # x = a_10 and y = a_11: the symbols only the cell can tell apart
    assert "ABS" in trainer.milestones and trainer.milestones["ABS"] <= 5_000


def test_exp1_paper_setting_trial_succeeds() -> None:
    # The paper setting end to end on Exp. 1: the 3x2 net of Table 10 row 1-5, on-line
    # updates at the paper's alpha, the training/test pair of its tens of seeds, and the rule
    # checked on both whole sets. The row's nets succeed in about one trial in five
    # (docs/paper-setting-notes.md, E21); this seed is one that does, at 5,800 sequences.
    from lstmkit.reproduce import run

    result = run("exp1", setting="paper", trials=1, seed=5028, max_sequences=8_000,
                 workers=1, progress=False)
    (trial,) = result.trials
    assert trial.success  # within 8,000 sequences (5,800 here)
    assert trial.test is not None and trial.test.wrong == 0
    assert result.task_params["seed"] == 502


def test_exp2b_paper_net_sees_only_a_sum_of_per_symbol_increments() -> None:
    # The premises of the argument for why Exp. 2b's paper net cannot meet its rule while it
    # lowers the per-step error (docs/paper-setting-notes.md, E20): the one cell reads only the
    # current input and adds y_in * g > 0, so its state is a sum of positive per-symbol
    # increments (nondecreasing, blind to order), and every output reads only that state and
    # the current input. Weights scaled up so that the checks are not about small numbers.
    exp = get("exp2b")
    task = tasks.make("noiseless_lag_random", p=6)
    setting = exp.setting(task)
    torch.manual_seed(0)
    model = build(task, setting, recipe_for("paper", None, setting))
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(10)
    batch = task.sample(64, torch.Generator().manual_seed(1))
    with torch.no_grad():
        cell, _ = model.layer(batch.inputs, None, lengths=batch.lengths)
    state = cell[..., 0]  # h = identity and no output gate: the cell's output is its state
    steps = torch.cat([state[:1], state.diff(dim=0)])
    assert (steps > 0).all()
    symbol = batch.inputs.argmax(-1)
    for k in symbol.unique():
        same = steps[symbol == k]
        assert torch.allclose(same, same[0].expand_as(same), rtol=1e-5, atol=1e-6)
    # Two sequences with the same first symbol and the same middle symbols in another order
    # reach the same state and give the same outputs at every step after the reordered part.
    first, a, b, c = task.p - 1, 0, 1, 2  # x, then three middle symbols
    seqs = torch.tensor([[first, a, b, c, c, a, first], [first, b, a, c, c, a, first]]).T
    pair = tasks.base.next_symbol_batch(seqs, task.p + 1)
    with torch.no_grad():
        out = model(pair.inputs, pair.lengths)
    assert torch.allclose(out[3:, 0], out[3:, 1], atol=1e-6)
    assert not torch.allclose(out[1, 0], out[1, 1], atol=1e-3)  # where the inputs differ
