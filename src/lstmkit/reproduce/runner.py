"""Run the trials of one experiment (in parallel processes) and collect ``results.json``.

Each trial is independent: its seed fixes the initial weights (``torch.manual_seed``) and the
training data (the trainer's generator), so a trial reruns to the same numbers on the same
machine and thread count. Trials run in separate processes, one thread each, as many at once as
there are cores (``workers``); with ``out`` every trial checkpoints into ``out/checkpoints`` and
``resume=True`` continues killed trials where their last checkpoint left them.

A run holds a lock on each output folder for as long as it runs (on POSIX systems, where the
kernel drops it when the process dies), so a second run on the same folder is refused instead
of racing the first. SIGTERM stops a run the way Ctrl-C does (:class:`Terminated`, a
``KeyboardInterrupt``): the worker processes are stopped before the call returns, and a worker
whose parent died stops by itself within about a second.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import pickle
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch

from ..analysis._limits import require_matplotlib
from ..tasks.base import PaperReference, PaperSetting
from ..train.checkpoint import CheckpointError, load_checkpoint
from ..train.construction import SequentialConstruction
from ..train.online import OnlineTrainer
from ..train.progress import progress_bar
from ..train.trainer import Trainer, TrainingDiverged, TrainResult
from ..train.trials import Trial, chunk_for, mergeable, train_trials
from . import cluster
from .experiments import budget_for, criteria_for, describe_criteria, get
from .nets import Recipe, build, longest_sequence, recipe_for, task_for, train_config
from .records import Curve, Evaluation, PaperRow, RunResult, RunSettings, Summary, TrialRecord

try:
    import fcntl
except ImportError:  # not POSIX: runs go unlocked
    fcntl = None  # type: ignore[assignment]

#: The lock file a run holds in each of its output folders.
LOCK_NAME = ".lstmkit-reproduce.lock"


class Terminated(KeyboardInterrupt):
    """The run received SIGTERM; it stopped like an interrupted one (workers included)."""


def default_budget(experiment: str, setting: str = "paper") -> int:
    """Training sequences per trial when none is given: three times the paper's mean, at
    least 20,000, capped by the paper's own budget where it states one."""
    exp = get(experiment)
    task = exp.make_task()
    ref, paper = exp.reference(task), exp.setting(task)
    budget = 3 * ref.sequences if ref is not None and ref.sequences else 100_000
    budget = max(budget, 20_000)
    cap = budget_for(paper)
    return min(budget, cap) if cap else budget


def _make_trainer(experiment: str, setting: str, cell: str | None, seed: int,
                  max_sequences: int, *, task_params: dict[str, Any] | None,
                  checkpoint_dir: str | None, checkpoint_every: int, progress: bool,
                  position: int, chunk: int = 0) -> tuple[Trainer, list[Any]]:
    """The trial's trainer with freshly seeded weights, and its callbacks."""
    exp = get(experiment)
    raw = exp.make_task(exp.trial_params(seed, task_params))
    paper = exp.setting(raw)
    recipe = recipe_for(setting, cell, paper)
    task = task_for(raw, recipe)
    torch.manual_seed(seed)
    model = build(task, paper, recipe)
    criteria = criteria_for(paper)
    # A test on a fixed split (Exp. 1's strings, Exp. 2a's two sequences) is cheap: check it
    # every 100 sequences, so that sequences to success are counted to within 100.
    per_check = 100 if task.test_batch() is not None else 1000
    check_every = per_check if recipe.batch_size == 1 else 100 * recipe.batch_size
    config = train_config(recipe, max_sequences=max_sequences, seed=seed,
                          test_size=paper.test_set_size or 2560, check_every=check_every,
                          checkpoint_every=checkpoint_every if checkpoint_dir else 0)
    checkpoint = _checkpoint_path(checkpoint_dir, seed) if checkpoint_dir else None
    meta = _trial_meta(experiment, setting, recipe.cell, seed, max_sequences, task.params, chunk)
    callbacks = []
    if paper.sequential_construction and recipe.setting == "paper":
        callbacks.append(SequentialConstruction(model.readout.weight, model.layer.hidden_size,
                                                tolerance=paper.construction_tolerance,
                                                at_end=paper.success.params.get("where") == "end"))
    if recipe.online:
        trainer: Trainer = OnlineTrainer(model, task, config, criteria, alpha=2 * recipe.lr,
                                         checkpoint=checkpoint, meta=meta, progress=progress,
                                         callbacks=callbacks)
    else:
        trainer = Trainer(model, task, config, criteria, checkpoint=checkpoint, meta=meta,
                          progress=progress, callbacks=callbacks)
    trainer.progress_desc = f"{experiment} {recipe.cell} seed {seed}"
    trainer.progress_position = position
    return trainer, callbacks


