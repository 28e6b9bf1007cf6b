"""The engine benchmark's record: its targets, the row of one measurement, the summary per
variant, and the Markdown table and JSON file that ``benchmarks/bench_engine.py`` writes.

The targets are the project's own bar for the fused engine against ``torch.nn.LSTM``
(BENCHMARKS.md records the runs): the training step and inference as geometric means of the
paired ratios over the shapes, the engine within a factor of its GEMM floor on the shapes with
the most GEMM work, and peak memory within ``nn.LSTM``'s plus the engine's saved gates.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lstmkit.bench import Comparison

TARGET_TRAIN_GEOMEAN = 1.25
TARGET_TRAIN_MAX = 1.6
TARGET_INFER = 1.25
TARGET_FLOOR = 1.5
FLOOR_SHAPES = 3  # the floor target applies to this many shapes with the most GEMM work


@dataclass(frozen=True)
class Row(Comparison):
    """One (shape, variant) measurement: the comparison with ``nn.LSTM`` plus the GEMM floor and
    peak memory; times in milliseconds, memory in bytes."""

    train_floor_ms: float
    infer_floor_ms: float
    train_floor_ratio: float
    infer_floor_ratio: float
    peak_bytes: int
    ref_peak_bytes: int
    gate_bytes: int
    floor_flops: float
    #: the variant's inference multiply-adds over ``nn.LSTM``'s at the same shape
    infer_flop_ratio: float = 1.0

    @property
    def mem_ratio(self) -> float:
        return self.peak_bytes / max(1, self.ref_peak_bytes + self.gate_bytes)


def _geomean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def summarise(rows: Sequence[Row]) -> dict[str, dict[str, Any]]:
    """Per variant: geometric means and maxima of the ratios, the floor ratios on the shapes with
    the most GEMM work, the worst memory ratio and whether each target (``TARGET_*``) is met."""
    out: dict[str, dict[str, Any]] = {}
    for v in dict.fromkeys(r.variant for r in rows):
        mine = [r for r in rows if r.variant == v]
        big = sorted(mine, key=lambda r: -r.floor_flops)[:FLOOR_SHAPES]
        s = {
            "train_geomean": _geomean([r.train_ratio for r in mine]),
            "train_max": max(r.train_ratio for r in mine),
            "infer_geomean": _geomean([r.infer_ratio for r in mine]),
            "infer_max": max(r.infer_ratio for r in mine),
            # the inference ratio per multiply-add: how the engine's arithmetic speed compares
            "infer_per_flop_geomean": _geomean([r.infer_ratio / r.infer_flop_ratio for r in mine]),
            "floor_shapes": [list(r.shape) for r in big],
            "train_floor_max": max(r.train_floor_ratio for r in big),
            "infer_floor_max": max(r.infer_floor_ratio for r in big),
            "mem_max": max(r.mem_ratio for r in mine),
        }
        s["met"] = {
            "train": s["train_geomean"] <= TARGET_TRAIN_GEOMEAN
            and s["train_max"] <= TARGET_TRAIN_MAX,
            "infer": s["infer_geomean"] <= TARGET_INFER,
            "floor": s["train_floor_max"] <= TARGET_FLOOR and s["infer_floor_max"] <= TARGET_FLOOR,
            "memory": s["mem_max"] <= 1.0 if any(r.ref_peak_bytes for r in mine) else None,
        }
        out[v] = s
    return out


def _yes(flag: bool | None) -> str:
    return "n/a" if flag is None else ("yes" if flag else "**no**")


def format_report(rows: Sequence[Row], summary: dict[str, dict[str, Any]], header: str) -> str:
    """The Markdown report: one table of every measurement and one of the targets."""
    lines = [header, "",
             "| shape (T, B, in, H) | variant | train ms | nn.LSTM train ms | train ratio "
             "| infer ms | nn.LSTM infer ms | infer ratio | infer FLOPs / nn.LSTM's "
             "| train / floor | infer / floor | peak MB | nn.LSTM peak + gates MB | mem ratio |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {tuple(r.shape)} | {r.variant} | {r.train_ms:.2f} | {r.ref_train_ms:.2f} "
            f"| {r.train_ratio:.2f} | {r.infer_ms:.2f} | {r.ref_infer_ms:.2f} "
            f"| {r.infer_ratio:.2f} | {r.infer_flop_ratio:.2f} "
            f"| {r.train_floor_ratio:.2f} | {r.infer_floor_ratio:.2f} "
            f"| {r.peak_bytes / 2**20:.1f} | {(r.ref_peak_bytes + r.gate_bytes) / 2**20:.1f} "
            f"| {r.mem_ratio:.2f} |")
    lines += ["", f"Targets: training geometric mean <= {TARGET_TRAIN_GEOMEAN} and every "
              f"shape <= {TARGET_TRAIN_MAX}; inference geometric mean <= {TARGET_INFER}; engine "
              f"<= {TARGET_FLOOR} x its GEMM floor on the {FLOOR_SHAPES} shapes with the most "
              "GEMM work; peak memory <= nn.LSTM's + the saved gates (mem ratio <= 1).", "",
              "| variant | train geomean | train max | infer geomean | infer max "
              "| infer geomean per FLOP "
              "| train / floor (max, big shapes) | infer / floor (max, big shapes) | mem ratio max "
              "| train met | infer met | floor met | memory met |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|"]
    for v, s in summary.items():
        met = s["met"]
        lines.append(
            f"| {v} | {s['train_geomean']:.2f} | {s['train_max']:.2f} | {s['infer_geomean']:.2f} "
            f"| {s['infer_max']:.2f} | {s['infer_per_flop_geomean']:.2f} "
            f"| {s['train_floor_max']:.2f} | {s['infer_floor_max']:.2f} "
            f"| {s['mem_max']:.2f} | {_yes(met['train'])} | {_yes(met['infer'])} "
            f"| {_yes(met['floor'])} | {_yes(met['memory'])} |")
    return "\n".join(lines) + "\n"


def write(path: str | Path, report: str, rows: Sequence[Row], summary: dict[str, dict[str, Any]],
          *, command: str, date: str, machine: str, repeats: int) -> tuple[Path, Path]:
    """The Markdown ``report`` at ``path`` and the numbers beside it (``path`` as ``.json``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report)
    payload = {"command": command, "date": date, "machine": machine, "repeats": repeats,
               "rows": [{**asdict(r), "mem_ratio": r.mem_ratio} for r in rows],
               "summary": summary}
    data = path.with_suffix(".json")
    data.write_text(json.dumps(payload, indent=1))
    return path, data
