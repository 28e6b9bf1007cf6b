"""Two checkouts of lstmkit compared on this machine: each variant's training step and inference
against ``torch.nn.LSTM`` of the same shape, in one process, alternating, as geometric means of
per-shape median ratios. Run it once per checkout (``PYTHONPATH=<checkout>/src``) and alternate
the checkouts, so that drifting machine load hits both:

    PYTHONPATH=old/src python benchmarks/compare_checkouts.py old1
    PYTHONPATH=src     python benchmarks/compare_checkouts.py new1

Arguments: a tag for the output line, then optionally comma-separated variants.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from collections.abc import Callable

import torch

import lstmkit

SHAPES = [(100, 32, 32, 64), (100, 64, 128, 128), (200, 32, 1, 128), (100, 64, 256, 512),
          (50, 16, 64, 256)]
ROUNDS, WARMUP = 7, 2


def _geomean(xs: list[float]) -> float:
    return math.exp(sum(map(math.log, xs)) / len(xs))


def _paired(a: Callable[[], float], b: Callable[[], float]) -> float:
    """Median over rounds of a's time over b's, the order alternating each round."""
    ratios = []
    for r in range(ROUNDS):
        if r % 2 == 0:
            ta, tb = a(), b()
        else:
            tb, ta = b(), a()
        ratios.append(ta / tb)
    return statistics.median(ratios)


def _shape(variant: str, steps: int, batch: int, n_in: int, hidden: int) -> tuple[float, float]:
    """(training-step ratio, inference ratio) of ``variant`` to ``nn.LSTM`` at one shape."""
    torch.manual_seed(0)
    cls = lstmkit.GRU if variant.startswith("gru") else lstmkit.LSTM
    eng = cls(n_in, hidden, variant=variant, backend="engine")
    ref = torch.nn.LSTM(n_in, hidden)
    x, grad = torch.randn(steps, batch, n_in), torch.randn(steps, batch, hidden)

    def train(m: torch.nn.Module) -> float:
        start = time.perf_counter()
        m(x)[0].backward(grad)
        return time.perf_counter() - start

    def infer(m: torch.nn.Module) -> float:
        with torch.no_grad():
            start = time.perf_counter()
            m(x)
            return time.perf_counter() - start

    for _ in range(WARMUP):
        train(eng), train(ref), infer(eng), infer(ref)
    return (_paired(lambda: train(eng), lambda: train(ref)),
            _paired(lambda: infer(eng), lambda: infer(ref)))


def measure(variant: str) -> dict[str, object]:
    ratios = [_shape(variant, *shape) for shape in SHAPES]
    train_r, infer_r = [r[0] for r in ratios], [r[1] for r in ratios]
    return {"train": round(_geomean(train_r), 3), "infer": round(_geomean(infer_r), 3),
            "train_shapes": [round(t, 3) for t in train_r]}


def main() -> None:
    torch.set_num_threads(2)
    variants = sys.argv[2].split(",") if len(sys.argv) > 2 else [
        "peephole", "cifg", "lstm1997", "gru_cho"]
    print(sys.argv[1], json.dumps({v: measure(v) for v in variants}))


if __name__ == "__main__":
    main()
