"""Figures drawn from results files: the training curves of a ``lstmkit reproduce`` run.

Every function takes plain data (the ``results.json`` dictionary), writes one PNG and returns its
path, so a figure can be redrawn later from the numbers without retraining.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .figures import plt, save


def training_curves(results: dict[str, Any], path: str | Path) -> Path:
    """Loss and training-set correctness against training sequences, one line per trial.

    The paper's mean number of sequences to success is drawn as a dashed vertical mark, and each
    successful trial's own success point as a dot on its curve.
    """
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    metric_name = "fraction of training sequences correct"
    for trial in results["trials"]:
        curve = trial["curve"]
        if not curve["sequences"]:
            continue
        metric_name = curve.get("metric_name", metric_name)
        label = f"seed {trial['seed']}" + ("" if trial["success"] else " (failed)")
        (line,) = ax_loss.plot(curve["sequences"], curve["loss"], lw=1.2, label=label)
        ax_metric.plot(curve["sequences"], curve["metric"], lw=1.2, color=line.get_color())
        if trial["success"]:
            ax_metric.plot([trial["sequences"]], [1.0], "o", color=line.get_color(), ms=4)
    paper = results.get("paper") or {}
    if paper.get("sequences"):
        for ax in (ax_loss, ax_metric):
            ax.axvline(paper["sequences"], ls="--", color="0.4", lw=1)
        ax_metric.text(paper["sequences"], 0.02, " paper's mean", color="0.3", fontsize=8)
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("training sequences presented")
    ax_loss.set_ylabel("training loss (mean per sequence)")
    ax_metric.set_xlabel("training sequences presented")
    ax_metric.set_ylabel(metric_name)
    ax_metric.set_ylim(-0.02, 1.05)
    for ax in (ax_loss, ax_metric):
        ax.grid(alpha=0.3)
    if len(results["trials"]) <= 12:
        ax_loss.legend(fontsize=7)
    fig.suptitle(f"{results['experiment']}: {results['setting']} setting, cell "
                 f"{results['cell']} ({results['title']})", fontsize=10)
    return save(fig, path)
