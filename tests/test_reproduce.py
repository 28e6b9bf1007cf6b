"""The trainer and ``lstmkit reproduce``: resume, sequential construction, short real runs."""

import json
import math
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

import lstmkit
from lstmkit import tasks
from lstmkit.reproduce import EXPERIMENTS, run
from lstmkit.reproduce.cli import _task_params
from lstmkit.reproduce.experiments import criteria_for
from lstmkit.reproduce.nets import build, recipe_for
from lstmkit.train import SequentialConstruction, TrainConfig, Trainer


def _trainer(tmp_path, seed=3, callbacks=None):
    torch.manual_seed(seed)
    task = tasks.make("adding", T=12)
    model = lstmkit.SequenceModel(lstmkit.LSTM(2, 6, variant="peephole"), 1)
    config = TrainConfig(batch_size=4, max_sequences=240, checkpoint_every=40, check_every=40,
                         test_size=16, seed=seed, log_every=40)
    return Trainer(model, task, config, checkpoint=tmp_path / "ckpt.pt",
                   meta={"cell": "peephole"}, callbacks=callbacks)


class _Interrupt(Exception):
    pass


def test_resume_after_interruption_gives_the_same_weights(tmp_path, monkeypatch):
    straight = _trainer(tmp_path / "a")
    expected = straight.run()

    interrupted = _trainer(tmp_path / "b")
    calls = {"n": 0}
    real_step = Trainer._step

    def dying_step(self, batch):
        calls["n"] += 1
        if calls["n"] == 37:  # between two checkpoints (every 10 steps)
            raise _Interrupt
        return real_step(self, batch)

    monkeypatch.setattr(Trainer, "_step", dying_step)
    with pytest.raises(_Interrupt):
        interrupted.run()
    monkeypatch.setattr(Trainer, "_step", real_step)
    # A fresh process would start from new random weights: the checkpoint must override them.
    resumed_trainer = _trainer(tmp_path / "b", seed=99)
    resumed_trainer.config.seed = 3
    resumed = resumed_trainer.run(resume=True)
    for (name, a), b in zip(straight.model.state_dict().items(),
                            resumed_trainer.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)
    assert resumed.sequences == expected.sequences
    assert resumed.test == expected.test
    assert resumed.curve == expected.curve


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path):
    first = _trainer(tmp_path)
    first.run()
    other = _trainer(tmp_path)
    other.meta = {"cell": "cifg"}
    with pytest.raises(ValueError, match="cell: checkpoint has 'peephole', expected 'cifg'"):
        other.run(resume=True)


def test_sequential_construction_holds_cells_out_until_the_loss_plateaus():
    weight = torch.nn.Parameter(torch.ones(3, 5))
    cb = SequentialConstruction(weight, 2, window=10, min_improvement=0.01)
    assert torch.all(weight[:, :2] == 0) and torch.all(weight[:, 2:] == 1)

    class _T:
        sequences = 0

    trainer = _T()
    for loss in [10.0] * 10 + [5.0] * 10:  # decreasing: cells stay out
        trainer.sequences += 1
        with torch.no_grad():
            weight += 0.5  # an optimiser step touches every column
        cb.after_step(trainer, loss, 1)
    assert cb.added_at is None and torch.all(weight[:, :2] == 0)
    for loss in [4.99] * 10:  # less than 1% better: plateau, cells join with initial weights
        trainer.sequences += 1
        cb.after_step(trainer, loss, 1)
    assert cb.added_at == 30
    assert torch.all(weight[:, :2] == 1)
    restored = SequentialConstruction(torch.nn.Parameter(torch.zeros(3, 5)), 2)
    restored.load_state_dict(cb.state_dict())
    assert restored.added_at == 30


