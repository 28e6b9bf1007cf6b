"""``lstmkit reproduce`` under bad checkpoints, shared output folders, SIGTERM, bad results files,
and what its titles, figures and tables say about a smaller run than the paper's."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lstmkit.cli import main
from lstmkit.reproduce import EXPERIMENTS, runner
from lstmkit.reproduce.records import RunResult, TrialRecord, load_results
from lstmkit.reproduce.report import criteria_notes, markdown, table

_RUN = ["reproduce", "exp4-T100", "--task-param", "T=20", "--max-sequences", "40",
        "--checkpoint-every", "20", "--quiet"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One tiny finished run (its folder: results.json, checkpoints/trial-0.pt)."""
    out = tmp_path_factory.mktemp("run")
    assert main([*_RUN, "--workers", "1", "--out", str(out)]) == 0
    return out


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


# -- checkpoints that resume cannot continue from -----------------------------------------------

def _drop_optimizer(state):
    del state["optimizer"]


def _wrong_weight_shape(state):
    name = next(iter(state["model"]))
    state["model"][name] = torch.zeros(3, 3)


def _bad_rng_state(state):
    state["data_gen"] = torch.zeros(7, dtype=torch.uint8)


def _meta_none(state):
    state["meta"] = None


@pytest.mark.parametrize("spoil", [_drop_optimizer, _wrong_weight_shape, _bad_rng_state,
                                   _meta_none])
def test_resume_from_a_wrong_checkpoint_is_one_line_and_status_2(finished_run, tmp_path, capsys,
                                                                 monkeypatch, spoil):
    out = _copy(finished_run, tmp_path / "run")
    ckpt = out / "checkpoints" / "trial-0.pt"
    state = torch.load(ckpt, weights_only=True)
    spoil(state)
    torch.save(state, ckpt)
    # Two trials in two workers: trial 1 has no checkpoint and would start afresh. The wrong
    # checkpoint must be refused before any worker is spawned.
    monkeypatch.setattr(runner, "run_jobs", _no_pool)
    capsys.readouterr()
    status = main([*_RUN, "--out", str(out), "--resume", "--trials", "2", "--workers", "2"])
    err = _one_line_error(capsys)
    assert status == 2, err
    assert str(ckpt) in err


def _no_pool(*args, **kwargs):
    raise AssertionError("a worker pool was started for a run that must be refused")


class _TwoArgError(ValueError):
    """A ValueError whose pickled form cannot be rebuilt (its __init__ takes two arguments)."""

    def __init__(self, path, what):
        super().__init__(f"{path}: {what}")


def _fail_or_wait(kind, marker):
    """A job for :func:`runner.run_jobs`: fail at once, or wait (up to 2 minutes) as a long
    trial would, then leave ``marker`` behind."""
    if kind == "fail":
        time.sleep(0.5)
        raise _TwoArgError("runs/trial-1.pt", "weight_hh_l0: expected shape (16, 4), got (8, 4)")
    Path(marker).with_suffix(".pid").write_text(str(os.getpid()))
    time.sleep(120)
    Path(marker).write_text("finished")
    return "done"


def test_a_worker_error_comes_back_at_once_as_its_message_and_stops_the_others(tmp_path):
    marker = tmp_path / "finished"
    jobs = [{"kind": "wait", "marker": str(marker)}, {"kind": "fail", "marker": str(marker)}]
    with pytest.raises(ValueError, match=r"^runs/trial-1\.pt: weight_hh_l0: expected shape"):
        runner.run_jobs(_fail_or_wait, jobs, 2)
    # The waiting job was stopped, not waited for: it never got to its end.
    assert not marker.exists()
    pid_file = marker.with_suffix(".pid")
    if pid_file.exists():  # it had started
        assert not _alive(int(pid_file.read_text()))


# -- one run per output folder -------------------------------------------------------------------

def test_a_second_run_on_a_folder_in_use_is_refused_and_touches_nothing(finished_run, tmp_path,
                                                                        capsys):
    out = _copy(finished_run, tmp_path / "run")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with runner._folder_lock(out.resolve()):  # as a running run holds it
        capsys.readouterr()
        status = main([*_RUN, "--workers", "1", "--out", str(out), "--resume"])
        err = _one_line_error(capsys)
    assert status == 2
    assert f"{out.resolve()} is in use by another lstmkit reproduce run (pid {os.getpid()})" \
        in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # Released when the run ends: the next run on the folder goes ahead.
    assert main([*_RUN, "--workers", "1", "--out", str(out), "--resume"]) == 0


