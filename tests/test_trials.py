"""Trials trained side by side (:mod:`lstmkit.train.trials`): the block-diagonal layout, the
per-trial optimiser, and that a trial's result does not depend on the trials beside it."""

from __future__ import annotations

import copy

import pytest
import torch

from _engine import engine_or_skip
from lstmkit import GRU, LSTM, RNN
from lstmkit.models import SequenceModel
from lstmkit.reproduce import runner
from lstmkit.tasks import make
from lstmkit.tasks.protocol import Batch
from lstmkit.train import TrainConfig, Trainer
from lstmkit.train.criteria import RecentSequences, TestSet
from lstmkit.train.trials import (
    CHUNK,
    CHUNK_ELEMENTS,
    BlockDiagonal,
    StepResult,
    TrialGroup,
    chunk_for,
    mergeable,
    train_trials,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """As the reproduction's workers run: these nets are far too small for a second thread, and
    on a busy machine idle threads spinning at every step cost more than the steps."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(kind: str, seed: int, outputs: int = 2, inputs: int = 3) -> SequenceModel:
    torch.manual_seed(seed)
    layer = {
        "lstm": lambda: LSTM(inputs, 5),
        "peephole": lambda: LSTM(inputs, 4, variant="peephole"),
        "cifg": lambda: LSTM(inputs, 4, variant="cifg", bias=False),
        "lstm1997": lambda: LSTM(inputs, 4, variant="lstm1997"),
        "gru": lambda: GRU(inputs, 4),
        "gru_cho": lambda: GRU(inputs, 4, variant="gru_cho"),
        "rnn": lambda: RNN(inputs, 4),
    }[kind]()
    shortcut = kind in ("lstm1997", "rnn")
    return SequenceModel(layer, outputs, input_shortcut=shortcut,
                         output_bias=kind != "cifg", output_activation="sigmoid")


@pytest.mark.parametrize("kind", ["lstm", "peephole", "cifg", "lstm1997", "gru", "gru_cho",
                                  "rnn"])
def test_each_slot_of_the_merged_network_computes_its_own_trial(kind):
    engine_or_skip()
    models = [_model(kind, seed) for seed in range(3)]
    blocks = BlockDiagonal(models[0], 3)
    packed = torch.stack([torch.cat([p.detach().reshape(-1) for p in m.parameters()])
                          for m in models])
    x = torch.randn(7, 3 * 2, 3)  # two sequences per trial, trial-major
    merged = blocks.to_columns(blocks.forward(packed, blocks.to_merged_inputs(x)))
    for k, model in enumerate(models):
        alone = model(x[:, 2 * k:2 * k + 2])
        torch.testing.assert_close(merged[:, 2 * k:2 * k + 2], alone, atol=1e-6, rtol=1e-5)


def test_a_trial_gets_exactly_its_own_gradient_and_adam_update():
    """Three group steps equal three steps of torch's Adam with clipping, trial by trial."""
    engine_or_skip()
    task = make("two_sequence", variant="a", T=8, N=2)
    models = [_model("lstm", seed, outputs=1, inputs=1) for seed in range(2)]
    group = TrialGroup(models[0], 2, optimizer="adam", lr=0.01, clip_norm=0.05)
    for k, m in enumerate(models):
        group.attach(k, m)
    batches = [task.sample(4, torch.Generator().manual_seed(k)) for k in range(2)]
    both = Batch.cat(batches)
    for _ in range(3):
        group.step(both.inputs, both, task.group_loss)
    for k in range(2):
        ref = _model("lstm", k, outputs=1, inputs=1)
        opt = torch.optim.Adam(ref.parameters(), lr=0.01)
        for _ in range(3):
            loss = task.loss(ref(batches[k].inputs), batches[k])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.05)
            opt.step()
        for (name, a), b in zip(ref.named_parameters(), models[k].parameters()):
            torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5, msg=name)
        state = group.adam_state(k)
        assert float(state["step"]) == 3.0


def test_mergeable_names_what_cannot_train_in_a_group():
    assert mergeable(torch.nn.Linear(2, 2)).startswith("expected a lstmkit")
    stacked = SequenceModel(LSTM(2, 4, num_layers=2), 1)
    assert "single-layer" in mergeable(stacked)
    normed = SequenceModel(LSTM(2, 4, variant="layernorm"), 1)
    assert "layer normalisation" in mergeable(normed)

    class Scaled(SequenceModel):
        def forward(self, x, lengths=None, **kwargs):
            return 2.0 * super().forward(x, lengths, **kwargs)

    assert "changes SequenceModel.forward" in mergeable(Scaled(LSTM(2, 4), 1))


