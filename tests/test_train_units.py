"""Stopping criteria on hand-built traces, and checkpoint safety."""

import os
import pickle
import re
import subprocess
import sys

import pytest
import torch

from lstmkit.train import (
    CheckpointError,
    RecentSequences,
    TestSet,
    load_checkpoint,
    save_checkpoint,
    st3,
)


def test_st3_needs_a_full_window_all_correct_and_low_mean_error():
    rule = st3(0.01)
    assert not rule.update([True] * 1999, [0.0] * 1999)  # window not full yet
    assert rule.update([True], [0.0])
    rule = st3(0.01)
    assert not rule.update([True] * 1000 + [False] + [True] * 999, [0.0] * 2000)
    assert not rule.update([True] * 1000, [0.0] * 1000)  # the wrong one is still in the window
    assert rule.update([True], [0.0])  # ... and now it has left it
    rule = st3(0.01)
    assert not rule.update([True] * 2000, [0.02] * 2000)  # all correct, mean error too high
    assert rule.update([True] * 2000, [0.005] * 2000)


def test_n_seq_rule_of_experiment_5():
    rule = RecentSequences(window=2000, max_wrong=139)  # "less than 140 of the 2000"
    assert not rule.update([False] * 140 + [True] * 1860, [1.0] * 2000)
    assert rule.update([True], [1.0])


def test_criterion_state_round_trip():
    rule = st3(0.1)
    rule.update([True, False, True], [0.1, 0.2, 0.3])
    other = st3(0.1)
    other.load_state_dict(rule.state_dict())
    assert other.state_dict() == rule.state_dict()


def test_test_set_rules_st1_st2():
    st1 = TestSet(size=4, max_wrong=0)
    st2 = TestSet(size=4, max_wrong=0, max_mean_abs_error=0.01)
    assert not st1.judge([True, True, False, True], [0.0] * 4)
    assert st1.judge([True] * 4, [0.05] * 4)
    assert not st2.judge([True] * 4, [0.05] * 4)
    assert st2.judge([True] * 4, [0.005] * 4)


def test_checkpoint_round_trip_and_atomic_replace(tmp_path):
    path = tmp_path / "run" / "ckpt.pt"
    save_checkpoint(path, {"meta": {"spec": "lstm"}, "w": torch.arange(3.0)})
    save_checkpoint(path, {"meta": {"spec": "lstm"}, "w": torch.arange(4.0)})
    state = load_checkpoint(path, {"spec": "lstm"})
    assert torch.equal(state["w"], torch.arange(4.0))
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]  # no temporary left behind


def test_checkpoint_meta_mismatch_says_what_differs(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", {"meta": {"spec": "lstm", "hidden": 8}})
    with pytest.raises(ValueError, match="spec: checkpoint has 'lstm', expected 'peephole'"):
        load_checkpoint(path, {"spec": "peephole", "hidden": 8})


def test_truncated_corrupt_foreign_and_missing_files(tmp_path):
    good = save_checkpoint(tmp_path / "good.pt", {"meta": {}, "w": torch.randn(100)})
    data = good.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(256))
    foreign = tmp_path / "foreign.pt"
    torch.save({"state": torch.zeros(2)}, foreign)
    for path in (truncated, garbage, foreign, tmp_path / "missing.pt"):
        with pytest.raises(CheckpointError, match=f"^{re.escape(str(path))}: "):
            load_checkpoint(path)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_loading_never_executes_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"format": "lstmkit-checkpoint-v1", "x": _Exploit()}, path, pickle_protocol=2)
    with pytest.raises(ValueError, match="evil.pt"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()
    plain = tmp_path / "evil.pkl"
    plain.write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(ValueError, match="evil.pkl"):
        load_checkpoint(plain)
    assert not (tmp_path / "pwned").exists()


def _temporary(folder, name, pid):
    path = folder / f".{name}.{pid}.a1b2c3d4.tmp"
    path.write_bytes(b"half a checkpoint")
    return path


def _gone_pid():
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_saving_removes_only_temporaries_whose_writer_is_gone(tmp_path):
    path = tmp_path / "ckpt.pt"
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = _temporary(tmp_path, "ckpt.pt", writer.pid)  # another trainer, mid-write
        dead = _temporary(tmp_path, "ckpt.pt", _gone_pid())
        mine = _temporary(tmp_path, "ckpt.pt", os.getpid())
        unowned = tmp_path / ".ckpt.pt.a1b2c3d4.tmp"  # no pid: whose it is cannot be told
        unowned.write_bytes(b"?")
        other_file = _temporary(tmp_path, "ckpt.pt.bak", _gone_pid())
        save_checkpoint(path, {"meta": {}})
        assert live.exists() and unowned.exists() and other_file.exists()
        assert not dead.exists() and not mine.exists()
        assert torch.load(path, weights_only=True)["format"] == "lstmkit-checkpoint-v1"
    finally:
        writer.kill()
        writer.wait()


def test_the_temporary_is_named_after_the_writing_process(tmp_path, monkeypatch):
    written = []
    real_replace = os.replace

    def replace(src, dst):
        written.append(os.path.basename(src))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    save_checkpoint(tmp_path / "ckpt.pt", {"meta": {}})
    assert re.fullmatch(rf"\.ckpt\.pt\.{os.getpid()}\.[^.]+\.tmp", written[0]), written
