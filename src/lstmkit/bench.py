"""``lstmkit bench``: the fused CPU engine against ``torch.nn.LSTM`` and against its GEMM floor.

For each shape ``(T, B, input, hidden)`` and each variant, one process measures, in rounds that
alternate the candidates (rotating their order every round so that none always runs first):

* the training step (forward, backward of a fixed output gradient) of the lstmkit layer on the
  fused engine and of ``torch.nn.LSTM`` of the same shape;
* inference (forward under ``torch.no_grad``) of both;
* the floor: the GEMMs the engine issues for that variant and shape, alone (the input
  projection, the per-step recurrent GEMMs through the engine's own GEMM path (its packed kernel
  or the BLAS) with the batch rows split across threads exactly as the engine splits them and
  each step's output in its own slice of a ``[T, B, rows]`` buffer as the engine's is, and in
  training the per-step state-gradient GEMMs, each reading its own step's slice, and the
  weight-gradient GEMMs over all steps);
* once, the peak CPU memory of one training step of each (torch's profiler), against
  ``torch.nn.LSTM``'s plus the bytes of the engine's saved gates.

Times are medians over rounds; a ratio is the median over rounds of the candidate's time
divided by the reference's time of the same round, so that load from other processes, which
comes and goes, mostly cancels. Results go to stdout, to a Markdown table (``--out``) and to a
JSON file beside it. ``benchmarks/bench_engine.py`` runs the same code.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .analysis._limits import check_memory
from .cells.spec import CellSpec, get_spec

Shape = tuple[int, int, int, int]

#: (T, B, input, hidden): small to large nets, long and short sequences, one scalar input.
DEFAULT_SHAPES: tuple[Shape, ...] = (
    (100, 32, 32, 64), (100, 64, 128, 128), (200, 32, 1, 128), (100, 64, 256, 512),
    (50, 16, 64, 256),
)
DEFAULT_VARIANTS: tuple[str, ...] = ("peephole", "cifg", "vanilla", "lstm1997", "gru_cho")
#: Variants that are torch's own modules, measured like a candidate for context.
TORCH_MODULES = {"torch.nn.GRU": nn.GRU, "torch.nn.LSTM": nn.LSTM}

TARGET_TRAIN_GEOMEAN = 1.25
TARGET_TRAIN_MAX = 1.6
TARGET_INFER = 1.25
TARGET_FLOOR = 1.5
FLOOR_SHAPES = 3  # the floor target applies to this many shapes with the most GEMM work


@dataclass
class Row:
    """One (shape, variant) measurement; times in milliseconds, memory in bytes."""

    shape: Shape
    variant: str
    train_ms: float
    ref_train_ms: float
    train_ratio: float
    infer_ms: float
    ref_infer_ms: float
    infer_ratio: float
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


# -------------------------------------------------------------------------------------------
# What is measured


def make_layer(variant: str, shape: Shape, backend: str = "engine") -> nn.Module:
    """The candidate layer: an lstmkit layer of ``variant`` or one of torch's own modules."""
    _, _, n_in, hidden = shape
    if variant in TORCH_MODULES:
        return TORCH_MODULES[variant](n_in, hidden)
    from . import layers

    spec = get_spec(variant)
    cls = {"lstm": layers.LSTM, "gru": layers.GRU, "rnn": layers.RNN}[spec.family]
    return cls(n_in, hidden, variant=spec, backend=backend)


def _train_step(module: nn.Module, x: Tensor, grad: Tensor) -> Callable[[], None]:
    params = list(module.parameters())

    def run() -> None:
        for p in params:
            p.grad = None
        out = module(x)[0]
        out.backward(grad)

    return run