def _job(seed, budget, **extra):
    return dict(experiment="exp3a", setting="paper", cell=None, seed=seed,
                max_sequences=budget, task_params={"T": 12}, checkpoint_dir=None,
                checkpoint_every=20_000, resume=False, progress=False, position=0, chunk=50,
                **extra)


def test_a_trial_reaches_the_same_result_alone_and_beside_others():
    """Exp. 3a (T=12) meets the paper's ST2 within a few thousand sequences."""
    engine_or_skip()
    alone = runner.run_group([_job(2, 6000)])[0]
    beside = runner.run_group([_job(3, 6000), _job(2, 6000)])[1]
    assert alone.success, "the row should succeed quickly: pick another seed"
    for key in ("success", "sequences", "milestones"):
        assert getattr(beside, key) == getattr(alone, key), key
    assert beside.test.wrong == alone.test.wrong


def _stream_trainer(seed: int, budget: int, path=None, every: int = 0) -> Trainer:
    task = make("adding1997", T=20)
    torch.manual_seed(seed)
    model = SequenceModel(LSTM(2, 4), 1, output_activation="identity")
    cfg = TrainConfig(optimizer="adam", lr=0.01, batch_size=2, max_sequences=budget,
                      clip_norm=1.0, check_every=100, checkpoint_every=every, test_size=8,
                      seed=seed, log_every=50)
    return Trainer(model, task, cfg, RecentSequences(window=100, max_wrong=0), checkpoint=path,
                   meta={"seed": seed})


def test_an_interrupted_group_resumes_to_the_uninterrupted_result(tmp_path):
    engine_or_skip()
    whole = [_stream_trainer(s, 600) for s in (0, 1)]
    train_trials(whole, chunk=10)
    paths = [tmp_path / f"trial-{s}.pt" for s in (0, 1)]
    cut = [_stream_trainer(s, 600, p, every=100) for s, p in zip((0, 1), paths)]
    record = cut[1].record

    def interrupt(*args, **kwargs):
        record(*args, **kwargs)
        if cut[1].sequences >= 350:
            raise KeyboardInterrupt

    cut[1].record = interrupt
    with pytest.raises(KeyboardInterrupt):
        train_trials(cut, chunk=10)
    again = [_stream_trainer(s, 600, p, every=100) for s, p in zip((0, 1), paths)]
    train_trials(again, chunk=10, resume=True)
    for a, b in zip(whole, again):
        assert a.sequences == b.sequences
        for (name, p), q in zip(a.model.named_parameters(), b.model.parameters()):
            torch.testing.assert_close(q, p, atol=1e-6, rtol=1e-5, msg=name)


def test_a_diverging_trial_ends_alone_and_the_others_are_unaffected():
    engine_or_skip()
    reference = _stream_trainer(1, 200)
    train_trials([reference], chunk=10)
    bad, good = _stream_trainer(0, 200), _stream_trainer(1, 200)
    with torch.no_grad():
        for p in bad.model.parameters():
            p.fill_(3e38)  # its activations overflow at once
    trials = train_trials([bad, good], chunk=10)
    assert trials[0].diverged is not None and "diverged" in trials[0].diverged
    assert trials[1].diverged is None
    for (name, p), q in zip(reference.model.named_parameters(), good.model.parameters()):
        torch.testing.assert_close(q, p, atol=1e-6, rtol=1e-5, msg=name)


def test_train_trials_refuses_two_trainers_of_one_model():
    a = _stream_trainer(0, 100)
    b = _stream_trainer(1, 100)
    b.model = a.model
    with pytest.raises(ValueError, match=r"trainers\[1\]: expected a model of its own"):
        train_trials([a, b])


def test_train_trials_refuses_trainers_that_differ_in_their_recipe():
    a, b = _stream_trainer(0, 100), _stream_trainer(1, 100)
    b.config.lr = 0.5
    with pytest.raises(ValueError, match=r"trainers\[1\]: expected the optimiser"):
        train_trials([a, b])