def run_trial(experiment: str, setting: str, cell: str | None, seed: int, max_sequences: int,
              *, task_params: dict[str, Any] | None = None, checkpoint_dir: str | None = None,
              checkpoint_every: int = 20_000, resume: bool = False, progress: bool = False,
              position: int = 0, threads: int = 1, chunk: int = 0) -> TrialRecord:
    """Train and test one network on its own (:meth:`Trainer.run`); returns its record for
    ``results.json``."""
    torch.set_num_threads(threads)
    trainer, callbacks = _make_trainer(
        experiment, setting, cell, seed, max_sequences, task_params=task_params,
        checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, progress=progress,
        position=position)
    if chunk:
        raise ValueError(f"chunk: a trial trained alone draws one batch at a time (0), "
                         f"got {chunk}")
    start = time.perf_counter()
    diverged = result = None
    try:
        result = trainer.run(resume=resume)
    except TrainingDiverged as err:
        diverged = str(err)
    return _record(trainer, callbacks, seed, result, diverged, time.perf_counter() - start)


def run_group(jobs: list[dict[str, Any]], threads: int = 1) -> list[TrialRecord]:
    """Train the trials ``jobs`` (each :func:`run_trial`'s arguments, one cell) side by side in
    block-diagonal groups (:func:`lstmkit.train.trials.train_trials`); their records, in order.

    Jobs with ``chunk`` 0 (nets that cannot train in a group: a cell the engine does not cover)
    run :func:`run_trial` one by one instead."""
    if any(not job.get("chunk") for job in jobs):
        return [run_trial(**job, threads=threads) for job in jobs]
    torch.set_num_threads(threads)
    built = [_make_trainer(**{k: v for k, v in job.items() if k not in ("resume", "progress")},
                           progress=False)
             for job in jobs]
    start = time.perf_counter()
    walls: dict[int, float] = {}

    def finished(i: int, trial: Trial) -> None:
        walls[i] = time.perf_counter() - start

    bar = None
    if jobs[0].get("progress"):
        first = jobs[0]
        bar = progress_bar(sum(j["max_sequences"] for j in jobs), 0,
                           f"{first['experiment']} {first['cell'] or first['setting']} "
                           f"seeds {','.join(str(j['seed']) for j in jobs)}",
                           first.get("position", 0))

    def chunk_done(sequences: int) -> None:
        if bar is not None:
            bar.update(sequences - bar.n)

    try:
        trials = train_trials([trainer for trainer, _ in built], chunk=jobs[0]["chunk"],
                              resume=bool(jobs[0].get("resume")), on_finish=finished,
                              on_chunk=chunk_done)
    finally:
        if bar is not None:
            bar.close()
    return [_record(trainer, callbacks, job["seed"], trial.result, trial.diverged, walls[i])
            for i, ((trainer, callbacks), job, trial) in enumerate(zip(built, jobs, trials))]