def test_paper_nets_have_the_papers_weight_counts_and_gate_biases():
    for name in ("exp1", "exp2a", "exp3a", "exp4-T100", "exp6b"):
        exp = EXPERIMENTS[name]
        task = exp.make_task()
        setting = exp.setting(task)
        torch.manual_seed(0)
        model = build(task, setting, recipe_for("paper", None, setting))
        assert model.num_weights() == setting.weights, name
    exp = EXPERIMENTS["exp4-T100"]
    task = exp.make_task()
    setting = exp.setting(task)
    model = build(task, setting, recipe_for("paper", None, setting))
    # Blocks' input-gate biases -3 and -6 (Table 10), first rows of the single bias vector.
    assert model.layer.bias_ih_l0[:2].tolist() == [-3.0, -6.0]


def test_every_paper_row_has_a_runnable_stopping_rule():
    for name, exp in EXPERIMENTS.items():
        task = exp.make_task()
        assert criteria_for(exp.setting(task)), name


def test_task_param_parsing():
    assert _task_params(["T=50", "beta=0.5", "variant=a"]) == {"T": 50, "beta": 0.5,
                                                              "variant": "a"}
    with pytest.raises(ValueError, match="--task-param"):
        _task_params(["T"])


def test_short_paper_run_succeeds_and_writes_results(tmp_path):
    """The 1997 net, on-line SGD at the paper's rate, solves the 2-sequence problem at T=20."""
    results = run("exp3a", setting="paper", trials=1, seed=0, max_sequences=15_000,
                  out=tmp_path, workers=1, progress=False, task_params={"T": 20})
    trial = results.trials[0]
    assert trial.success, trial.test
    assert trial.sequences <= 15_000 and trial.test.wrong == 0
    assert results.settings.weights == 102  # Table 10's Exp. 3 net
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["summary"]["successes"] == 1
    assert saved["changed_params"] == {"T": 20}
    assert (tmp_path / "curves.png").stat().st_size > 10_000


def test_short_modern_run_succeeds():
    results = run("exp3a", setting="modern", trials=1, seed=0, max_sequences=40_000,
                  workers=1, progress=False, task_params={"T": 20})
    assert results.summary.successes == 1, results.trials[0].test
    assert results.trials[0].milestones["ST2"] <= 40_000


def test_plain_rnn_baseline_runs_under_the_same_budget(tmp_path):
    results = run("exp4-T100", setting="modern", cell="rnn", trials=1, max_sequences=320,
                  workers=1, progress=False, task_params={"T": 20})
    assert results.cell == "rnn"
    assert results.settings.max_sequences == 320
    lstm = run("exp4-T100", setting="modern", trials=1, max_sequences=16, workers=1,
               progress=False, task_params={"T": 20})
    # A parameter count comparable with the modern LSTM's.
    assert abs(results.settings.weights - lstm.settings.weights) <= 0.1 * lstm.settings.weights


def _cli(*args):
    # A row the paper setting does not solve within this budget at T=20, so that the run trains
    # all of it: seconds, with a checkpoint every fraction of a second.
    return [sys.executable, "-m", "lstmkit.cli", "reproduce", "exp4-T100", "--setting", "paper",
            "--task-param", "T=20", "--max-sequences", "30000", "--checkpoint-every", "800",
            "--workers", "1", "--quiet", *args]


