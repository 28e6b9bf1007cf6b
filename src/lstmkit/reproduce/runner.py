"""Run the trials of one experiment (in parallel processes) and collect ``results.json``.

Each trial is independent: its seed fixes the initial weights (``torch.manual_seed``) and the
training data (the trainer's generator), so a trial reruns to the same numbers on the same
machine and thread count. Trials run in separate processes, one thread each, as many at once as
there are cores (``workers``); with ``out`` every trial checkpoints into ``out/checkpoints`` and
``resume=True`` continues killed trials where their last checkpoint left them.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from ..train.checkpoint import load_checkpoint
from ..train.construction import SequentialConstruction
from ..train.trainer import Trainer, TrainingDiverged, TrainResult
from .experiments import budget_for, criteria_for, get
from .nets import build, recipe_for, train_config


def default_budget(experiment: str, setting: str = "paper") -> int:
    """Training sequences per trial when none is given: twice the paper's mean, at least
    20,000, capped by the paper's own budget."""
    exp = get(experiment)
    task = exp.make_task()
    ref, paper = exp.reference(task), exp.setting(task)
    budget = 2 * ref.sequences if ref is not None and ref.sequences else 100_000
    budget = max(budget, 20_000)
    cap = budget_for(paper)
    return min(budget, cap) if cap else budget


def run_trial(experiment: str, setting: str, cell: str | None, seed: int, max_sequences: int,
              *, task_params: dict[str, Any] | None = None, checkpoint_dir: str | None = None,
              checkpoint_every: int = 20_000, resume: bool = False, progress: bool = False,
              position: int = 0, threads: int = 1) -> dict[str, Any]:
    """Train and test one network; returns the trial record of ``results.json``."""
    torch.set_num_threads(threads)
    exp = get(experiment)
    task = exp.make_task(task_params)
    paper = exp.setting(task)
    recipe = recipe_for(setting, cell, paper)
    torch.manual_seed(seed)
    model = build(task, paper, recipe)
    criteria = criteria_for(paper)
    check_every = 1000 if recipe.batch_size == 1 else 100 * recipe.batch_size
    config = train_config(recipe, max_sequences=max_sequences, seed=seed,
                          test_size=paper.test_set_size or 2560, check_every=check_every,
                          checkpoint_every=checkpoint_every if checkpoint_dir else 0)
    checkpoint = _checkpoint_path(checkpoint_dir, seed) if checkpoint_dir else None
    meta = _trial_meta(experiment, setting, recipe.cell, seed, max_sequences, task.params)
    callbacks = []
    if paper.sequential_construction and recipe.setting == "paper":
        callbacks.append(SequentialConstruction(model.readout.weight, model.layer.hidden_size))
    trainer = Trainer(model, task, config, criteria, checkpoint=checkpoint, meta=meta,
                      progress=progress, callbacks=callbacks)
    trainer.progress_desc = f"{experiment} {recipe.cell} seed {seed}"
    trainer.progress_position = position
    start = time.perf_counter()
    diverged = None
    try:
        result = trainer.run(resume=resume)
    except TrainingDiverged as err:
        # Plain gradient descent without clipping (the paper setting) can blow up; that trial
        # failed, the others go on. Its test counts every sequence as wrong.
        diverged = str(err)
        size = float(config.test_size)
        result = TrainResult(success=False, sequences=trainer.sequences,
                             test={"wrong": size, "size": size}, curve=list(trainer.curve),
                             milestones=dict(trainer.milestones))
    return {
        "seed": seed,
        "success": result.success,
        "sequences": result.sequences,
        "milestones": result.milestones,
        "cells_added_at": callbacks[0].added_at if callbacks else None,
        "diverged": diverged,
        "test": result.test,
        "wall_s": time.perf_counter() - start,
        "weights": model.num_weights(),
        "curve": {
            "sequences": [p["sequences"] for p in result.curve],
            "loss": [p["loss"] for p in result.curve],
            "metric": [p["accuracy"] for p in result.curve],
            "metric_name": "fraction of training sequences correct",
        },
    }


def _checkpoint_path(checkpoint_dir: str | Path, seed: int) -> Path:
    return Path(checkpoint_dir) / f"trial-{seed}.pt"


def _trial_meta(experiment: str, setting: str, cell: str, seed: int, max_sequences: int,
                task_params: dict[str, Any]) -> dict[str, Any]:
    """What a trial's checkpoint must match to be resumed by it."""
    return {"experiment": experiment, "setting": setting, "cell": cell, "seed": seed,
            "max_sequences": max_sequences, "task_params": dict(task_params)}