@pytest.mark.parametrize("kind", ["lstm", "peephole", "cifg", "lstm1997"])
def test_the_direct_kernel_gradient_equals_autograd_through_the_merged_network(kind):
    engine_or_skip()
    from lstmkit.engine import _build

    task = make("two_sequence", variant="a", T=8, N=2)
    models = [_model(kind, seed, outputs=1, inputs=1) for seed in range(3)]
    group = TrialGroup(models[0], 3, optimizer="sgd", lr=0.1, clip_norm=None)
    for k, m in enumerate(models):
        group.attach(k, m)
    batch = Batch.cat([task.sample(2, torch.Generator().manual_seed(k)) for k in range(3)])
    by_autograd = group._autograd_gradient(batch.inputs, batch, task.group_loss)
    by_kernels = group._kernel_gradient(_build.load(), batch.inputs, batch,
                                        task.group_loss_grad)
    for a, b in zip(by_autograd, by_kernels):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)
    assert by_kernels[2].abs().max() > 0


def test_every_experiments_batches_go_side_by_side():
    """Batches of different lengths from every row's task concatenate, padded along time
    (``info`` laid out along time included), and the task evaluates the result."""
    from lstmkit.reproduce.experiments import EXPERIMENTS

    seen = set()
    for exp in EXPERIMENTS.values():
        task = exp.make_task()
        if task.name in seen or "q" in task.params and task.params["q"] > 100:
            continue
        seen.add(task.name)
        parts = [task.sample(3, torch.Generator().manual_seed(k)) for k in range(4)]
        both = Batch.cat(parts)
        assert both.batch_size == 12 and both.steps == max(p.steps for p in parts)
        for k, part in enumerate(parts):
            again = both.columns(3 * k, 3 * k + 3)
            assert torch.equal(again.inputs[: part.steps], part.inputs), task.name
            outputs = torch.rand(both.steps, 12, task.output_size)
            assert task.evaluate(outputs, both).shape == (12,)
    assert {"reber", "adding1997", "two_sequence", "very_long_lag"} <= seen


def test_a_large_fresh_test_is_drawn_in_parts_and_counts_every_sequence(monkeypatch):
    from lstmkit.train import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "_TEST_PART", 40)
    tr = _stream_trainer(0, 10)
    seen = []
    sample = tr.task.sample

    def counted(n, generator=None):
        seen.append(n)
        return sample(n, generator=generator)

    tr.task.sample = counted
    correct, squared, absolute, loss = tr._test(100)
    assert seen == [40, 40, 20]
    assert correct.shape == squared.shape == absolute.shape == (100,)
    assert torch.isfinite(torch.as_tensor(loss))


def test_a_task_with_its_own_loss_is_asked_for_it_group_by_group():
    """A subclass that changes ``loss`` must not get the suite's squared-error formula."""
    base = make("two_sequence", variant="a", T=8, N=2)

    class Doubled(type(base)):
        def loss(self, outputs, batch):
            return 2.0 * super().loss(outputs, batch)

    task = Doubled(variant="a", T=8, N=2)
    batch = Batch.cat([task.sample(2, torch.Generator().manual_seed(k)) for k in range(3)])
    outputs = torch.rand(batch.steps, 6, 1)
    losses, grad = task.group_loss_grad(outputs, batch, 3)
    expected = torch.stack([task.loss(outputs[:, 2 * g:2 * g + 2], batch.columns(2 * g, 2 * g + 2))
                            for g in range(3)])
    torch.testing.assert_close(losses, expected)
    torch.testing.assert_close(task.group_loss(outputs, batch, 3), expected)
    _, plain_grad = base.group_loss_grad(outputs, batch, 3)
    torch.testing.assert_close(grad, 2.0 * plain_grad)


# -- the compiled step loop ---------------------------------------------------------------------

def _recipe_trainer(kind: str, seed: int, budget: int, criterion, *, optimizer: str = "sgd",
                    clip: float | None = None, batch: int = 1, check_every: int = 100,
                    activation: str = "sigmoid") -> Trainer:
    task = make("adding1997", T=20)
    torch.manual_seed(seed)
    layer = {
        "lstm": lambda: LSTM(2, 4),
        "peephole": lambda: LSTM(2, 3, variant="peephole"),
        "cifg": lambda: LSTM(2, 3, variant="cifg", bias=False),
        "lstm1997": lambda: LSTM(2, 4, variant="lstm1997"),
        "proj": lambda: LSTM(2, 5, proj_size=2),
    }[kind]()
    model = SequenceModel(layer, 1, input_shortcut=kind == "lstm1997",
                          output_bias=kind != "cifg", output_activation=activation)
    cfg = TrainConfig(optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 0.01,
                      batch_size=batch, max_sequences=budget, clip_norm=clip,
                      check_every=check_every, test_size=8, seed=seed, log_every=50)
    return Trainer(model, task, cfg, criterion, meta={"seed": seed})


def _params(trainer: Trainer) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()])