def test_sigkill_then_resume_ends_like_an_uninterrupted_run(tmp_path):
    """A run killed with SIGKILL at a random point and resumed ends with the same weights."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = tmp_path / "straight"
    subprocess.run(_cli("--out", str(straight)), check=True, env=env, timeout=600)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli("--out", str(killed)), env=env)
    ckpt = killed / "checkpoints" / "trial-0.pt"
    deadline = time.monotonic() + 300
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    # Somewhere between two checkpoints, well before the end: the whole budget takes several
    # seconds of training even on a fast, idle machine.
    time.sleep(random.Random().uniform(0.0, 0.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # Killed mid-run: the budget is many seconds of training, the kill comes within a second
    # or so of the first checkpoint.
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "results.json").exists()
    subprocess.run(_cli("--out", str(killed), "--resume"), check=True, env=env, timeout=600)
    a = torch.load(straight / "checkpoints" / "trial-0.pt", weights_only=True)
    b = torch.load(ckpt, weights_only=True)
    assert a["sequences"] == b["sequences"]
    for name, tensor in a["model"].items():
        assert torch.equal(b["model"][name], tensor), name
    ra = json.loads((straight / "results.json").read_text())["trials"][0]
    rb = json.loads((killed / "results.json").read_text())["trials"][0]
    assert (ra["success"], ra["sequences"], ra["test"]) == (rb["success"], rb["sequences"],
                                                            rb["test"])
    leftovers = [p.name for p in ckpt.parent.iterdir() if p.name != "trial-0.pt"]
    assert leftovers == []  # no half-written temporary survives


def test_demo_prints_the_table_and_a_verdict_per_net(capsys):
    from lstmkit.demo import run_demo

    results = run_demo(T=20, max_sequences=300, progress=False)
    out = capsys.readouterr().out
    assert [r.cell for r in results] == ["lstm1997", "rnn"]
    assert "paper (H&S 1997)" in out and "paper lstm1997" in out and "paper rnn" in out
    assert out.count("fresh test sequences wrong") == 2


def test_results_table_and_commands_from_records(tmp_path):
    from lstmkit.reproduce.records import RunResult, load_results
    from lstmkit.reproduce.report import command, markdown

    def record(setting, cell, successes, changed=None):
        trials = [{"seed": s, "success": s < successes, "sequences": 1000 * (s + 1),
                   "test": {"wrong": 0.0 if s < successes else 9.0, "size": 256.0}}
                  for s in range(2)]
        return {"experiment": "exp3a", "setting": setting, "cell": cell,
                "changed_params": changed or {},
                "paper": {"success_rate": None, "sequences": 39_850, "test": None},
                "settings": {"max_sequences": 5000}, "trials": trials,
                "summary": {"trials": 2, "successes": successes, "diverged": 0,
                            "mean_sequences": 1000.0 if successes else None,
                            "mean_test_wrong": 4.5, "test_size": 256.0}}

    paper, rnn = record("paper", "lstm1997", 1), record("modern", "rnn", 0, {"T": 20})
    assert command(RunResult.from_dict(paper)) == (
        "lstmkit reproduce exp3a --setting paper --trials 2 --seed 0 --max-sequences 5000")
    assert command(RunResult.from_dict(rnn)).endswith(
        "--cell rnn --trials 2 --seed 0 --max-sequences 5000 --task-param T=20")
    for name, res in (("a", paper), ("b", rnn)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(res))
    table = markdown(load_results(tmp_path))
    row = next(line for line in table.splitlines() if line.startswith("| exp3a"))
    assert "39,850 seq" in row and "1/2, 1,000 seq" in row and "0/2" in row and "T=20" in row
    assert "| not run |" in row  # no modern lstm run
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no results.json"):
        load_results(tmp_path / "empty")


def test_truncated_bptt_carries_state_and_updates_once_per_chunk_with_targets():
    task = tasks.make("adding", T=12)  # the target sits at the last step only
    torch.manual_seed(0)
    model = lstmkit.SequenceModel(lstmkit.LSTM(2, 6, variant="cifg"), 1)
    batch = task.sample(3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(batch.inputs, batch.lengths)
        state, parts = None, []
        for start in range(0, batch.steps, 5):
            out, state = model(batch.inputs[start:start + 5], hx=state, return_state=True)
            parts.append(out)
    same_length = (batch.lengths == batch.steps).nonzero().flatten()
    torch.testing.assert_close(torch.cat(parts)[:, same_length], full[:, same_length])

    config = TrainConfig(batch_size=3, max_sequences=30, tbptt=5, check_every=30, test_size=8,
                         log_every=3)
    trainer = Trainer(model, task, config)
    steps = {"n": 0}
    real_step = trainer.optimizer.step

    def counting_step(*args, **kwargs):
        steps["n"] += 1
        return real_step(*args, **kwargs)

    trainer.optimizer.step = counting_step
    result = trainer.run()
    assert steps["n"] == 10  # 10 batches, one chunk with a target each (no NaN from the others)
    assert all(math.isfinite(p["loss"]) for p in result.curve)


def test_truncated_bptt_freezes_the_state_of_sequences_that_ended():
    task = tasks.make("adding1997", T=20)  # lengths 20..22
    torch.manual_seed(0)
    model = lstmkit.SequenceModel(lstmkit.LSTM(2, 5), 1, output_activation="sigmoid")
    batch = task.sample(8, generator=torch.Generator().manual_seed(2))
    assert batch.lengths.min() < batch.steps  # some sequences end a chunk before others
    # Chunks of 5 steps: a sequence of length 20 has ended when the chunk at step 20 starts.
    config = TrainConfig(batch_size=8, max_sequences=8, tbptt=5, check_every=8, test_size=8,
                         log_every=8, lr=1e-12)
    trainer = Trainer(model, task, config)
    trainer._step(batch)
    with torch.no_grad():
        _, (h_n, c_n) = model.layer(batch.inputs, lengths=batch.lengths)
    torch.testing.assert_close(trainer.last_state[0], h_n, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(trainer.last_state[1], c_n, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("experiment, task, label", [
    ("exp1", "reber", ("1-5", None)),
    ("exp3a", "two_sequence", (None, "ST2")),
    ("exp5-T100", "multiplication1997", (None, "RECENT(n_seq=140)")),
])
def test_experiments_find_their_paper_row_by_its_label(monkeypatch, experiment, task, label):
    """A corrected published number must not lose an experiment its row: rows are found by
    their labels (Table 10 row, criterion), as the tasks' own settings are."""
    import dataclasses

    cls = tasks.TASKS[task]
    corrected = tuple(dataclasses.replace(r, sequences=r.sequences + 1, metrics={})
                      if r.sequences else r for r in cls.REFERENCES)
    monkeypatch.setattr(cls, "REFERENCES", corrected)
    exp = EXPERIMENTS[experiment]
    ref = exp.reference()
    assert ref is not None and ref in corrected and ref.method.startswith("LSTM")
    row, criterion = label
    assert (exp.row, exp.criterion) == (row, criterion)
    if row is not None:
        assert ref.setting.row == row
    if criterion is not None:
        assert ref.criterion == criterion
    assert exp.setting() == ref.setting