# -- SIGTERM ---------------------------------------------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _wait_gone(pids: list[int], seconds: float = 20.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = [p for p in pids if _alive(p)]
        if not left:
            return []
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_sigterm_stops_the_run_and_its_workers_like_ctrl_c(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "lstmkit.cli", "reproduce", "exp4-T100", "--task-param",
           "T=20", "--max-sequences", "10000000", "--checkpoint-every", "100", "--trials", "2",
           "--workers", "2", "--quiet", "--out", str(out)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        # Wait until a worker trains (it has written a checkpoint).
        ckpts = [out / "checkpoints" / f"trial-{s}.pt" for s in (0, 1)]
        deadline = time.monotonic() + 300
        while not any(c.exists() for c in ckpts) and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read()
        children = _children(proc.pid)
        assert len(children) >= 2  # the workers (and multiprocessing's resource tracker)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1].startswith("lstmkit reproduce: terminated")
    assert "Traceback" not in err
    assert _wait_gone(children) == []


class _OuterHandlerRan(Exception):
    pass


def _outer_handler(signum, frame):
    raise _OuterHandlerRan


def _terminated_trial(*args, **job):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)  # the handler interrupts this
    raise AssertionError("SIGTERM was not handled")


def test_sigterm_during_an_in_process_run_is_status_143_and_the_handler_is_restored(
        tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(runner, "run_group", _terminated_trial)
    previous = signal.signal(signal.SIGTERM, _outer_handler)
    try:
        status = main([*_RUN, "--workers", "1", "--out", str(tmp_path)])
        assert signal.getsignal(signal.SIGTERM) is _outer_handler
    finally:
        signal.signal(signal.SIGTERM, previous)
    err = _one_line_error(capsys)
    assert status == 143
    assert err == ("lstmkit reproduce: terminated; rerun with --resume to continue from the "
                   "checkpoints")
    with runner._folder_lock(tmp_path.resolve()):  # the run let go of its folder
        pass


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_worker_whose_parent_was_killed_exits_by_itself():
    read, write = os.pipe()
    parent = os.fork()
    if parent == 0:  # stands for the run's parent process
        try:
            if os.fork() == 0:  # its worker
                try:
                    runner._worker_init(os.getppid())
                    os.write(write, str(os.getpid()).encode())
                    time.sleep(30)
                finally:
                    os._exit(0)
            time.sleep(30)
        finally:
            os._exit(0)
    os.close(write)
    worker = int(os.read(read, 32))  # the worker is set up
    os.close(read)
    os.kill(parent, signal.SIGKILL)
    os.waitpid(parent, 0)
    assert _wait_gone([worker], 10.0) == []


# -- results files and what they say -------------------------------------------------------------

def test_summarize_names_the_file_and_the_missing_key(finished_run, tmp_path, capsys):
    record = json.loads((finished_run / "results.json").read_text())
    for key, path in (("summary", None), ("settings", "max_sequences")):
        folder = tmp_path / key
        folder.mkdir()
        spoiled = json.loads(json.dumps(record))
        if path is None:
            del spoiled[key]
        else:
            del spoiled[key][path]
        (folder / "results.json").write_text(json.dumps(spoiled))
        capsys.readouterr()
        assert main(["reproduce", "--summarize", str(folder)]) == 2
        err = _one_line_error(capsys)
        dotted = key if path is None else f"{key}.{path}"
        assert str(folder / "results.json") in err and f"missing key '{dotted}'" in err
    spoiled = json.loads(json.dumps(record))
    spoiled["summary"]["trials"] = "two"
    (tmp_path / "kind").mkdir()
    (tmp_path / "kind" / "results.json").write_text(json.dumps(spoiled))
    with pytest.raises(ValueError, match="summary.trials: expected an integer"):
        load_results(tmp_path / "kind")


def test_titles_say_the_task_parameters_the_run_used(finished_run):
    saved = json.loads((finished_run / "results.json").read_text())
    assert saved["title"] == "Exp. 4, adding problem T=20"
    exp = EXPERIMENTS["exp6a"]
    assert exp.title_for() == "Exp. 6a, temporal order, 2 relevant symbols"
    assert exp.title_for({"positions": 3}) == "Exp. 6a, temporal order, 3 relevant symbols"
    assert EXPERIMENTS["exp3b"].title_for({"T": 20}) == "Exp. 3b, two-sequence problem T=20 N=3"
    # A parameter the title does not mention is added rather than left unsaid.
    assert EXPERIMENTS["exp2a"].title_for({"p": 10, "seed": 3}) == \
        "Exp. 2a, noise-free lag p=10 [seed=3]"


def test_curves_span_the_sequences_run_not_the_papers_budget(finished_run, tmp_path,
                                                             monkeypatch):
    import lstmkit.analysis.plots as plots

    drawn = {}
    real_save = plots.save

    def keep(fig, path):
        drawn["xlim"] = [ax.get_xlim() for ax in fig.axes]
        drawn["title"] = fig._suptitle.get_text()
        return real_save(fig, path)

    monkeypatch.setattr(plots, "save", keep)
    results = RunResult.read(finished_run / "results.json")
    assert results.paper.sequences == 74_000 and results.settings.max_sequences == 40
    runner.write_results(results, tmp_path)
    assert all(right <= 60 for _, right in drawn["xlim"]), drawn["xlim"]
    assert "T=20" in drawn["title"] and "74,000" in drawn["title"]
    assert (tmp_path / "curves.png").exists()


def _record(wrong, milestones, success=False):
    return RunResult.from_dict({"experiment": "exp4-T100", "setting": "paper", "cell": "lstm1997",
            "changed_params": {}, "paper": None,
            "settings": {"max_sequences": 3000, "criteria": ["ST3"],
                         "criteria_rules": {"ST3": "all of the 2,000 most recent training "
                                            "sequences correct"}},
            "trials": [{"seed": s, "success": success, "sequences": 3000, "diverged": None,
                        "milestones": milestones, "test": {"wrong": wrong, "size": 2560.0}}
                       for s in range(2)],
            "summary": {"trials": 2, "successes": 2 if success else 0, "diverged": 0,
                        "mean_sequences": None, "success_rate": 1.0 if success else 0.0,
                        "mean_test_wrong": wrong, "test_size": 2560.0}})


def test_the_table_says_which_criterion_failed_beside_a_perfect_test():
    failed = _record(0.0, {})
    text = table([failed])
    note = ("exp4-T100 paper lstm1997: 2 of 2 trials did not meet ST3 within 3,000 sequences: "
            "all of the 2,000 most recent training sequences correct")
    assert note in text
    assert "0 wrong" in text  # says the test after training is not the criterion
    assert note in markdown([failed])
    assert criteria_notes(_record(0.0, {"ST3": 1000}, success=True)) == []


def test_a_real_run_records_its_criteria_in_words(finished_run):
    settings = json.loads((finished_run / "results.json").read_text())["settings"]
    assert settings["criteria"] == ["ST3"]
    assert settings["criteria_rules"]["ST3"].startswith(
        "all of the 2,000 most recent training sequences correct")


# -- results.json through the records ---------------------------------------------------------

def test_results_json_round_trips_through_the_records(finished_run):
    path = finished_run / "results.json"
    text = path.read_text()
    res = RunResult.read(path)
    assert isinstance(res.trials[0], TrialRecord)
    assert res.trials[0].test.size == 2560.0 and res.settings.criteria == ["ST3"]
    assert res.to_dict() == json.loads(text)
    assert res.to_json() == text  # written by the same code, byte for byte


def test_an_older_results_file_still_loads(tmp_path):
    # As written before the title, the task, the curves and the trainer's test errors were
    # recorded: only what the tables read.
    old = {"experiment": "exp4-T100", "setting": "paper", "cell": "lstm1997",
           "settings": {"max_sequences": 3000},
           "summary": {"trials": 1, "successes": 1, "mean_sequences": 2500},
           "trials": [{"seed": 4, "success": True, "sequences": 2500,
                       "test": {"wrong": 0, "size": 2560}}]}
    (tmp_path / "results.json").write_text(json.dumps(old))
    [res] = load_results(tmp_path)
    assert res.title == "" and res.paper is None and res.trials[0].curve.sequences == []
    assert "exp4-T100" in table([res]) and "1/1, 2,500 seq" in markdown([res])


@pytest.mark.parametrize("spoil, message", [
    (lambda r: r["trials"][0]["test"].update(wrong="x"),
     'trials[0].test.wrong: expected a number or null, got "x"'),
    (lambda r: r["trials"][0].update(success="yes"),
     'trials[0].success: expected true or false, got "yes"'),
    (lambda r: r["trials"][0]["curve"]["loss"].append(1.0),
     "trials[0].curve: expected sequences, loss and metric of one length"),
    (lambda r: r["settings"].update(criteria_rules={"ST3": 3}),
     "settings.criteria_rules.ST3: expected a string, got 3"),
    (lambda r: r.update(trials=[]), "trials: expected at least one trial, got none"),
])
def test_a_damaged_results_file_is_one_line_naming_the_key(finished_run, tmp_path, spoil,
                                                          message):
    record = json.loads((finished_run / "results.json").read_text())
    spoil(record)
    (tmp_path / "results.json").write_text(json.dumps(record))
    with pytest.raises(ValueError) as err:
        load_results(tmp_path)
    assert str(err.value).startswith(f"results file {tmp_path / 'results.json'}: ")
    assert message in str(err.value) and "\n" not in str(err.value)


def _no_trial(*args, **job):
    raise AssertionError("a trial started although its results could not be drawn")


def test_a_run_that_writes_results_checks_matplotlib_before_any_trial(tmp_path, capsys,
                                                                      monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as in a broken installation
    monkeypatch.setattr(runner, "run_group", _no_trial)
    out = tmp_path / "run"
    status = main([*_RUN, "--workers", "1", "--out", str(out)])
    err = _one_line_error(capsys)
    assert status == 2 and "matplotlib" in err, err
    assert not out.exists()
