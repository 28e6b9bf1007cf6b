"""The table of ``RESULTS.md``'s runs at the paper's trial counts, from their ``results.json``.

Per row: the paper's success rate and mean sequences to success; ours as successes/trials with
a 95 % Wilson interval, and mean ± standard deviation of sequences to success over the trials
that succeeded; the budget per trial.

    python results/trial_counts.py results/trial-counts

With ``--wide`` and labelled folders, one line per row of the paper and one column per folder
(``successes/trials (Wilson), mean ± std sequences to success; budget``):

    python results/trial_counts.py --wide "paper setting=results/trial-counts" \
        "modern=results/trial-counts-modern"

``--wide --run-only`` leaves out the rows that no folder holds, and marks a row missing from
one folder with a dash (for the rows run smaller).
"""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

from lstmkit.reproduce.experiments import get, names
from lstmkit.reproduce.records import RunResult


def wilson(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95 % Wilson score interval of a success rate."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    spread = math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    half = z * spread / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def _spread(solved: list[int]) -> str:
    if len(solved) > 1:
        return f"{statistics.fmean(solved):,.0f} ± {statistics.stdev(solved):,.0f}"
    return f"{solved[0]:,}" if solved else "-"


def _paper(res: RunResult | None, row: str) -> str:
    paper = res.paper if res is not None else get(row).reference()
    rate = "" if paper is None or paper.success_rate is None else f"{paper.success_rate:.0%}, "
    mean = "-" if paper is None or not paper.sequences else f"{paper.sequences:,}"
    return rate + mean


def wide(series: list[str], run_only: bool = False) -> None:
    """One line per row of the paper, one column per ``label=folder``; a row missing from a
    folder: not run. With ``run_only``, rows that no folder holds are left out."""
    runs: dict[str, dict[str, RunResult]] = {}
    labels = []
    for item in series:
        label, _, folder = item.partition("=")
        labels.append(label)
        for path in sorted(Path(folder).glob("*/results.json")):
            res = RunResult.read(path)
            runs.setdefault(res.experiment, {})[label] = res
    print("| row | paper: success, mean sequences | " + " | ".join(labels) + " |")
    print("|---|---|" + "---|" * len(labels))
    for row in names():
        if run_only and row not in runs:
            continue
        cells, paper = [], _paper(None, row)
        for label in labels:
            res = runs.get(row, {}).get(label)
            if res is None:
                cells.append("-" if run_only else "not run")
                continue
            solved = [t.sequences for t in res.trials if t.success]
            low, high = wilson(len(solved), len(res.trials))
            cells.append(f"{len(solved)}/{len(res.trials)} ({low:.0%}–{high:.0%}), "
                         f"{_spread(solved)}; {res.settings.max_sequences:,}")
        print(f"| {row} | {paper} | " + " | ".join(cells) + " |")


def main(folder: str) -> None:
    print("| row | setting | paper: success, mean sequences | ours: successes/trials (95 % Wilson) "
          "| ours: sequences to success, mean ± std | budget |")
    print("|---|---|---|---|---|---:|")
    for path in sorted(Path(folder).glob("*/results.json")):
        res = RunResult.read(path)
        solved = [t.sequences for t in res.trials if t.success]
        low, high = wilson(len(solved), len(res.trials))
        print(f"| {res.experiment} | {res.setting} | {_paper(res, res.experiment)} | "
              f"{len(solved)}/{len(res.trials)} ({low:.0%}–{high:.0%}) | {_spread(solved)} | "
              f"{res.settings.max_sequences:,} |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--wide"]:
        only = "--run-only" in sys.argv[2:]
        wide([a for a in sys.argv[2:] if a != "--run-only"], run_only=only)
    else:
        main(sys.argv[1] if len(sys.argv) > 1 else "results/trial-counts")