def _summary(trials: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    solved = [t["sequences"] for t in trials if t["success"]]
    return {
        "trials": len(trials),
        "successes": len(solved),
        "diverged": sum(1 for t in trials if t.get("diverged")),
        "success_rate": len(solved) / len(trials) if trials else 0.0,
        "mean_sequences": statistics.fmean(solved) if solved else None,
        "median_sequences": statistics.median(solved) if solved else None,
        "mean_test_wrong": statistics.fmean(t["test"]["wrong"] for t in trials) if trials
        else None,
        "test_size": trials[0]["test"]["size"] if trials else None,
        "wall_s": wall_s,
    }


def run(experiment: str, *, setting: str = "paper", cell: str | None = None, trials: int = 1,
        seed: int = 0, max_sequences: int | None = None, out: str | Path | None = None,
        workers: int | None = None, resume: bool = False, progress: bool = True,
        task_params: dict[str, Any] | None = None, checkpoint_every: int = 20_000
        ) -> dict[str, Any]:
    """Run ``trials`` trials of ``experiment``; returns (and writes to ``out``) the results.

    ``task_params`` changes the row's task parameters (e.g. ``{"T": 50}``) for a smaller run
    than the paper's; the results record it and the table marks the row as changed. With more
    than one worker, trials run in spawned processes, so a calling script needs the usual
    ``if __name__ == "__main__":`` guard; ``workers=1`` runs them in this process.
    """
    return compare(experiment, [cell], setting=setting, trials=trials, seed=seed,
                   max_sequences=max_sequences, outs=[out], workers=workers, resume=resume,
                   progress=progress, task_params=task_params,
                   checkpoint_every=checkpoint_every)[0]


def compare(experiment: str, cells: list[str | None], *, setting: str = "paper",
            trials: int = 1, seed: int = 0, max_sequences: int | None = None,
            outs: list[str | Path | None] | None = None, workers: int | None = None,
            resume: bool = False, progress: bool = True,
            task_params: dict[str, Any] | None = None, checkpoint_every: int = 20_000
            ) -> list[dict[str, Any]]:
    """:func:`run` for several cells under one budget, every trial of every cell in one pool
    of worker processes (so an LSTM and its plain-RNN baseline train side by side)."""
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
    task = exp.make_task(task_params)
    paper = exp.setting(task)
    recipes = [recipe_for(setting, cell, paper) for cell in cells]
    budget = max_sequences if max_sequences is not None else default_budget(experiment, setting)
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
        raise ValueError(f"max_sequences: expected a positive int, got {budget!r}")
    if not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every: expected a positive int, got {checkpoint_every!r}")
    out_dirs = [Path(o) if o is not None else None for o in outs]
    for out_dir in out_dirs:
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
    n_jobs = trials * len(cells)
    workers = max(1, min(n_jobs, workers or os.cpu_count() or 1))
    jobs = []
    for cell, out_dir in zip(cells, out_dirs):
        for i in range(trials):
            jobs.append(dict(
                experiment=experiment, setting=setting, cell=cell, seed=seed + i,
                max_sequences=budget, task_params=task_params,
                checkpoint_dir=str(out_dir / "checkpoints") if out_dir is not None else None,
                checkpoint_every=checkpoint_every, resume=resume, progress=progress,
                position=len(jobs) % workers))
    if resume:
        # In a worker process a bad checkpoint would surface only after every other trial has
        # finished (the pool waits for them), so refuse it here, before anything is spawned.
        for job, recipe in zip(jobs, [r for r in recipes for _ in range(trials)]):
            if job["checkpoint_dir"] is None:
                continue
            path = _checkpoint_path(job["checkpoint_dir"], job["seed"])
            if path.exists():
                load_checkpoint(path, _trial_meta(experiment, setting, recipe.cell, job["seed"],
                                                  budget, task.params))
    start = time.perf_counter()
    if workers == 1:
        # One thread: these nets are far too small for a second one to pay for its wake-ups.
        records = [run_trial(**job, threads=1) for job in jobs]
    else:
        # spawn, not fork: the parent may already hold OpenMP threads.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = [pool.submit(run_trial, **job) for job in jobs]
            try:
                records = [f.result() for f in futures]
            except BaseException:
                # Report a failed trial (or Ctrl-C) now rather than after the queued ones ran.
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    wall = time.perf_counter() - start
    # A smaller run than the paper's (changed task parameters) is still shown beside the
    # paper's row for the experiment, which the table labels with the changed parameters.
    ref = exp.reference(task) or exp.reference()
    everything = []
    for k, (recipe, out_dir) in enumerate(zip(recipes, out_dirs)):
        mine = records[k * trials:(k + 1) * trials]
        results = {
            "experiment": experiment,
            "title": exp.title,
            "setting": setting,
            "cell": recipe.cell,
            "task": exp.task,
            "task_params": dict(task.params),
            "changed_params": dict(task_params or {}),
            "paper": None if ref is None else {
                "label": f"{ref.source}, {ref.method}",
                "success_rate": ref.success_rate,
                "sequences": ref.sequences,
                "trials": ref.trials,
                "test": (f"{ref.wrong} wrong of {ref.test_size}" if ref.wrong is not None
                         else None),
                "criterion": ref.criterion,
            },
            "settings": {
                "optimizer": recipe.optimizer, "lr": recipe.lr,
                "batch_size": recipe.batch_size, "clip_norm": recipe.clip_norm,
                "init_range": recipe.init_range, "max_sequences": budget,
                "criteria": list(criteria_for(paper)), "paper_row": paper.row,
                "weights": mine[0]["weights"], "workers": workers,
                "threads_per_worker": 1 if workers > 1 else None,
            },
            "summary": _summary(mine, wall),
            "trials": mine,
        }
        if out_dir is not None:
            write_results(results, out_dir)
        everything.append(results)
    return everything


def write_results(results: dict[str, Any], out_dir: Path) -> Path:
    """``results.json`` (atomically) plus the training-curve figure when matplotlib is there."""
    path = out_dir / "results.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, path)
    try:
        from ..analysis.plots import training_curves
    except ImportError:  # the plot is an extra (matplotlib); the numbers are what matter
        return path
    training_curves(results, out_dir / "curves.png")
    return path
