"""The table of ``RESULTS.md``'s runs at the paper's trial counts, from their ``results.json``.

Per row: the paper's success rate and mean sequences to success; ours as successes/trials with
a 95 % Wilson interval, and mean ± standard deviation of sequences to success over the trials
that succeeded; the budget per trial.

    python results/trial_counts.py results/trial-counts
"""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

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


def main(folder: str) -> None:
    print("| row | setting | paper: success, mean sequences | ours: successes/trials (95 % Wilson) "
          "| ours: sequences to success, mean ± std | budget |")
    print("|---|---|---|---|---|---:|")
    for path in sorted(Path(folder).glob("*/results.json")):
        res = RunResult.read(path)
        solved = [t.sequences for t in res.trials if t.success]
        low, high = wilson(len(solved), len(res.trials))
        paper = res.paper
        rate = "" if paper is None or paper.success_rate is None else f"{paper.success_rate:.0%}, "
        mean = "-" if paper is None or not paper.sequences else f"{paper.sequences:,}"
        spread = (f"{statistics.fmean(solved):,.0f} ± {statistics.stdev(solved):,.0f}"
                  if len(solved) > 1 else (f"{solved[0]:,}" if solved else "-"))
        print(f"| {res.experiment} | {res.setting} | {rate}{mean} | "
              f"{len(solved)}/{len(res.trials)} ({low:.0%}–{high:.0%}) | {spread} | "
              f"{res.settings.max_sequences:,} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results/trial-counts")