@pytest.mark.parametrize("kind,optimizer,clip,activation", [
    ("lstm", "sgd", None, "sigmoid"), ("peephole", "adam", 1.0, "identity"),
    ("cifg", "sgd", 0.5, "tanh"), ("lstm1997", "sgd", None, "sigmoid"),
    ("proj", "adam", None, "identity")])
def test_the_compiled_step_loop_trains_as_the_python_step(kind, optimizer, clip, activation):
    engine_or_skip()
    runs = {}
    for compiled in (False, True):
        trainers = [_recipe_trainer(kind, s, 120, RecentSequences(window=50, max_wrong=0),
                                    optimizer=optimizer, clip=clip, batch=2,
                                    activation=activation) for s in (0, 1, 2)]
        train_trials(trainers, chunk=20, compiled=compiled)
        runs[compiled] = trainers
    for a, b in zip(runs[False], runs[True]):
        assert (a.sequences, a.success_at) == (b.sequences, b.success_at)
        torch.testing.assert_close(_params(b), _params(a), atol=1e-5, rtol=1e-4)
        assert [c["loss"] for c in b.curve] == pytest.approx([c["loss"] for c in a.curve],
                                                             rel=1e-4, abs=1e-6)


def test_a_trial_ending_inside_a_compiled_run_keeps_the_weights_of_its_last_step():
    """One trial's rule holds after 7 sequences, in the middle of a chunk its neighbour trains
    through: it must end with the weights it had then, as in the Python loop."""
    engine_or_skip()
    runs = {}
    for compiled in (False, True):
        quick = _recipe_trainer("lstm", 0, 200, RecentSequences(window=7, max_wrong=7),
                                optimizer="adam")
        slow = _recipe_trainer("lstm", 1, 200, RecentSequences(window=50, max_wrong=0),
                               optimizer="adam")
        train_trials([quick, slow], chunk=25, compiled=compiled)
        runs[compiled] = (quick, slow)
    (qa, sa), (qb, sb) = runs[False], runs[True]
    assert qa.success_at == qb.success_at == 7
    for a, b in ((qa, qb), (sa, sb)):
        assert a.sequences == b.sequences
        torch.testing.assert_close(_params(b), _params(a), atol=1e-6, rtol=1e-5)
    assert not torch.equal(_params(qb), _params(sb))


def test_a_test_inside_a_compiled_run_sees_the_net_of_its_step(monkeypatch):
    """Tests fall due every 30 sequences, inside chunks of 50: each must judge the weights of
    its step, not those of the chunk's end."""
    engine_or_skip()
    seen = {}
    for compiled in (False, True):
        trainer = _recipe_trainer("lstm1997", 3, 150, TestSet(size=8, max_wrong=0),
                                  check_every=30)
        test = trainer._test
        seen[compiled] = []

        def spy(size, trainer=trainer, test=test, log=seen[compiled]):
            log.append((trainer.sequences, _params(trainer).clone()))
            return test(size)

        monkeypatch.setattr(trainer, "_test", spy)
        train_trials([trainer], chunk=50, compiled=compiled)
    assert [n for n, _ in seen[True]] == [n for n, _ in seen[False]]
    assert [n for n, _ in seen[True]][:3] == [30, 60, 90]
    for (_, a), (_, b) in zip(seen[False], seen[True]):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)


def test_the_compiled_loop_serves_lstm_groups_on_squared_error_tasks_only():
    engine_or_skip()
    group = TrialGroup(_recipe_trainer("lstm", 0, 10, TestSet()).model, 2, optimizer="sgd",
                       lr=0.1, clip_norm=None)
    assert group.compiled_for(make("adding1997", T=20))
    assert not group.compiled_for(make("copy", T=5))  # cross-entropy
    gru = TrialGroup(_model("gru", 0), 2, optimizer="sgd", lr=0.1, clip_norm=None)
    assert not gru.compiled_for(make("adding1997", T=20))