def _record(trainer: Trainer, callbacks: list[Any], seed: int, result: TrainResult | None,
            diverged: str | None, wall_s: float) -> TrialRecord:
    """A trial's record for ``results.json``. Plain gradient descent without clipping (the
    paper setting) can blow up: such a trial failed (the others go on), and its test counts
    every sequence as wrong."""
    if result is None:
        size = float(trainer.config.test_size)
        result = TrainResult(success=False, sequences=trainer.sequences,
                             test={"wrong": size, "size": size}, curve=list(trainer.curve),
                             milestones=dict(trainer.milestones))
    return TrialRecord(
        seed=seed, success=result.success, sequences=result.sequences,
        milestones=dict(result.milestones),
        cells_added_at=callbacks[0].added_at if callbacks else None, diverged=diverged,
        test=Evaluation.of(result.test), wall_s=wall_s,
        weights=trainer.model.num_weights(),
        curve=Curve(sequences=[p["sequences"] for p in result.curve],
                    loss=[p["loss"] for p in result.curve],
                    metric=[p["accuracy"] for p in result.curve]),
    )


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _check_resumable(job: dict[str, Any]) -> None:
    """Restore ``job``'s checkpoint (if any) into a throwaway trainer, so that a checkpoint the
    trial cannot continue from is refused before any worker starts, as one line naming the
    file (a ``ValueError``)."""
    if job["checkpoint_dir"] is None:
        return
    path = _checkpoint_path(job["checkpoint_dir"], job["seed"])
    if not path.exists():
        return
    setup = {**{k: v for k, v in job.items() if k != "resume"}, "progress": False}
    with torch.random.fork_rng(devices=[]):  # the restore sets torch's global generator
        try:
            trainer, _ = _make_trainer(**setup)
            trainer.load_state_dict(load_checkpoint(path, trainer.meta))
        except ValueError as err:
            if "\n" in str(err):
                raise ValueError(_one_line(err)) from None
            raise
        except Exception as err:  # a checkpoint of the right format holding the wrong things
            raise CheckpointError(path, f"cannot be resumed by this trial "
                                  f"({type(err).__name__}: {_one_line(err)})") from None


def _checkpoint_path(checkpoint_dir: str | Path, seed: int) -> Path:
    return Path(checkpoint_dir) / f"trial-{seed}.pt"


def _trial_meta(experiment: str, setting: str, cell: str, seed: int, max_sequences: int,
                task_params: dict[str, Any], chunk: int) -> dict[str, Any]:
    """What a trial's checkpoint must match to be resumed by it (``chunk``: the batches drawn
    at a time in a group, 0 for a trial trained alone; it decides the trial's data)."""
    return {"experiment": experiment, "setting": setting, "cell": cell, "seed": seed,
            "max_sequences": max_sequences, "task_params": dict(task_params), "chunk": chunk}


def _summary(trials: list[TrialRecord], wall_s: float) -> Summary:
    solved = [t.sequences for t in trials if t.success and t.sequences is not None]
    tests = [t.test for t in trials if t.test is not None and t.test.wrong is not None]
    return Summary(
        trials=len(trials), successes=len(solved),
        diverged=sum(1 for t in trials if t.diverged),
        success_rate=len(solved) / len(trials) if trials else 0.0,
        mean_sequences=statistics.fmean(solved) if solved else None,
        median_sequences=statistics.median(solved) if solved else None,
        mean_test_wrong=statistics.fmean(t.wrong for t in tests) if tests else None,
        test_size=tests[0].size if tests else None,
        wall_s=wall_s,
    )


def _paper_row(ref: PaperReference | None) -> PaperRow | None:
    if ref is None:
        return None
    return PaperRow(label=f"{ref.source}, {ref.method}", success_rate=ref.success_rate,
                    sequences=ref.sequences, trials=ref.trials,
                    test=f"{ref.wrong} wrong of {ref.test_size}" if ref.wrong is not None
                    else None,
                    criterion=ref.criterion)


