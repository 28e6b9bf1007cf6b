"""Robustness (issue 7): very long sequences, diverging training, bad command lines, determinism.

Checkpoint corruption, untrusted files and SIGKILL-then-resume are tested in
``test_train_units.py`` and ``test_reproduce.py``; layer argument errors in ``test_layers.py``.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lstmkit
from lstmkit import tasks
from lstmkit.cells import PRESETS
from lstmkit.cli import main
from lstmkit.reproduce import EXPERIMENTS
from lstmkit.reproduce.nets import recipe_for
from lstmkit.reproduce.runner import run_trial
from lstmkit.train import TrainConfig, Trainer, TrainingDiverged
from lstmkit.train.checkpoint import load_checkpoint
from lstmkit.train.trials import StepResult, TrialGroup

LAYERS = {"lstm": lstmkit.LSTM, "gru": lstmkit.GRU, "rnn": lstmkit.RNN}

# -- numerics: 10,000 steps -----------------------------------------------------------------

STEPS = 10_000


@pytest.fixture
def one_thread():
    # 10,000 tiny steps: with several threads, per-step synchronisation (worse on a loaded
    # machine) costs far more than the arithmetic.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("variant", list(PRESETS))
def test_ten_thousand_steps_stay_finite_forward_and_backward(variant, one_thread):
    spec = PRESETS[variant]
    torch.manual_seed(0)
    layer = LAYERS[spec.family](3, 8, variant=variant)
    x = torch.randn(STEPS, 2, 3, generator=torch.Generator().manual_seed(1))
    out, state = layer(x)
    states = state if isinstance(state, tuple) else (state,)
    (out.sum() + sum(s.sum() for s in states)).backward()

    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    for s in states:
        assert torch.isfinite(s).all()
    for name, param in layer.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
    if spec.family == "lstm" and variant != "niaf":
        # Without a forget gate the cell state may only grow linearly: each step adds i*g with
        # |i| <= 1 and |g| <= 2 (lstm1997's g; tanh elsewhere), far below float32's range.
        assert states[1].abs().max() <= 2 * STEPS


# -- trainer: divergence and clipping -------------------------------------------------------

def _trainer(tmp_path, **overrides):
    torch.manual_seed(0)
    task = tasks.make("adding", T=12)
    model = lstmkit.SequenceModel(lstmkit.LSTM(2, 6), 1)
    settings = dict(batch_size=4, max_sequences=400, checkpoint_every=40, check_every=40,
                    log_every=40, test_size=16, seed=0)
    settings.update(overrides)
    return Trainer(model, task, TrainConfig(**settings), checkpoint=tmp_path / "ckpt.pt",
                   meta={"cell": "lstm"})


def _assert_checkpoint_is_good(trainer, sequences):
    state = load_checkpoint(trainer.checkpoint, {"cell": "lstm"})
    assert state["sequences"] == sequences
    fresh = lstmkit.SequenceModel(lstmkit.LSTM(2, 6), 1)
    fresh.load_state_dict(state["model"])
    for name, param in fresh.named_parameters():
        assert torch.isfinite(param).all(), name


def _nan_loss_after(task, steps):
    real, calls = task.loss, {"n": 0}

    def loss(outputs, batch):
        calls["n"] += 1
        value = real(outputs, batch)
        return value * float("nan") if calls["n"] > steps else value

    return loss


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = _trainer(tmp_path)
    trainer.task.loss = _nan_loss_after(trainer.task, 25)  # steps 1..25: 100 sequences
    with pytest.raises(TrainingDiverged, match=r"loss became nan .* after 100 training "
                                               r"sequences; the last good checkpoint is kept "
                                               rf"at {trainer.checkpoint}"):
        trainer.run()
    _assert_checkpoint_is_good(trainer, 80)


class _InfiniteGradient(torch.autograd.Function):
    """Identity forward, infinite backward: a finite loss whose gradient overflows."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


def _infinite_gradient_at(task, step):
    real, calls = task.loss, {"n": 0}

    def loss(outputs, batch):
        calls["n"] += 1
        if calls["n"] == step:
            outputs = _InfiniteGradient.apply(outputs)
        return real(outputs, batch)

    return loss


def test_overflowing_gradient_is_caught_before_the_weights_are_spoiled(tmp_path):
    trainer = _trainer(tmp_path)
    assert trainer.config.clip_norm is not None
    trainer.task.loss = _infinite_gradient_at(trainer.task, 13)
    with pytest.raises(TrainingDiverged, match="gradient norm became (inf|nan) .* after 48 "):
        trainer.run()
    for name, param in trainer.model.named_parameters():
        assert torch.isfinite(param).all(), name
    _assert_checkpoint_is_good(trainer, 40)


