"""The figure of ``RESULTS.md``: sequences to success per row, the paper beside lstmkit's runs.

Per row of the paper (x axis) and per folder of runs given (one series each), every trial as a
dot at its sequences to success, or as a cross at its budget where it failed, and the mean of
the successful trials as a bar; the paper's mean as a black diamond. Log scale.

    python results/figure.py docs/results-sequences.png \\
        "paper setting=results/trial-counts" "modern=results/trial-counts-modern"
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lstmkit.reproduce.experiments import names  # noqa: E402
from lstmkit.reproduce.records import RunResult  # noqa: E402


def main(out: str, series: list[str]) -> None:
    runs: dict[str, dict[str, RunResult]] = {}
    for item in series:
        label, _, folder = item.partition("=")
        runs[label] = {p.parent.name: RunResult.read(p)
                       for p in sorted(Path(folder).glob("*/results.json"))}
    rows = [r for r in names() if any(r in found for found in runs.values())]
    fig, ax = plt.subplots(figsize=(max(10.0, 1.1 * len(rows)), 5.2))
    width = 0.8 / max(1, len(runs))
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]
    for k, (label, found) in enumerate(runs.items()):
        colour = colours[k % len(colours)]
        for x, row in enumerate(rows):
            res = found.get(row)
            if res is None:
                continue
            pos = x - 0.4 + width * (k + 0.5)
            won = [t.sequences for t in res.trials if t.success]
            lost = [t for t in res.trials if not t.success]
            ax.scatter([pos] * len(won), won, s=10, color=colour, alpha=0.6,
                       label=label if x == rows.index(next(r for r in rows if r in found))
                       else None)
            if lost:
                ax.scatter([pos] * len(lost), [res.settings.max_sequences] * len(lost),
                           marker="x", s=30, color=colour)
            if won:
                mean = statistics.fmean(won)
                ax.hlines(mean, pos - width / 2, pos + width / 2, color=colour, lw=2)
            # Staggered by series so that neighbouring counts do not overlap.
            ax.text(pos, 0.02 + 0.035 * k, f"{len(won)}/{len(res.trials)}",
                    transform=ax.get_xaxis_transform(), ha="center", fontsize=7, color=colour)
    for x, row in enumerate(rows):
        paper = next((found[row].paper for found in runs.values() if row in found), None)
        if paper is not None and paper.sequences:
            ax.scatter([x], [paper.sequences], marker="D", color="black", s=30,
                       label="H&S 1997 mean" if x == 0 else None, zorder=5)
    ax.set_yscale("log")
    ax.set_xticks(range(len(rows)), rows, rotation=30, ha="right")
    ax.set_ylabel("training sequences to success")
    ax.set_title("Sequences to success per trial (dots; bar: mean; x: failed at its budget)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    print(f"wrote {out}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