def _settings(recipe: Recipe, paper: PaperSetting, budget: int, weights: int | None,
              workers: int, task: Any, trials_per_data_set: int | None = None) -> RunSettings:
    return RunSettings(
        optimizer=recipe.optimizer, lr=recipe.lr, batch_size=recipe.batch_size,
        clip_norm=recipe.clip_norm, init_range=recipe.init_range, max_sequences=budget,
        criteria=list(criteria_for(paper)), criteria_rules=describe_criteria(paper),
        paper_row=paper.row, weights=weights, workers=workers,
        threads_per_worker=1 if workers > 1 else None,
        readout=f"{task.output_activation}, {task.loss_kind}",
        trials_per_data_set=trials_per_data_set,
    )


def run(experiment: str, *, setting: str = "paper", cell: str | None = None, trials: int = 1,
        seed: int = 0, max_sequences: int | None = None, out: str | Path | None = None,
        workers: int | None = None, resume: bool = False, progress: bool = True,
        task_params: dict[str, Any] | None = None, checkpoint_every: int = 20_000,
        group: bool = True, ray: str | None = None) -> RunResult:
    """Run ``trials`` trials of ``experiment``; returns (and writes to ``out``) the results.

    ``task_params`` changes the row's task parameters (e.g. ``{"T": 50}``) for a smaller run
    than the paper's; the results record it and the table marks the row as changed. With more
    than one worker, trials run in spawned processes, so a calling script needs the usual
    ``if __name__ == "__main__":`` guard; ``workers=1`` runs them in this process.

    While it runs, ``out`` is locked: a second run on the same folder raises ``ValueError``
    ("DIR is in use by another lstmkit reproduce run (pid N)"). With ``resume``, a checkpoint the
    trial cannot continue from raises ``ValueError`` naming the file before any trial starts. In
    the main thread, SIGTERM raises :class:`Terminated` after stopping the workers.
    """
    return compare(experiment, [cell], setting=setting, trials=trials, seed=seed,
                   max_sequences=max_sequences, outs=[out], workers=workers, resume=resume,
                   progress=progress, task_params=task_params,
                   checkpoint_every=checkpoint_every, group=group, ray=ray)[0]


