"""The paper's on-line rule (truncated RTRL, weights changed after every time step) against
lstmkit's truncated gradient, and its wiring into the paper setting."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from lstmkit import LSTM
from lstmkit.models import SequenceModel
from lstmkit.reproduce.experiments import criteria_for, get
from lstmkit.reproduce.nets import build, recipe_for, train_config
from lstmkit.reproduce.runner import _make_trainer
from lstmkit.train import SequentialConstruction
from lstmkit.train.online import OnlineTrainer, check_online, online_step
from lstmkit.train.trials import CompiledChunk, TrialGroup


def _paper_net(name: str, params: dict | None = None, seed: int = 2000):
    exp = get(name)
    task = exp.make_task(params)
    setting = exp.setting(task)
    torch.manual_seed(seed)
    return task, setting, build(task, setting, recipe_for("paper", None, setting))


@pytest.mark.parametrize("name, params", [("exp1", {}), ("exp2a", {"p": 5})])
def test_online_step_is_the_truncated_gradient_to_first_order(name: str, params: dict) -> None:
    # With a tiny learning rate the per-step changes do not yet affect each other, so a
    # sequence's summed change is -alpha/2 times the gradient of its squared error through
    # lstmkit's truncated cell (errors back in time only through the cell state).
    task, _, model = _paper_net(name, params)
    model = model.double()
    with torch.no_grad():
        model.readout.weight.uniform_(-0.5, 0.5)  # every cell reaches the outputs
    batch = task.sample(1, generator=torch.Generator().manual_seed(3))
    ref = copy.deepcopy(model)
    out = ref(batch.inputs.double(), batch.lengths)
    ((out - batch.targets.double()).pow(2) * batch.mask.unsqueeze(-1)).sum().backward()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    alpha = 1e-7
    online_step(model, batch, alpha)
    grads = dict(ref.named_parameters())
    for key, param in model.named_parameters():
        change = (param.detach() - before[key]) / alpha
        expected = -0.5 * grads[key].grad
        assert torch.allclose(change, expected, atol=1e-7, rtol=1e-5), key


def test_online_step_changes_weights_within_the_sequence() -> None:
    # On-line learning: the output at step t is computed with the weights step t - 1 left, so
    # with a large rate the outputs differ from those of the weights the sequence started with.
    task, _, model = _paper_net("exp1")
    batch = task.sample(1, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fixed = model(batch.inputs, batch.lengths)
    outputs, loss = online_step(model, batch, 5.0)
    assert torch.allclose(outputs[0], fixed[0], atol=1e-5)  # the first step sees no change
    assert not torch.allclose(outputs[1:], fixed[1:], atol=1e-3)
    expected = ((fixed[:1] - batch.targets[:1]).pow(2)).sum()
    assert loss > float(expected)  # the sum over all steps, not the first only


def test_online_step_leaves_held_readout_columns_alone() -> None:
    task, _, model = _paper_net("exp2a", {"p": 5})
    with torch.no_grad():
        model.readout.weight[:, :1] = 0.0
    batch = task.sample(2, generator=torch.Generator().manual_seed(0))
    cell_in = model.layer.weight_ih_l0.detach().clone()
    online_step(model, batch, 1.0, held=torch.ones(model.readout.weight.shape[0], 1,
                                                   dtype=torch.bool))
    assert (model.readout.weight[:, :1] == 0).all()
    assert torch.equal(model.layer.weight_ih_l0, cell_in)  # no error reaches an absent cell


def test_online_refuses_what_it_cannot_train() -> None:
    with pytest.raises(TypeError, match="model: expected a SequenceModel"):
        check_online(LSTM(3, 4))
    modern = SequenceModel(LSTM(3, 4), 2, output_activation="sigmoid")
    with pytest.raises(ValueError, match="forget_gate"):
        check_online(modern)
    task, _, model = _paper_net("exp2a", {"p": 5})
    with pytest.raises(ValueError, match="alpha: expected a positive number"):
        online_step(model, task.sample(1), 0.0)


def test_paper_setting_trains_on_line() -> None:
    # The paper's own net under the paper setting gets the on-line trainer at the paper's alpha
    # (not the SGD recipe's alpha / 2), trial by trial; another cell keeps plain SGD.
    exp = get("exp1")
    setting = exp.setting(exp.make_task())
    assert recipe_for("paper", None, setting).online
    assert not recipe_for("paper", "rnn", setting).online
    # Errors at sequence ends only: one change per sequence is the paper's rule already.
    exp3a = get("exp3a")
    assert not recipe_for("paper", None, exp3a.setting(exp3a.make_task())).online
    trainer, _ = _make_trainer("exp1", "paper", None, 2000, 100, task_params=None,
                               checkpoint_dir=None, checkpoint_every=0, progress=False,
                               position=0)
    assert isinstance(trainer, OnlineTrainer) and trainer.alpha == setting.learning_rate
    result = trainer.run()
    assert result.sequences == 100


@pytest.mark.parametrize("name, params", [("exp4-T100", {"T": 20}),
                                          ("exp2c-q50-p50", {"p": 5, "q": 5})])
def test_end_error_rows_train_by_the_papers_rule_at_its_alpha(name: str, params: dict) -> None:
    # Rows with an error at the sequence end only train trials side by side, one SGD step per
    # sequence in the compiled loop; that step must be Appendix A.1's change at Table 10's
    # alpha (eqs. 19-28), as the on-line rule makes it, sequence after sequence.
    trainer, _ = _make_trainer(name, "paper", None, 2000, 10, task_params=params,
                               checkpoint_dir=None, checkpoint_every=0, progress=False,
                               position=0, chunk=3)
    assert not isinstance(trainer, OnlineTrainer)
    model, task = trainer.model, trainer.task
    batch = task.sample(3, generator=torch.Generator().manual_seed(5))
    ref = copy.deepcopy(model)
    before = copy.deepcopy(model)
    online_step(ref, batch, get(name).setting(task).learning_rate)
    group = TrialGroup(model, 1, optimizer="sgd", lr=trainer.config.lr, clip_norm=None)
    group.attach(0, model, None)
    chunk = CompiledChunk(group, batch, 3, 1)
    chunk.set_scale(task.loss_kind, batch.mask)
    assert group.run_steps(chunk, 0, 3) == 3
    group.detach(0, model)
    for (key, got), want, old in zip(model.named_parameters(), ref.parameters(),
                                     before.parameters()):
        assert (want - old).abs().max() > 1e-6, key  # the rule changes every weight tensor
        assert torch.allclose(got - old, want - old, atol=1e-7, rtol=1e-3), key


def test_online_trainer_refuses_clipping() -> None:
    task, setting, model = _paper_net("exp2a", {"p": 5})
    recipe = recipe_for("paper", None, setting)
    config = train_config(recipe, max_sequences=10, seed=0, test_size=2, check_every=10)
    config = dataclasses.replace(config, clip_norm=1.0)
    with pytest.raises(ValueError, match="clip_norm"):
        OnlineTrainer(model, task, config, criteria_for(setting), alpha=1.0)


def test_sequential_construction_reports_held_weights() -> None:
    weight = torch.zeros(3, 4)
    rule = SequentialConstruction(weight, 2)
    assert rule.held_mask is not None and rule.held_mask.shape == (3, 2)
    assert bool(rule.held_mask.all())
    rule.held[:] = False
    assert rule.held_mask is None