def test_a_softmax_readout_trains_each_trial_on_its_own_cross_entropy():
    """Each trial's softmax normalises its own outputs only; the direct kernel gradient
    through it equals autograd, and equals each trial's own gradient; the compiled loop
    declines it (the Python step loop trains it)."""
    engine_or_skip()
    from lstmkit.engine import _build

    task = make("noiseless_lag", p=4).with_softmax_readout()

    def model(seed: int) -> SequenceModel:
        torch.manual_seed(seed)
        return SequenceModel(LSTM(5, 4), 5, output_activation="softmax")

    models = [model(seed) for seed in range(3)]
    group = TrialGroup(models[0], 3, optimizer="sgd", lr=0.1, clip_norm=None)
    for k, m in enumerate(models):
        group.attach(k, m)
    assert not group.compiled_for(task)
    batches = [task.sample(2, torch.Generator().manual_seed(k)) for k in range(3)]
    batch = Batch.cat(batches)
    by_autograd = group._autograd_gradient(batch.inputs, batch, task.group_loss)
    by_kernels = group._kernel_gradient(_build.load(), batch.inputs, batch,
                                        task.group_loss_grad)
    by_logits = group._kernel_gradient(_build.load(), batch.inputs, batch,
                                       task.group_loss_grad, task.group_loss_logit_grad)
    for a, b, c in zip(by_autograd, by_kernels, by_logits):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(c, a, atol=1e-6, rtol=1e-5)
    for k in range(3):
        alone = model(k)
        loss = task.loss(alone(batches[k].inputs), batches[k])
        loss.backward()
        grad = torch.cat([p.grad.reshape(-1) for p in alone.parameters()])
        torch.testing.assert_close(by_kernels[1][k], loss.detach())
        torch.testing.assert_close(by_kernels[2][k], grad, atol=1e-6, rtol=1e-5)


def test_chunk_for_caps_only_batches_too_large_to_draw_fifty_at_a_time():
    assert chunk_for(16 * 110 * 2) == CHUNK  # the adding problem, modern batches
    assert chunk_for(16 * 530 * 504) == CHUNK  # Exp. 2c, q = p = 500
    big = 16 * 1060 * 1004  # Exp. 2c, q = p = 1000: 50 batches would be 3.4 GiB of float32
    assert chunk_for(big) == CHUNK_ELEMENTS // big < CHUNK
    assert chunk_for(CHUNK_ELEMENTS * 2) == 1
    with pytest.raises(ValueError, match="batch_elements"):
        chunk_for(0)


def test_a_group_divergence_names_what_stopped_being_finite():
    res = StepResult(torch.zeros(1, 2, 1), [19.8, float("nan")], [False, False],
                     [float("inf"), float("nan")])
    assert res.what_diverged(0) == "gradient norm became inf"  # the loss itself was finite
    assert res.what_diverged(1) == "loss became nan"


def test_a_confidently_wrong_softmax_readout_still_gets_its_exact_gradient():
    """Logits 120 apart: the target's probability, e^-120, underflows to 0 in float32, yet its
    loss (120 a step) is finite, and so is the true gradient, y - t per step. The logarithm of
    the probability would make the loss infinite, and dividing by it on the way through the
    softmax would make the gradient NaN, ending the trial as if it had diverged; every training
    path must give what float64 gives."""
    engine_or_skip()
    from lstmkit.engine import _build

    task = make("noiseless_lag", p=4).with_softmax_readout()
    torch.manual_seed(0)
    model = SequenceModel(LSTM(5, 4), 5, output_activation="softmax")
    with torch.no_grad():
        model.readout.weight.zero_()
        model.readout.bias.copy_(torch.tensor([60.0, -60.0, -60.0, -60.0, -60.0]))
    batch = task.sample(4, torch.Generator().manual_seed(0))
    assert bool((batch.targets[..., 1:].sum(-1) * batch.mask).gt(0).any()), "pick another seed"
    group = TrialGroup(model, 1, optimizer="sgd", lr=0.1, clip_norm=None)
    group.attach(0, model)
    res = group.step(batch.inputs, batch, task.group_loss, update=False,
                     loss_grad=task.group_loss_grad, logit_grad=task.group_loss_logit_grad)
    assert res.finite == [True] and 50 < res.losses[0] < 121
    exact = copy.deepcopy(model).double()
    loss = task.loss(exact(batch.inputs.double()), batch)
    loss.backward()
    want = torch.cat([p.grad.reshape(-1) for p in exact.parameters()])
    torch.testing.assert_close(torch.tensor(res.norms[0], dtype=torch.float64), want.norm(),
                               rtol=1e-4, atol=0)
    _, _, got = group._kernel_gradient(_build.load(), batch.inputs, batch,
                                       task.group_loss_grad, task.group_loss_logit_grad)
    torch.testing.assert_close(got[0].double(), want, rtol=1e-4, atol=1e-6)
    _, _, got = group._autograd_gradient(batch.inputs, batch, task.group_loss)
    torch.testing.assert_close(got[0].double(), want, rtol=1e-4, atol=1e-6)
    task.loss(model(batch.inputs), batch).backward()  # the one-network trainer's path
    got = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)