def test_without_clipping_spoiled_weights_never_overwrite_the_checkpoint(tmp_path):
    # The paper's plain SGD: no norm to look at, so the bad update happens (step 20, reaching
    # 80 sequences) and the checkpoint due right after it must refuse the non-finite weights.
    trainer = _trainer(tmp_path, optimizer="sgd", lr=0.1, clip_norm=None)
    trainer.task.loss = _infinite_gradient_at(trainer.task, 20)
    with pytest.raises(TrainingDiverged, match=r"weight \S+ became non-finite .* after 80 "):
        trainer.run()
    _assert_checkpoint_is_good(trainer, 40)


def test_a_huge_learning_rate_diverges_with_a_clear_error(tmp_path):
    trainer = _trainer(tmp_path, optimizer="sgd", lr=1e30, checkpoint_every=0)
    with pytest.raises(TrainingDiverged, match=r"training diverged: .* after \d+ training "
                                               r"sequences; no checkpoint was written yet"):
        trainer.run()
    assert not trainer.checkpoint.exists()


def test_clipping_is_on_by_default_and_off_in_the_papers_setting():
    assert TrainConfig().clip_norm is not None
    task = EXPERIMENTS["exp4-T100"].make_task()
    paper = recipe_for("paper", None, EXPERIMENTS["exp4-T100"].setting(task))
    # Hochreiter & Schmidhuber train by plain on-line gradient descent: no clipping, batch 1.
    assert (paper.clip_norm, paper.optimizer, paper.batch_size) == (None, "sgd", 1)
    modern = recipe_for("modern", None, EXPERIMENTS["exp4-T100"].setting(task))
    assert modern.clip_norm is not None


@pytest.mark.parametrize("field, value", [
    ("batch_size", 0), ("batch_size", True), ("max_sequences", -5), ("lr", float("nan")),
    ("lr", 0), ("clip_norm", 0), ("clip_norm", float("nan")), ("clip_norm", "1"),
    ("checkpoint_every", -1), ("checkpoint_every", 2.5), ("tbptt", 0), ("tbptt", 2.5),
    ("seed", 1.5), ("optimizer", "rmsprop"),
])
def test_bad_train_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=rf"^{field}: expected .*, got {re.escape(repr(value))}$"):
        TrainConfig(**{field: value})


# -- command line: one line on stderr, non-zero status, no traceback ------------------------

def _cli(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["reproduce", "nosuchexp"], "got 'nosuchexp'"),
    (["reproduce", "exp4-T100", "--trials", "0"], "trials: expected a positive int, got 0"),
    (["reproduce", "exp4-T100", "--max-sequences", "-5"],
     "max_sequences: expected a positive int, got -5"),
    (["reproduce", "exp4-T100", "--task-param", "T"], "expected KEY=VALUE, got 'T'"),
    (["reproduce", "exp4-T100", "--task-param", "T=3"], "T: expected an int >= 20, got 3"),
    (["reproduce", "exp4-T100", "--task-param", "Q=3"], "unknown parameter(s) ['Q']"),
    (["reproduce", "exp4-T100", "--cell", "nosuchcell"], "got 'nosuchcell'"),
    (["reproduce", "exp4-T100", "--workers", "0"], "workers: expected None (the cores) or a "
                                                   "positive int, got 0"),
    (["reproduce", "exp4-T100", "--checkpoint-every", "0"],
     "checkpoint_every: expected a positive int, got 0"),
    (["demo", "--T", "0"], "T: expected an int >= 2, got 0"),
])
def test_bad_command_line_gives_one_line_and_status_2(capsys, argv, message):
    # A small budget, so that a case which slipped through validation ends soon (and fails).
    extra = [] if "--max-sequences" in argv else ["--max-sequences", "2"]
    code, err = _cli(capsys, *argv, *extra, "--quiet")
    assert code == 2
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"lstmkit {argv[0]}: error: ")
    assert message in err


def test_resume_from_a_corrupt_checkpoint_names_the_file_before_any_trial_starts(
        tmp_path, capsys):
    bad = tmp_path / "checkpoints" / "trial-0.pt"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"garbage\n")
    # Two trials run in worker processes: the error must come out as one line, and before
    # trial 1 has trained and written its checkpoint.
    code, err = _cli(capsys, "reproduce", "exp4-T100", "--trials", "2", "--resume", "--out",
                     str(tmp_path), "--max-sequences", "50", "--checkpoint-every", "10",
                     "--quiet")
    assert code == 2
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert f"{bad}: not a readable lstmkit checkpoint" in err
    assert "weights_only` set to `False`" not in err  # torch's advice to unpickle anyway
    assert not (tmp_path / "checkpoints" / "trial-1.pt").exists()
    assert not (tmp_path / "results.json").exists()


