"""The fused CPU engine against ``torch.nn.LSTM`` and against its GEMM floor: the project's
benchmark record (BENCHMARKS.md).

For each shape ``(T, B, input, hidden)`` and each variant, one process measures, in rounds that
alternate the candidates (rotating their order every round so that none always runs first):

* the training step (forward, backward of a fixed output gradient) of the lstmkit layer on the
  fused engine and of ``torch.nn.LSTM`` of the same shape;
* inference (forward under ``torch.no_grad``) of both;
* the floor: the GEMMs the engine issues for that variant and shape, alone
  (:mod:`engine_floor`);
* once, the peak CPU memory of one training step of each (torch's profiler), against
  ``torch.nn.LSTM``'s plus the bytes of the engine's saved gates.

Times are medians over rounds; a ratio is the median over rounds of the candidate's time
divided by the reference's time of the same round (the timing core of ``lstmkit bench``).
Results go to stdout, to a Markdown table (``--out``) and to a JSON file beside it, with the
targets of :mod:`engine_record`. Run from the repository root::

    .venv/bin/python benchmarks/bench_engine.py --out benchmarks/results.md

Options: ``--quick``, ``--shapes``, ``--variants``, ``--repeats``, ``--threads``,
``--no-memory``, ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import engine_floor
import engine_record
import torch
from engine_record import Row
from torch import nn

from lstmkit import engine
from lstmkit.bench import (
    Shape,
    alternate,
    check_request,
    inference,
    make_layer,
    paired_ratio,
    parse_shapes,
    path_of,
    timing_fields,
    train_step,
)
from lstmkit.cells.spec import get_spec

#: (T, B, input, hidden): small to large nets, long and short sequences, one scalar input.
DEFAULT_SHAPES: tuple[Shape, ...] = (
    (100, 32, 32, 64), (100, 64, 128, 128), (200, 32, 1, 128), (100, 64, 256, 512),
    (50, 16, 64, 256),
)
DEFAULT_VARIANTS: tuple[str, ...] = ("peephole", "cifg", "vanilla", "lstm1997", "gru_cho")
PROG = "benchmarks/bench_engine.py"


def bench_shape(shape: Shape, variants: Sequence[str], *, repeats: int, warmup: int,
                memory: bool = True, seed: int = 0,
                log: Callable[[str], None] = print) -> list[Row]:
    """Measure every variant at one shape against ``torch.nn.LSTM`` and the variant's floor."""
    torch.manual_seed(seed)
    steps, batch, n_in, hidden = shape
    x = torch.randn(steps, batch, n_in)
    grad = torch.randn(steps, batch, hidden)
    ref = nn.LSTM(n_in, hidden)
    cands = {v: make_layer(v, shape, backend="engine") for v in variants}
    specs = {v: (get_spec("gru") if v == "torch.nn.GRU" else get_spec("lstm")
                 if v == "torch.nn.LSTM" else get_spec(v)) for v in variants}
    results: dict[str, dict[str, list[float]]] = {}
    for mode in ("train", "infer"):
        if mode == "train":
            fns = {"ref": train_step(ref, x, grad),
                   **{v: train_step(m, x, grad) for v, m in cands.items()}}
        else:
            fns = {"ref": inference(ref, x), **{v: inference(m, x) for v, m in cands.items()}}
        for v in variants:
            fns[f"floor:{v}"] = engine_floor.floor(
                engine_floor.gemm_plan(specs[v], shape, mode == "train"))
        log(f"  {shape} {mode}: {len(fns)} functions x {repeats} rounds")
        results[mode] = alternate(fns, repeats, warmup)
    ref_peak = engine_floor.peak_memory(train_step(ref, x, grad)) if memory else 0
    lstm_infer_flops = engine_floor.plan_flops(engine_floor.gemm_plan(get_spec("lstm"), shape,
                                                                      False))
    rows = []
    for v in variants:
        tr, inf = results["train"], results["infer"]
        peak = engine_floor.peak_memory(train_step(cands[v], x, grad)) if memory else 0
        gate_bytes = steps * batch * specs[v].layout(hidden).rows * x.element_size()
        rows.append(Row(
            shape=shape, variant=v, path=path_of(cands[v]), **timing_fields(tr, inf, v),
            train_floor_ms=1e3 * statistics.median(tr[f"floor:{v}"]),
            infer_floor_ms=1e3 * statistics.median(inf[f"floor:{v}"]),
            train_floor_ratio=paired_ratio(tr[v], tr[f"floor:{v}"]),
            infer_floor_ratio=paired_ratio(inf[v], inf[f"floor:{v}"]),
            peak_bytes=peak, ref_peak_bytes=ref_peak, gate_bytes=gate_bytes,
            floor_flops=engine_floor.plan_flops(engine_floor.gemm_plan(specs[v], shape, True)),
            infer_flop_ratio=engine_floor.plan_flops(
                engine_floor.gemm_plan(specs[v], shape, False)) / lstm_infer_flops,
        ))
    return rows


