"""The engine's per-step GEMM alone: its packed kernel against the BLAS call it replaces.

Each case repeats ``C[M,N] += A[M,K] W^T`` (M batch rows, N pre-activation rows, K recurrent
inputs) the way the engine's time loop does: the rows split across threads as the engine splits
them, the weight packed once per run. Both paths run in the same process, alternating, and the
medians of GFLOP/s are printed as a Markdown table.

    .venv/bin/python benchmarks/bench_step_gemm.py
"""

from __future__ import annotations

import statistics
import time

import torch

from lstmkit.engine import _build

#: (M, N, K): the per-step GEMMs of the benchmark shapes (LSTM rows 4H, recurrent inputs H).
CASES = ((32, 256, 64), (64, 512, 128), (32, 512, 128), (64, 2048, 512), (16, 1024, 256))
STEPS = 200
ROUNDS = 7


def main() -> None:
    ext = _build.load()
    if ext is None:
        raise SystemExit(f"the fused engine is not available: {_build.error()}")
    torch.set_num_threads(2)
    print(f"packed kernel compiled in: {ext.has_kernel()}; 2 threads; {STEPS} steps per run; "
          f"medians of {ROUNDS} alternating rounds\n")
    print("| M, N, K | kernel GFLOP/s | BLAS GFLOP/s | BLAS time / kernel time |")
    print("|---|---:|---:|---:|")
    previous = ext.set_kernel(True)
    try:
        for m, n, k in CASES:
            a, w, c = torch.randn(m, k), torch.randn(n, k), torch.zeros(m, n)
            times: dict[bool, list[float]] = {True: [], False: []}
            for _ in range(ROUNDS + 1):
                for use in (True, False):
                    ext.set_kernel(use)
                    start = time.perf_counter()
                    ext.gemm_loop(a, w, c, STEPS, True, True)
                    times[use].append(time.perf_counter() - start)
            flops = 2.0 * m * n * k * STEPS
            kern, blas = (statistics.median(times[u][1:]) for u in (True, False))
            print(f"| {m}, {n}, {k} | {flops / kern / 1e9:.0f} | {flops / blas / 1e9:.0f} "
                  f"| {blas / kern:.2f} |")
    finally:
        ext.set_kernel(previous)


if __name__ == "__main__":
    main()
