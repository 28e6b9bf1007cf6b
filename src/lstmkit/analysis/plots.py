"""Figures drawn from results files: the training curves of a ``lstmkit reproduce`` run.

Every function takes a recorded run (:class:`lstmkit.reproduce.RunResult`, as
``RunResult.read("results.json")`` loads it), writes one PNG and returns its path, so a figure
can be redrawn later from the numbers without retraining.
"""

from __future__ import annotations

from pathlib import Path

from ..reproduce.records import RunResult
from .figures import new_figure, save


def training_curves(results: RunResult, path: str | Path) -> Path:
    """Loss and training-set correctness against training sequences, one line per trial.

    The paper's mean number of sequences to success is drawn as a dashed vertical mark, and each
    successful trial's own success point as a dot on its curve.
    """
    if not isinstance(results, RunResult):
        raise TypeError(f"results: expected a RunResult, got {type(results).__name__}")
    fig = new_figure((11, 4.2))
    ax_loss, ax_metric = fig.subplots(1, 2)
    metric_name = "fraction of training sequences correct"
    for trial in results.trials:
        curve = trial.curve
        if not curve.sequences:
            continue
        metric_name = curve.metric_name
        label = f"seed {trial.seed}" + ("" if trial.success else " (failed)")
        (line,) = ax_loss.plot(curve.sequences, curve.loss, lw=1.2, label=label)
        ax_metric.plot(curve.sequences, curve.metric, lw=1.2, color=line.get_color())
        if trial.success and trial.sequences is not None:
            ax_metric.plot([trial.sequences], [1.0], "o", color=line.get_color(), ms=4)
    paper_mean = results.paper.sequences if results.paper is not None else None
    if paper_mean:
        for ax in (ax_loss, ax_metric):
            ax.axvline(paper_mean, ls="--", color="0.4", lw=1)
        ax_metric.text(paper_mean, 0.02, " paper's mean", color="0.3", fontsize=8)
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("training sequences presented")
    ax_loss.set_ylabel("training loss (mean per sequence)")
    ax_metric.set_xlabel("training sequences presented")
    ax_metric.set_ylabel(metric_name)
    ax_metric.set_ylim(-0.02, 1.05)
    for ax in (ax_loss, ax_metric):
        ax.grid(alpha=0.3)
    if len(results.trials) <= 12:
        ax_loss.legend(fontsize=7)
    fig.suptitle(f"{results.experiment}: {results.setting} setting, cell {results.cell} "
                 f"({results.title})", fontsize=10)
    return save(fig, path)
