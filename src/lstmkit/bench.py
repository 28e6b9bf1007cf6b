"""``lstmkit bench``: how fast each cell variant trains and infers on your shapes, against
``torch.nn.LSTM`` of the same shape.

For each shape ``(T, B, input, hidden)`` the variants and ``torch.nn.LSTM`` run in one process,
in rounds that alternate them (the order rotating every round, so that none always runs first):
a training step (forward, then backward of a fixed output gradient) and an inference forward
(under ``torch.no_grad``). Each variant runs on the path its layer's default ``backend="auto"``
takes here, which the table names. Times are medians over rounds; a ratio is the median over
rounds of the variant's time divided by ``nn.LSTM``'s in the same round, so that load from other
processes, which comes and goes, mostly cancels.

With ``--regularisers`` it times, for each variant, a training step with each recurrent
regulariser (``recurrent_dropout``, ``zoneout``, ``weight_drop``) against the same variant without
one, on the fused engine (the path a regularised call takes), in the same alternating rounds.

The functions here are also the timing core of the repository's engine benchmark
(``benchmarks/bench_engine.py``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .analysis._limits import check_int, check_memory
from .cells.spec import get_spec

Shape = tuple[int, int, int, int]

#: ``(T, B, input, hidden)`` when none is given: a small net on medium-length sequences.
DEFAULT_SHAPES: tuple[Shape, ...] = ((100, 32, 32, 64),)
DEFAULT_VARIANTS: tuple[str, ...] = ("peephole", "cifg", "vanilla", "lstm1997", "gru_cho")
#: Variants that are torch's own modules, measured like a candidate for context.
TORCH_MODULES = {"torch.nn.GRU": nn.GRU, "torch.nn.LSTM": nn.LSTM}
#: How the table names each path of ``backend="auto"`` (as ``lstmkit variants`` does).
PATH_NAMES = {"native": "torch kernel", "engine": "fused engine", "reference": "reference",
              "torch": "torch module"}


#: The regularisers ``--regularisers`` times, as layer arguments (typical rates).
REGULARISERS: dict[str, dict[str, float]] = {
    "recurrent_dropout": {"recurrent_dropout": 0.25},
    "zoneout": {"zoneout": 0.1},
    "weight_drop": {"weight_drop": 0.5},
}


def make_layer(variant: str, shape: Shape, backend: str = "auto",
               **options: float) -> nn.Module:
    """The candidate layer: an lstmkit layer of preset ``variant`` on ``backend`` (with layer
    ``options`` such as a regulariser), or one of torch's own modules
    (:data:`TORCH_MODULES`)."""
    _, _, n_in, hidden = shape
    if variant in TORCH_MODULES:
        return TORCH_MODULES[variant](n_in, hidden)
    from . import layers

    spec = get_spec(variant)
    cls = {"lstm": layers.LSTM, "gru": layers.GRU, "rnn": layers.RNN}[spec.family]
    return cls(n_in, hidden, variant=spec, backend=backend, **options)


def path_of(module: nn.Module) -> str:
    """The path ``module`` runs on for CPU float32 input (``"torch"`` for torch's modules)."""
    route = getattr(module, "route", None)
    return route().path if route is not None else "torch"


def train_step(module: nn.Module, x: Tensor, grad: Tensor) -> Callable[[], None]:
    """One training step of ``module`` on ``x``: forward, then backward of ``grad``."""
    params = list(module.parameters())

    def run() -> None:
        for p in params:
            p.grad = None
        out = module(x)[0]
        out.backward(grad)

    return run


def inference(module: nn.Module, x: Tensor) -> Callable[[], None]:
    """One forward of ``module`` on ``x`` under ``torch.no_grad``."""
    def run() -> None:
        with torch.no_grad():
            module(x)

    return run


#: What a timing reads: ``wall`` the elapsed time; ``cpu`` the CPU time of this process (all its
#: threads), which other processes on a shared machine disturb much less than the wall clock
#: (for one-thread runs; with more threads it adds their times up, so it is no measure of speed).
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def alternate(fns: dict[str, Callable[[], None]], repeats: int,
              warmup: int, clock: str = "wall") -> dict[str, list[float]]:
    """Seconds per call of each function, in ``repeats`` rounds with a rotating order, after
    ``warmup`` untimed rounds, read from :data:`CLOCKS` ``[clock]``."""
    if clock not in CLOCKS:
        raise ValueError(f"clock: expected one of {sorted(CLOCKS)}, got {clock!r}")
    now = CLOCKS[clock]
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            start = now()
            fns[name]()
            times[name].append(now() - start)
    return times


def paired_ratio(num: list[float], den: list[float]) -> float:
    """The median over rounds of ``num[r] / den[r]``."""
    return statistics.median(a / b for a, b in zip(num, den))


def parse_shapes(text: str) -> list[Shape]:
    """``"100x32x32x64,50x16x64x256"`` -> shapes."""
    shapes: list[Shape] = []
    for part in text.split(","):
        dims = part.strip().lower().split("x")
        if len(dims) != 4 or not all(d.isdigit() and int(d) > 0 for d in dims):
            raise ValueError(f"--shapes: expected TxBxINxH with positive ints, got {part!r}")
        shapes.append((int(dims[0]), int(dims[1]), int(dims[2]), int(dims[3])))
    return shapes


def memory_estimate(shape: Shape, variants: int) -> float:
    """A rough upper bound, in bytes, of what measuring ``variants`` candidates at ``shape``
    holds at once.

    Every candidate keeps ``[T, B, rows]`` buffers (rows up to about 5 hidden widths for the
    widest presets, and as many again for the engine benchmark's GEMM floor) while one training
    step holds its saved gates, all float32.
    """
    steps, batch, n_in, hidden = shape
    per_candidate = steps * batch * (n_in + 16 * hidden)
    return 4.0 * (variants + 2) * per_candidate + 4.0 * steps * batch * 2 * n_in


def check_request(shapes: Sequence[Shape], variants: Sequence[str]) -> None:
    """Refuse unknown variant names and shapes too large for this machine's memory, before any
    timing."""
    if not variants:
        raise ValueError("--variants: expected at least one preset name, got none")
    for v in variants:
        if v not in TORCH_MODULES:
            get_spec(v)  # the error lists the valid names
    for shape in shapes:
        check_memory(memory_estimate(shape, len(variants)),
                     f"benchmarking shape {'x'.join(map(str, shape))} with {len(variants)} "
                     "variants", "use smaller --shapes or fewer --variants")


@dataclass(frozen=True)
class Comparison:
    """One variant at one shape against ``torch.nn.LSTM``; times in milliseconds."""

    shape: Shape
    variant: str
    path: str
    train_ms: float
    ref_train_ms: float
    train_ratio: float
    infer_ms: float
    ref_infer_ms: float
    infer_ratio: float


def timing_fields(train: dict[str, list[float]], infer: dict[str, list[float]],
                  variant: str) -> dict[str, float]:
    """A :class:`Comparison`'s times and ratios for ``variant`` from alternating runs, each
    keyed by candidate with ``"ref"`` for ``torch.nn.LSTM`` (seconds in, milliseconds out)."""
    return {
        "train_ms": 1e3 * statistics.median(train[variant]),
        "ref_train_ms": 1e3 * statistics.median(train["ref"]),
        "train_ratio": paired_ratio(train[variant], train["ref"]),
        "infer_ms": 1e3 * statistics.median(infer[variant]),
        "ref_infer_ms": 1e3 * statistics.median(infer["ref"]),
        "infer_ratio": paired_ratio(infer[variant], infer["ref"]),
    }


def compare_shape(shape: Shape, variants: Sequence[str], *, repeats: int, warmup: int,
                  seed: int = 0, clock: str = "wall") -> list[Comparison]:
    """Time every variant at ``shape`` against ``torch.nn.LSTM``, alternating."""
    torch.manual_seed(seed)
    steps, batch, n_in, hidden = shape
    x = torch.randn(steps, batch, n_in)
    grad = torch.randn(steps, batch, hidden)
    ref = nn.LSTM(n_in, hidden)
    cands = {v: make_layer(v, shape) for v in variants}
    train = alternate({"ref": train_step(ref, x, grad),
                       **{v: train_step(m, x, grad) for v, m in cands.items()}},
                      repeats, warmup, clock)
    infer = alternate({"ref": inference(ref, x),
                       **{v: inference(m, x) for v, m in cands.items()}}, repeats, warmup,
                      clock)
    return [Comparison(shape=shape, variant=v, path=path_of(cands[v]),
                       **timing_fields(train, infer, v)) for v in variants]


@dataclass(frozen=True)
class RegComparison:
    """A training step of one variant with one regulariser against the same variant without
    (both on the fused engine) and against ``torch.nn.LSTM``; times in milliseconds."""

    shape: Shape
    variant: str
    regulariser: str
    train_ms: float
    base_ms: float
    ratio: float
    lstm_ratio: float


def compare_regularisers(shape: Shape, variants: Sequence[str], *, repeats: int, warmup: int,
                         seed: int = 0, clock: str = "wall") -> list[RegComparison]:
    """Training steps at ``shape``: each variant without and with each of :data:`REGULARISERS`,
    and ``torch.nn.LSTM``, all in the same alternating rounds."""
    torch.manual_seed(seed)
    steps, batch, n_in, hidden = shape
    x = torch.randn(steps, batch, n_in)
    grad = torch.randn(steps, batch, hidden)
    fns = {"ref": train_step(nn.LSTM(n_in, hidden), x, grad)}
    for v in variants:
        base = make_layer(v, shape, "engine")
        fns[f"{v}|"] = train_step(base, x, grad)
        for name, options in REGULARISERS.items():
            layer = make_layer(v, shape, "engine", **options)
            layer.load_state_dict(base.state_dict())
            fns[f"{v}|{name}"] = train_step(layer, x, grad)
    times = alternate(fns, repeats, warmup, clock)
    return [RegComparison(shape=shape, variant=v, regulariser=name,
                          train_ms=1e3 * statistics.median(times[f"{v}|{name}"]),
                          base_ms=1e3 * statistics.median(times[f"{v}|"]),
                          ratio=paired_ratio(times[f"{v}|{name}"], times[f"{v}|"]),
                          lstm_ratio=paired_ratio(times[f"{v}|{name}"], times["ref"]))
            for v in variants for name in REGULARISERS]


def format_reg_table(rows: Sequence[RegComparison]) -> str:
    """The regularisers' comparison as a text table."""
    header = ("shape (T, B, in, H)", "variant", "regulariser", "train ms", "without ms",
              "ratio", "vs nn.LSTM")
    return _text_table(header, [
        (str(r.shape), r.variant, r.regulariser, f"{r.train_ms:.2f}", f"{r.base_ms:.2f}",
         f"{r.ratio:.2f}", f"{r.lstm_ratio:.2f}") for r in rows])


def _text_table(header: tuple[str, ...], body: list[tuple[str, ...]]) -> str:
    """Aligned columns: the first three (names) to the left, the numbers to the right."""
    cells = [header, *body]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths))) for row in cells]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def compare(shapes: Sequence[Shape] = DEFAULT_SHAPES,
            variants: Sequence[str] = DEFAULT_VARIANTS, *, repeats: int = 7, warmup: int = 2,
            threads: int | None = None, clock: str = "wall") -> list[Comparison]:
    """:func:`compare_shape` for every shape, with ``threads`` torch threads (None: as set)."""
    check_int("repeats", repeats, 1)
    check_int("warmup", warmup, 0)
    if threads is not None:
        check_int("threads", threads, 1)
    check_request(shapes, variants)
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        rows: list[Comparison] = []
        for shape in shapes:
            rows += compare_shape(shape, variants, repeats=repeats, warmup=warmup, clock=clock)
        return rows
    finally:
        torch.set_num_threads(previous)