def test_exp1_trials_share_data_sets_by_tens_as_the_papers_30_did(tmp_path) -> None:
    """§5.1: "3 different, randomly generated pairs of training and test sets. With each such
    pair we run 10 trials": trial seeds that share their tens share a data set."""
    from lstmkit.reproduce.experiments import get
    from lstmkit.reproduce.records import load_results
    from lstmkit.reproduce.runner import _make_trainer

    exp1 = get("exp1")
    assert exp1.trial_params(5000) == {"seed": 500}
    assert exp1.trial_params(5029) == {"seed": 502}
    assert exp1.trial_params(5010, {"seed": 7}) == {"seed": 7}  # a fixed data set for all
    assert get("exp4-T100").trial_params(5000) == {}

    def train_strings(seed: int, task_params: dict | None = None) -> tuple[str, ...]:
        trainer, _ = _make_trainer("exp1", "paper", None, seed, 100, task_params=task_params,
                                   checkpoint_dir=None, checkpoint_every=0, progress=False,
                                   position=0)
        return trainer.task.train_strings

    assert train_strings(5000) == train_strings(5009) != train_strings(5010)
    assert train_strings(5000, {"seed": 3}) == train_strings(5010, {"seed": 3})

    run("exp1", setting="modern", trials=2, seed=19, max_sequences=64, out=tmp_path,
        workers=1, progress=False)
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["settings"]["trials_per_data_set"] == 10
    assert written["task_params"]["seed"] == 1
    assert load_results(tmp_path)[0].settings.trials_per_data_set == 10