def test_a_diverged_trial_counts_as_a_failed_trial(capsys, monkeypatch):
    """Plain SGD without clipping (the paper setting) may blow up: that trial failed, the run
    and its table go on, and the record says why."""
    def diverge(self, batch):
        raise TrainingDiverged("training diverged: loss became nan in the batch after 7 "
                               "training sequences; no checkpoint is written (no checkpoint "
                               "path)")

    def diverge_in_a_group(self, x, batch, loss_fn, update=True, loss_grad=None,
                           logit_grad=None):
        steps, columns, _ = x.shape
        return StepResult(torch.zeros(steps, columns, 1), [float("nan")] * self.slots,
                          [False] * self.slots, [float("nan")] * self.slots)

    monkeypatch.setattr(Trainer, "_step", diverge)
    monkeypatch.setattr(TrialGroup, "step", diverge_in_a_group)
    # The compiled loop reports a non-finite step by stopping before it; the step is then
    # redone in Python, where it diverges.
    monkeypatch.setattr(TrialGroup, "run_steps", lambda self, chunk, first, last: first)
    code, err = _cli(capsys, "reproduce", "exp3a", "--task-param", "T=12", "--trials", "1",
                     "--max-sequences", "5", "--quiet", "--workers", "1")
    assert code == 0, err
    results = lstmkit.reproduce.run("exp3a", task_params={"T": 12}, max_sequences=5,
                                    workers=1, progress=False)
    trial = results.trials[0]
    assert not trial.success and "loss became nan" in trial.diverged
    assert results.summary.diverged == 1
    assert trial.test.wrong == trial.test.size
    alone = lstmkit.reproduce.run("exp3a", task_params={"T": 12}, max_sequences=5, workers=1,
                                  progress=False, group=False)
    assert "loss became nan" in alone.trials[0].diverged


def test_unknown_task_and_task_parameter_are_named():
    with pytest.raises(ValueError, match=r"make: name: expected one of \[.*'adding'.*\], got "
                                         r"'nosuchtask'"):
        tasks.make("nosuchtask")
    with pytest.raises(TypeError, match=r"unknown parameter\(s\) \['Q'\]"):
        tasks.make("adding", Q=3)


def test_bad_input_in_a_real_process_has_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "lstmkit.cli", "reproduce", "nosuchexp"],
                          capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("lstmkit reproduce: error: ")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# -- determinism ----------------------------------------------------------------------------

def _fields(batch):
    info = batch.info if isinstance(batch.info, dict) else {}
    return [batch.inputs, batch.targets, batch.mask, batch.lengths, *info.values()]


def _same(a, b):
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


@pytest.mark.parametrize("name", tasks.names())
def test_same_seed_same_batches(name):
    task = tasks.make(name, length=500) if name == "continual_reber" else tasks.make(name)
    first = task.sample(3, generator=torch.Generator().manual_seed(11))
    again = task.sample(3, generator=torch.Generator().manual_seed(11))
    assert all(_same(a, b) for a, b in zip(_fields(first), _fields(again), strict=True))


def test_another_seed_other_batches():
    task = tasks.make("adding", T=20)
    a = task.sample(3, generator=torch.Generator().manual_seed(1))
    b = task.sample(3, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(a.inputs, b.inputs)


def _modern_weights(seed):
    torch.manual_seed(seed)
    model = lstmkit.SequenceModel(lstmkit.LSTM(2, 8, variant="peephole"), 1)
    config = TrainConfig(batch_size=8, max_sequences=320, lr=1e-2, seed=seed, test_size=16,
                         check_every=80, log_every=80)
    Trainer(model, tasks.make("adding", T=12), config).run()
    return model.state_dict()


def test_same_seed_same_modern_training_trajectory():
    first, again, other = _modern_weights(4), _modern_weights(4), _modern_weights(5)
    for name in first:
        assert torch.equal(first[name], again[name]), name
    assert any(not torch.equal(first[n], other[n]) for n in first)


def _paper_trial(tmp_path, seed):
    threads = torch.get_num_threads()
    try:  # run_trial pins the thread count of its (normally worker) process
        record = run_trial("exp3a", "paper", None, seed, 300, task_params={"T": 12},
                           checkpoint_dir=str(tmp_path), checkpoint_every=100)
    finally:
        torch.set_num_threads(threads)
    state = load_checkpoint(tmp_path / f"trial-{seed}.pt")
    return record, state["model"]


def test_same_seed_same_paper_trial(tmp_path):
    first, first_w = _paper_trial(tmp_path / "a", 2)
    again, again_w = _paper_trial(tmp_path / "b", 2)
    _, other_w = _paper_trial(tmp_path / "c", 3)
    for key in ("success", "sequences", "milestones", "test", "curve"):
        assert getattr(first, key) == getattr(again, key), key
    for name in first_w:
        assert torch.equal(first_w[name], again_w[name]), name
    assert any(not torch.equal(first_w[n], other_w[n]) for n in first_w)