def _machine(threads: int) -> str:
    # The load average and the OpenMP wait policy are recorded because on a shared machine
    # they, more than anything in the code, decide how far the medians move between runs.
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    ext = engine._build.load()
    kernel = ext.step_gemm() if ext is not None else "none (the engine is not built)"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, "
            f"torch {torch.__version__}, {threads} threads, per-step GEMMs: {kernel}, "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
            f"load average {load:.1f} at the end")


def run(shapes: Sequence[Shape] = DEFAULT_SHAPES, variants: Sequence[str] = DEFAULT_VARIANTS,
        *, repeats: int = 9, warmup: int = 2, threads: int = 2, memory: bool = True,
        out: str | Path | None = None, command: str = PROG
        ) -> tuple[list[Row], dict[str, dict]]:
    """Run the benchmark, print the report, and write it (``out`` and ``out`` as .json)."""
    check_request(shapes, variants)
    torch.set_num_threads(threads)
    if not engine.available():
        raise OSError(f"the fused engine is not available: {engine.build_error()}")
    rows: list[Row] = []
    for shape in shapes:
        rows += bench_shape(shape, variants, repeats=repeats, warmup=warmup, memory=memory)
    summary = engine_record.summarise(rows)
    when = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    machine = _machine(threads)
    header = (f"`{command}` — {when} — {machine}; medians of {repeats} alternating rounds "
              f"after {warmup} warm-up, float32")
    report = engine_record.format_report(rows, summary, header)
    print(report)
    if out is not None:
        md, data = engine_record.write(out, report, rows, summary, command=command, date=when,
                                       machine=machine, repeats=repeats)
        print(f"wrote {md} and {data}")
    return rows, summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="3 rounds and 1 warm-up (smoke test)")
    p.add_argument("--shapes", default=None,
                   help="comma-separated TxBxINxH (default: "
                   + ",".join("x".join(map(str, s)) for s in DEFAULT_SHAPES) + ")")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help="comma-separated presets; torch.nn.GRU and torch.nn.LSTM also allowed")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 9)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory profile")
    p.add_argument("--out", default="lstmkit-bench.md",
                   help="Markdown report path; a .json beside it (default lstmkit-bench.md)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 9)
    warmup = 1 if args.quick else 2
    if repeats < 1:
        p.error(f"--repeats: expected an int >= 1, got {repeats}")
    if args.threads < 1:
        p.error(f"--threads: expected an int >= 1, got {args.threads}")
    try:
        shapes = parse_shapes(args.shapes) if args.shapes else list(DEFAULT_SHAPES)
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        parts = [PROG] + (["--quick"] if args.quick else [])
        if args.shapes:
            parts.append(f"--shapes {args.shapes}")
        if args.variants != ",".join(DEFAULT_VARIANTS):
            parts.append(f"--variants {args.variants}")
        if args.repeats is not None:
            parts.append(f"--repeats {args.repeats}")
        run(shapes, variants, repeats=repeats, warmup=warmup, threads=args.threads,
            memory=not args.no_memory, out=args.out, command=" ".join(parts))
    except (ValueError, TypeError, OSError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