def format_table(rows: Sequence[Comparison]) -> str:
    """The comparison as a text table, one line per shape and variant."""
    header = ("shape (T, B, in, H)", "variant", "path", "train ms", "nn.LSTM ms", "ratio",
              "infer ms", "nn.LSTM ms", "ratio")
    return _text_table(header, [
        (str(r.shape), r.variant, PATH_NAMES.get(r.path, r.path), f"{r.train_ms:.2f}",
         f"{r.ref_train_ms:.2f}", f"{r.train_ratio:.2f}", f"{r.infer_ms:.2f}",
         f"{r.ref_infer_ms:.2f}", f"{r.infer_ratio:.2f}") for r in rows])


def _command(args: argparse.Namespace) -> int:
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 7)
    warmup = 1 if args.quick else 2
    shapes = parse_shapes(args.shapes) if args.shapes else list(DEFAULT_SHAPES)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    check_int("--repeats", repeats, 1)
    if args.threads is not None:
        check_int("--threads", args.threads, 1)
    check_request(shapes, variants)
    threads = args.threads or torch.get_num_threads()
    print(f"lstmkit bench: {threads} torch threads, medians of {repeats} alternating rounds "
          f"after {warmup} warm-up, float32, {args.clock} clock", flush=True)
    if args.regularisers:
        torch_modules = [v for v in variants if v in TORCH_MODULES]
        if torch_modules:
            raise ValueError(f"--variants: --regularisers takes lstmkit presets, got "
                             f"{torch_modules}")
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            reg_rows = [row for shape in shapes
                        for row in compare_regularisers(shape, variants, repeats=repeats,
                                                        warmup=warmup, clock=args.clock)]
        finally:
            torch.set_num_threads(previous)
        print(format_reg_table(reg_rows))
        print("\nratio: a training step's time with the regulariser over the same variant's "
              "without, both on the fused engine, in the same round; vs nn.LSTM: over "
              "torch.nn.LSTM's. Rates: " + ", ".join(
                  f"{k}={v}" for o in REGULARISERS.values() for k, v in o.items()))
        return 0
    rows = compare(shapes, variants, repeats=repeats, warmup=warmup, threads=threads,
                   clock=args.clock)
    print(format_table(rows))
    print("\nratio: the variant's time over torch.nn.LSTM's in the same round (below 1: "
          "faster); path: what backend=\"auto\" runs here.")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``lstmkit bench`` to the command line."""
    p = sub.add_parser("bench", help="time cell variants against torch.nn.LSTM on your shapes",
                       description=__doc__.split("\n\n")[0].replace("``", ""))
    p.add_argument("--shapes", default=None,
                   help="comma-separated TxBxINxH (default: "
                   + ",".join("x".join(map(str, s)) for s in DEFAULT_SHAPES) + ")")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help="comma-separated presets; torch.nn.GRU and torch.nn.LSTM also allowed "
                   f"(default {','.join(DEFAULT_VARIANTS)})")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 7)")
    p.add_argument("--quick", action="store_true", help="3 rounds and 1 warm-up")
    p.add_argument("--regularisers", action="store_true",
                   help="time training steps with recurrent_dropout, zoneout and weight_drop "
                   "against the same variant without (on the fused engine)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's current setting)")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="time by the wall clock (default) or by this process's CPU time, "
                   "steadier on a shared machine with --threads 1")
    p.set_defaults(func=_command)