def compare(experiment: str, cells: list[str | None], *, setting: str = "paper",
            trials: int = 1, seed: int = 0, max_sequences: int | None = None,
            outs: list[str | Path | None] | None = None, workers: int | None = None,
            resume: bool = False, progress: bool = True,
            task_params: dict[str, Any] | None = None, checkpoint_every: int = 20_000,
            group: bool = True, ray: str | None = None) -> list[RunResult]:
    """:func:`run` for several cells under one budget, every trial of every cell in one pool
    of worker processes (so an LSTM and its plain-RNN baseline train side by side).

    With ``group`` (the default) each worker trains its share of a cell's trials side by side
    as one computation (:func:`run_group`); ``group=False`` trains each trial on its own, one
    per worker at a time (:func:`run_trial`). A trial's data, and so its result, differ between
    the two (a group draws its batches in chunks); within either, a trial's result depends only
    on its seed.

    ``ray`` sends the units of work to the Ray cluster at that address (``"local"`` starts one
    here with ``workers`` CPUs) instead of local processes (:mod:`.cluster`); ``workers`` then
    defaults to the cluster's CPUs. Checkpoints, resume and results are those of a local run.
    """
    exp = get(experiment)
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise ValueError(f"trials: expected a positive int, got {trials!r}")
    if not cells:
        raise ValueError("cells: expected at least one cell (None for the setting's default)")
    if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool)
                                or workers < 1):
        raise ValueError(f"workers: expected None (the cores) or a positive int, got {workers!r}")
    outs = list(outs) if outs is not None else [None] * len(cells)
    if len(outs) != len(cells):
        raise ValueError(f"outs: expected one folder (or None) per cell, got {len(outs)} for "
                         f"{len(cells)} cells")
    task = exp.make_task(exp.trial_params(seed, task_params))
    paper = exp.setting(task)
    recipes = [recipe_for(setting, cell, paper) for cell in cells]
    budget = max_sequences if max_sequences is not None else default_budget(experiment, setting)
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
        raise ValueError(f"max_sequences: expected a positive int, got {budget!r}")
    if not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every: expected a positive int, got {checkpoint_every!r}")
    out_dirs = [Path(o) if o is not None else None for o in outs]
    if any(d is not None for d in out_dirs):
        # Each written run draws its curves.png: a broken matplotlib fails now, not after the
        # trials have trained.
        require_matplotlib()
    for out_dir in out_dirs:
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
    n_jobs = trials * len(cells)
    if ray is not None and workers is None and ray != "local":
        workers = cluster.cluster_cpus(ray)
    workers = max(1, min(n_jobs, workers or os.cpu_count() or 1))
    jobs = []
    for cell, recipe, out_dir in zip(cells, recipes, out_dirs):
        chunk = 0
        if group and _groups(task, paper, recipe):
            chunk = chunk_for(recipe.batch_size * longest_sequence(task) * task.input_size)
        for i in range(trials):
            jobs.append(dict(
                experiment=experiment, setting=setting, cell=cell, seed=seed + i,
                max_sequences=budget, task_params=task_params,
                checkpoint_dir=str(out_dir / "checkpoints") if out_dir is not None else None,
                checkpoint_every=checkpoint_every, resume=resume,
                progress=progress, position=len(jobs) % workers, chunk=chunk))
    with contextlib.ExitStack() as stack:
        stack.enter_context(_sigterm_as_interrupt())
        for out_dir in dict.fromkeys(d.resolve() for d in out_dirs if d is not None):
            stack.enter_context(_folder_lock(out_dir))
        if resume:
            # In a worker process a bad checkpoint would surface only once the pool got to it,
            # so refuse it here, before anything is spawned.
            for job in jobs:
                _check_resumable(job)
        start = time.perf_counter()
        records = _run_units(jobs, trials, workers, ray)
        wall = time.perf_counter() - start
        # A smaller run than the paper's (changed task parameters) is still shown beside the
        # paper's row for the experiment, which the table labels with the changed parameters.
        paper_row = _paper_row(exp.reference(task) or exp.reference())
        everything = []
        for k, (recipe, out_dir) in enumerate(zip(recipes, out_dirs)):
            mine = records[k * trials:(k + 1) * trials]
            results = RunResult(
                experiment=experiment, title=exp.title_for(task_params), setting=setting,
                cell=recipe.cell, task=exp.task, task_params=dict(task.params),
                changed_params=dict(task_params or {}), paper=paper_row,
                settings=_settings(recipe, paper, budget, mine[0].weights, workers,
                                   task_for(task, recipe), exp.data_set_group(task_params)),
                summary=_summary(mine, wall), trials=mine,
            )
            if out_dir is not None:
                write_results(results, out_dir)
            everything.append(results)
        return everything


def _groups(task: Any, paper: PaperSetting, recipe: Recipe) -> bool:
    """Whether the recipe's nets train in groups (the engine covers the cell, and the weights
    change once per sequence: the on-line rule changes them within it, trial by trial)."""
    if recipe.online:
        return False
    with torch.random.fork_rng(devices=[]):
        return mergeable(build(task, paper, recipe)) is None


def _run_units(jobs: list[dict[str, Any]], trials: int, workers: int,
               ray: str | None = None) -> list[TrialRecord]:
    """Every job's record, in order. Each cell's trials are dealt out round-robin to at most
    ``workers`` units (one group each); units run in worker processes, or here for one worker.
    One thread each: these nets are far too small for a second one to pay for its wake-ups."""
    units: list[list[int]] = []
    for first in range(0, len(jobs), trials):
        cell_jobs = list(range(first, first + trials))
        if not jobs[first]["chunk"]:
            units.extend([k] for k in cell_jobs)  # one trial per unit, as many as there are
            continue
        share = min(workers, trials)
        units.extend(cell_jobs[w::share] for w in range(share))
    unit_jobs = [{"jobs": [jobs[k] for k in unit]} for unit in units]
    if ray is not None:
        done = cluster.run_on_ray(ray, run_group, unit_jobs, cpus=workers)
    elif workers == 1:
        done = [run_group(**unit) for unit in unit_jobs]
    else:
        done = run_jobs(run_group, unit_jobs, workers)
    records: list[Any] = [None] * len(jobs)
    for unit, unit_records in zip(units, done):
        for k, record in zip(unit, unit_records):
            records[k] = record
    return records


