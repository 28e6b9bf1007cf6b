"""How long the whole reproduction table takes at the paper's trial counts, before and after.

For every row of ``lstmkit reproduce --list``: the paper's trial count (at least 10, 30 for
Exp. 1, as the table is to be run), the sequences each trial trains (the paper's mean for a
trial that succeeds; the budget, 3x the paper's mean, for the paper's share of trials that
fail), and the mean number of time steps per sequence (measured on 500 sequences of the task).
Multiplied out, that is the row's training work in time steps; divided by a measured training
rate in steps per second per core and by the cores, it is the row's wall time.

The rates come from ``benchmarks/bench_trials.py --json`` (exp4-T100, paper setting): the
sequences per second of "one trial" and of "group of K", times that row's steps per sequence.
Assumed: a trial's cost is proportional to its steps (the per-sequence overhead that grouping
removes is counted at exp4-T100's length, so the rows with short sequences gain more than shown,
the rows with long sequences less), and the nets cost what the exp4 net costs per step (exp2a's
10,504-weight net costs more; its row is short).

    python benchmarks/table_time.py --bench benchmarks/results-trials.json --cores 2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lstmkit.reproduce.experiments import EXPERIMENTS


def row_work(name: str) -> dict[str, float]:
    """Trials, sequences per trial and steps per sequence of row ``name`` at the paper's counts."""
    exp = EXPERIMENTS[name]
    task = exp.make_task()
    ref = exp.reference(task)
    trials = max(10, ref.trials or 10) if ref is not None else 10
    if name == "exp1":
        trials = max(trials, 30)
    mean = (ref.sequences if ref is not None and ref.sequences else None) or 100_000
    rate = ref.success_rate if ref is not None and ref.success_rate is not None else 1.0
    per_trial = rate * mean + (1.0 - rate) * 3 * mean
    batch = task.sample(500, generator=torch.Generator().manual_seed(0))
    steps = float(batch.lengths.float().mean())
    return {"trials": trials, "sequences": per_trial, "steps": steps,
            "work": trials * per_trial * steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=Path, required=True,
                        help="the JSON of benchmarks/bench_trials.py (exp4-T100, paper)")
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    rows = json.loads(args.bench.read_text())
    paper = next(r for r in rows if r["experiment"] == "exp4-T100" and r["setting"] == "paper")
    ref_steps = row_work("exp4-T100")["steps"]
    rates = {way: seq_s * ref_steps for way, seq_s in paper["median_seq_per_s"].items()}
    works = {name: row_work(name) for name in EXPERIMENTS}
    total = sum(w["work"] for w in works.values())
    print("| row | trials | sequences per trial | steps per sequence | steps (millions) |")
    print("|---|---:|---:|---:|---:|")
    for name, w in works.items():
        print(f"| {name} | {w['trials']} | {w['sequences']:,.0f} | {w['steps']:,.1f} | "
              f"{w['work'] / 1e6:,.0f} |")
    print()
    print(f"| way of training | steps/s per core | wall time, whole table, {args.cores} cores |")
    print("|---|---:|---:|")
    for way, rate in rates.items():
        hours = total / (rate * args.cores) / 3600
        print(f"| {way} | {rate:,.0f} | {hours:,.1f} h ({hours / 24:,.1f} days) |")


if __name__ == "__main__":
    main()
