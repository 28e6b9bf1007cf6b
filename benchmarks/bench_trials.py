"""Training throughput of the reproduction's trials: one trial at a time against trials in groups.

For one experiment and setting, three ways of training the same nets are timed in one process,
in alternating rounds, and reported as training sequences per second per core (one thread):

* ``one trial`` — :meth:`lstmkit.train.Trainer.run`, one net at a time: the path every trial
  took when each trial ran in a process of its own.
* ``group of 1`` — :func:`lstmkit.train.trials.train_trials` with one slot.
* ``group of K`` — the same with K trials in one block-diagonal group.

Each measurement trains fresh nets (seeds 0..K-1) for ``--sequences`` sequences per trial, with
the final test shrunk to one sequence so that only training is timed. Medians over the rounds
and the ratios to ``one trial`` go to stdout as a markdown table and, with ``--json``, to a file.

    python benchmarks/bench_trials.py --experiment exp4-T100 --setting paper --group 16
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from lstmkit.reproduce.runner import _make_trainer, default_budget
from lstmkit.train.trials import train_trials


def _trainers(experiment: str, setting: str, seeds: range, sequences: int) -> list:
    out = []
    for seed in seeds:
        trainer, _ = _make_trainer(experiment, setting, None, seed, sequences, task_params=None,
                                   checkpoint_dir=None, checkpoint_every=0, progress=False,
                                   position=0)
        trainer.config.test_size = 1
        out.append(trainer)
    return out


def _one_trial(experiment: str, setting: str, sequences: int) -> float:
    (trainer,) = _trainers(experiment, setting, range(1), sequences)
    start = time.perf_counter()
    trainer.run()
    return trainer.sequences / (time.perf_counter() - start)


def _group(experiment: str, setting: str, slots: int, sequences: int) -> float:
    trainers = _trainers(experiment, setting, range(slots), sequences)
    start = time.perf_counter()
    train_trials(trainers, slots=slots)
    return sum(t.sequences for t in trainers) / (time.perf_counter() - start)


def measure(experiment: str, setting: str, group: int, sequences: int, rounds: int
            ) -> dict[str, object]:
    """Medians (sequences per second) of each way over ``rounds`` alternating rounds."""
    torch.set_num_threads(1)
    ways = {
        "one trial": lambda: _one_trial(experiment, setting, sequences),
        "group of 1": lambda: _group(experiment, setting, 1, sequences),
        f"group of {group}": lambda: _group(experiment, setting, group, sequences),
    }
    for fn in ways.values():  # warm-up: the engine's build and first calls
        fn()
    samples: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, fn in ways.items():
            samples[name].append(fn())
    medians = {name: statistics.median(v) for name, v in samples.items()}
    base = medians["one trial"]
    return {"experiment": experiment, "setting": setting, "sequences_per_trial": sequences,
            "rounds": rounds, "threads": 1, "samples": samples, "median_seq_per_s": medians,
            "ratio_to_one_trial": {k: v / base for k, v in medians.items()},
            "default_budget": default_budget(experiment, setting)}


def table(rows: list[dict[str, object]]) -> str:
    lines = ["| experiment | setting | way | sequences/s (median) | × one trial |",
             "|---|---|---|---:|---:|"]
    for row in rows:
        for way, value in row["median_seq_per_s"].items():
            ratio = row["ratio_to_one_trial"][way]
            lines.append(f"| {row['experiment']} | {row['setting']} | {way} | {value:,.0f} | "
                         f"{ratio:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", action="append",
                        help="experiment id (repeatable; default exp4-T100)")
    parser.add_argument("--setting", action="append", choices=("paper", "modern"),
                        help="training setting (repeatable; default paper and modern)")
    parser.add_argument("--group", type=int, default=16, help="trials per group")
    parser.add_argument("--sequences", type=int, default=400, help="sequences per trial")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args()
    rows = []
    for experiment in args.experiment or ["exp4-T100"]:
        for setting in args.setting or ["paper", "modern"]:
            sequences = args.sequences * (16 if setting == "modern" else 1)
            rows.append(measure(experiment, setting, args.group, sequences, args.rounds))
            print(table(rows[-1:]), flush=True)
    print()
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