def write_results(results: RunResult, out_dir: Path) -> Path:
    """``results.json`` (atomically) and ``curves.png``, the training curves, beside it."""
    from ..analysis.plots import training_curves  # matplotlib only when a run is written

    path = results.write(out_dir)
    training_curves(_plotted(results), out_dir / "curves.png")
    return path


def _plotted(results: RunResult) -> RunResult:
    """``results`` as the figure should show them: the paper's mean is marked only where it lies
    within the sequences this run trained for (a mark beyond them would stretch the x-axis far
    past the curves); otherwise the title says where it lies."""
    mean = results.paper.sequences if results.paper is not None else None
    budget = results.settings.max_sequences
    if not mean or mean <= budget:
        return results
    return dataclasses.replace(
        results, paper=dataclasses.replace(results.paper, sequences=None),
        title=f"{results.title}; paper's mean {mean:,} sequences, beyond this run's "
              f"{budget:,}")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread, so a terminated
    run cleans up (workers stopped, temporaries removed) like an interrupted one."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def handler(signum: int, frame: Any) -> None:
        # A second SIGTERM must not cut the clean-up of the first short (it is bounded).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated(f"terminated by signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s lock file for the block, or refuse with one line naming the owner.

    ``flock`` is released by the kernel when its holder dies, so a killed run leaves no stale
    lock behind; the file itself stays (removing it would let two runs lock different files).
    """
    if fcntl is None:
        yield
        return
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise ValueError(f"{folder} is in use by another lstmkit reproduce run "
                             f"(pid {owner})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def run_jobs(fn: Callable[..., Any], jobs: list[dict[str, Any]], workers: int) -> list[Any]:
    """``[fn(**job) for job in jobs]`` in ``workers`` spawned processes.

    The first failure is raised as soon as it happens (not after the trials queued before it),
    as the exception the worker raised, or a ``ValueError``/``RuntimeError`` with its message
    where that one cannot cross the process boundary. On any exception, Ctrl-C and SIGTERM
    (inside :func:`compare`) included, the workers are stopped before this returns.
    """
    # spawn, not fork: the parent may already hold OpenMP threads.
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                               initargs=(os.getpid(),))
    try:
        futures = {pool.submit(_call_in_worker, fn, job): k for k, job in enumerate(jobs)}
        records: list[Any] = [None] * len(jobs)
        for future in as_completed(futures):
            records[futures[future]] = future.result()
    except BaseException:
        _stop_workers(pool)
        raise
    pool.shutdown(wait=True)
    return records


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Cancel what is queued and end the workers now: left alone, a running trial would keep
    the process (and multiprocessing's resource tracker) alive until it finished."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        if proc.is_alive():
            proc.terminate()
    deadline = time.monotonic() + 5.0
    for proc in processes:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join(1.0)


def _worker_init(parent: int) -> None:
    """Runs first in every worker: Ctrl-C is the parent's to handle (it stops the workers), and
    a worker whose parent died (SIGKILL) exits instead of training on as an orphan."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True,
                     name="lstmkit-parent-watch").start()


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _call_in_worker(fn: Callable[..., Any], job: dict[str, Any]) -> Any:
    """``fn(**job)``, with an exception the parent could not unpickle replaced by one it can
    (an unpicklable one would break the whole pool instead of reporting the trial's error)."""
    try:
        return fn(**job)
    except Exception as err:
        try:
            pickle.loads(pickle.dumps(err))
        except Exception:
            if isinstance(err, ValueError):
                raise ValueError(_one_line(err)) from None
            raise RuntimeError(f"{type(err).__name__}: {_one_line(err)}") from None
        raise