def _infer(module: nn.Module, x: Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            module(x)

    return run


def gemm_plan(spec: CellSpec, shape: Shape, train: bool) -> list[tuple[str, int, int, int, int]]:
    """The engine's GEMMs for one layer-direction: ``(kind, M, N, K, count)``.

    ``kind`` is ``"proj"`` (``[M,K] x [N,K]^T`` once), ``"step_t"`` (``[M,K] x [N,K]^T`` per
    step, as the forward recurrence), ``"step_n"`` (``[M,K] x [K,N]`` per step, as the state
    gradient) or ``"wgrad"`` (``[K,M]^T x [K,N]``, a weight gradient over all steps). The input
    gradient is not in the plan: the benchmark's input does not require a gradient.
    """
    steps, batch, n_in, hidden = shape
    tb = steps * batch
    plan: list[tuple[str, int, int, int, int]] = []
    if spec.family == "lstm":
        lay = spec.layout(hidden)
        rows, k_rec = lay.rows, lay.recurrent_input
        plan.append(("proj", tb, rows, n_in, 1))
        if k_rec:
            plan.append(("step_t", batch, rows, k_rec, steps))
        if train:
            if k_rec and not spec.truncated_gradient:
                plan.append(("step_n", batch, k_rec, rows, steps))
            plan.append(("wgrad", rows, n_in, tb, 1))
            if k_rec:
                plan.append(("wgrad", rows, k_rec, tb, 1))
        return plan
    rows = 3 * hidden if spec.family == "gru" else hidden
    plan.append(("proj", tb, rows, n_in, 1))
    if spec.family == "gru" and not spec.reset_after:
        plan += [("step_t", batch, 2 * hidden, hidden, steps), ("step_t", batch, hidden, hidden,
                                                                steps)]
        if train:
            plan += [("step_n", batch, hidden, hidden, steps),
                     ("step_n", batch, hidden, 2 * hidden, steps),
                     ("wgrad", rows, n_in, tb, 1), ("wgrad", 2 * hidden, hidden, tb, 1),
                     ("wgrad", hidden, hidden, tb, 1)]
        return plan
    plan.append(("step_t", batch, rows, hidden, steps))
    if train:
        plan += [("step_n", batch, hidden, rows, steps), ("wgrad", rows, n_in, tb, 1),
                 ("wgrad", rows, hidden, tb, 1)]
    return plan


def plan_flops(plan: Sequence[tuple[str, int, int, int, int]]) -> float:
    return float(sum(2 * m * n * k * count for _, m, n, k, count in plan))


def _floor(plan: Sequence[tuple[str, int, int, int, int]]) -> Callable[[], None]:
    """Run the plan's GEMMs on preallocated operands (the per-step ones in C++, one call)."""
    from . import engine

    ext = engine._build.load()
    calls: list[Callable[[], Any]] = []
    for kind, m, n, k, count in plan:
        if kind == "proj":
            a, w, bias = torch.randn(m, k), torch.randn(n, k), torch.randn(n)
            calls.append(lambda a=a, w=w, bias=bias: torch.addmm(bias, a, w.t()))
        elif kind == "wgrad":
            a, b = torch.randn(k, m), torch.randn(k, n)
            calls.append(lambda a=a, b=b: torch.mm(a.t(), b))
        else:
            # As in the engine: the forward step writes into its own step's slice of the input
            # projection, the backward step reads its own step's slice of dz.
            trans = kind == "step_t"
            a = torch.randn(m, k) if trans else torch.randn(count, m, k)
            w = torch.randn(n, k) if trans else torch.randn(k, n)
            c = torch.randn(count, m, n) if trans else torch.zeros(m, n)
            if ext is not None:
                calls.append(lambda a=a, w=w, c=c, count=count, trans=trans:
                             ext.gemm_loop(a, w, c, count, True, trans))
            else:  # no engine: the floor is only informative, torch's GEMM loop stands in
                wt = w.t() if trans else w
                calls.append(lambda a=a, wt=wt, c=c, count=count:
                             [(c[i] if c.dim() == 3 else c).addmm_(a[i] if a.dim() == 3 else a, wt)
                              for i in range(count)])

    def run() -> None:
        for call in calls:
            call()

    return run


def peak_memory(fn: Callable[[], None]) -> int:
    """Peak bytes allocated through torch's CPU allocator while ``fn`` runs (profiler events)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events: list[tuple[int, int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            extra = node.extra_fields
            events.append((node.start_time_ns, extra.total_allocated, extra.alloc_size))
        stack.extend(node.children)
    if not events:
        return 0
    events.sort()
    base = events[0][1] - events[0][2]
    return max(total for _, total, _ in events) - base


def measure(fns: dict[str, Callable[[], None]], repeats: int,
            warmup: int) -> dict[str, list[float]]:
    """Seconds per call of each function, in ``repeats`` rounds with a rotating order."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return times


def _paired_ratio(num: list[float], den: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(num, den))


def bench_shape(shape: Shape, variants: Sequence[str], *, repeats: int, warmup: int,
                memory: bool = True, seed: int = 0,
                log: Callable[[str], None] = print) -> list[Row]:
    """Measure every variant at one shape against ``torch.nn.LSTM``."""
    torch.manual_seed(seed)
    steps, batch, n_in, hidden = shape
    x = torch.randn(steps, batch, n_in)
    grad = torch.randn(steps, batch, hidden)
    ref = nn.LSTM(n_in, hidden)
    cands = {v: make_layer(v, shape) for v in variants}
    specs = {v: (get_spec("gru") if v == "torch.nn.GRU" else get_spec("lstm")
                 if v == "torch.nn.LSTM" else get_spec(v)) for v in variants}
    results: dict[str, dict[str, list[float]]] = {}
    for mode in ("train", "infer"):
        fns: dict[str, Callable[[], None]] = {}
        if mode == "train":
            fns["ref"] = _train_step(ref, x, grad)
            for v, m in cands.items():
                fns[v] = _train_step(m, x, grad)
        else:
            fns["ref"] = _infer(ref, x)
            for v, m in cands.items():
                fns[v] = _infer(m, x)
        for v in variants:
            fns[f"floor:{v}"] = _floor(gemm_plan(specs[v], shape, mode == "train"))
        log(f"  {shape} {mode}: {len(fns)} functions x {repeats} rounds")
        results[mode] = measure(fns, repeats, warmup)
    ref_peak = peak_memory(_train_step(ref, x, grad)) if memory else 0
    rows = []
    for v in variants:
        tr, inf = results["train"], results["infer"]
        peak = peak_memory(_train_step(cands[v], x, grad)) if memory else 0
        gate_bytes = steps * batch * specs[v].layout(hidden).rows * x.element_size()
        rows.append(Row(
            shape=shape, variant=v,
            train_ms=1e3 * statistics.median(tr[v]),
            ref_train_ms=1e3 * statistics.median(tr["ref"]),
            train_ratio=_paired_ratio(tr[v], tr["ref"]),
            infer_ms=1e3 * statistics.median(inf[v]),
            ref_infer_ms=1e3 * statistics.median(inf["ref"]),
            infer_ratio=_paired_ratio(inf[v], inf["ref"]),
            train_floor_ms=1e3 * statistics.median(tr[f"floor:{v}"]),
            infer_floor_ms=1e3 * statistics.median(inf[f"floor:{v}"]),
            train_floor_ratio=_paired_ratio(tr[v], tr[f"floor:{v}"]),
            infer_floor_ratio=_paired_ratio(inf[v], inf[f"floor:{v}"]),
            peak_bytes=peak, ref_peak_bytes=ref_peak, gate_bytes=gate_bytes,
            floor_flops=plan_flops(gemm_plan(specs[v], shape, True)),
            infer_flop_ratio=plan_flops(gemm_plan(specs[v], shape, False))
            / plan_flops(gemm_plan(get_spec("lstm"), shape, False)),
        ))
    return rows


# -------------------------------------------------------------------------------------------
# Report


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


def memory_estimate(shape: Shape, variants: int) -> float:
    """A rough upper bound, in bytes, of what :func:`bench_shape` holds at once for ``shape``.

    Every candidate's floor keeps its own ``[T, B, rows]`` operands (rows up to about 5 hidden
    widths for the widest presets) while one training step holds its saved gates, all float32.
    """
    steps, batch, n_in, hidden = shape
    per_candidate = steps * batch * (n_in + 16 * hidden)
    return 4.0 * (variants + 2) * per_candidate + 4.0 * steps * batch * 2 * n_in


def parse_shapes(text: str) -> list[Shape]:
    """``"100x32x32x64,50x16x64x256"`` -> shapes."""
    shapes: list[Shape] = []
    for part in text.split(","):
        dims = part.strip().lower().split("x")
        if len(dims) != 4 or not all(d.isdigit() and int(d) > 0 for d in dims):
            raise ValueError(f"--shapes: expected TxBxINxH with positive ints, got {part!r}")
        shapes.append((int(dims[0]), int(dims[1]), int(dims[2]), int(dims[3])))
    return shapes


def run(shapes: Sequence[Shape] = DEFAULT_SHAPES, variants: Sequence[str] = DEFAULT_VARIANTS,
        *, repeats: int = 9, warmup: int = 2, threads: int = 2, memory: bool = True,
        out: str | Path | None = None, command: str = "lstmkit bench") -> tuple[list[Row], dict]:
    """Run the benchmark, print the report, and write it (``out`` and ``out`` .json)."""
    from . import engine

    for v in variants:
        if v not in TORCH_MODULES:
            get_spec(v)  # a clear error for an unknown name before any timing
    for shape in shapes:
        check_memory(memory_estimate(shape, len(variants)),
                     f"benchmarking shape {'x'.join(map(str, shape))} with {len(variants)} "
                     "variants", "use smaller --shapes or fewer --variants")
    torch.set_num_threads(threads)
    if not engine.available():
        raise OSError(f"the fused engine is not available: {engine.build_error()}")
    rows: list[Row] = []
    for shape in shapes:
        rows += bench_shape(shape, variants, repeats=repeats, warmup=warmup, memory=memory)
    summary = summarise(rows)
    when = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    # The load average and the OpenMP wait policy are recorded because on a shared machine
    # they, more than anything in the code, decide how far the medians move between runs.
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    ext = engine._build.load()
    kernel = "packed AVX-512 kernel" if ext is not None and ext.has_kernel() else "BLAS"
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, "
               f"torch {torch.__version__}, {threads} threads, per-step GEMMs: {kernel}, "
               f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
               f"load average {load:.1f} at the end")
    header = (f"`{command}` — {when} — {machine}; medians of {repeats} alternating rounds "
              f"after {warmup} warm-up, float32")
    report = format_report(rows, summary, header)
    print(report)
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(report)
        payload = {"command": command, "date": when, "machine": machine, "repeats": repeats,
                   "rows": [{**asdict(r), "mem_ratio": r.mem_ratio} for r in rows],
                   "summary": summary}
        path.with_suffix(".json").write_text(json.dumps(payload, indent=1))
        print(f"wrote {path} and {path.with_suffix('.json')}")
    return rows, summary


def _command(args: argparse.Namespace) -> int:
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 9)
    warmup = 1 if args.quick else 2
    shapes = parse_shapes(args.shapes) if args.shapes else list(DEFAULT_SHAPES)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if repeats < 1:
        raise ValueError(f"--repeats: expected an int >= 1, got {repeats}")
    if args.threads < 1:
        raise ValueError(f"--threads: expected an int >= 1, got {args.threads}")
    parts = ["lstmkit bench"] + (["--quick"] if args.quick else [])
    if args.shapes:
        parts.append(f"--shapes {args.shapes}")
    if args.variants != ",".join(DEFAULT_VARIANTS):
        parts.append(f"--variants {args.variants}")
    if args.repeats is not None:
        parts.append(f"--repeats {args.repeats}")
    run(shapes, variants, repeats=repeats, warmup=warmup, threads=args.threads,
        memory=not args.no_memory, out=args.out, command=" ".join(parts))
    return 0


def register(sub: Any) -> None:
    """Add ``lstmkit bench`` to the CLI's subparsers."""
    p = sub.add_parser("bench", help="time the fused engine against torch.nn.LSTM and its GEMMs",
                       description=__doc__.split("\n\n")[0])
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
    p.set_defaults(func=_command)
