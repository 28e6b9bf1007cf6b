"""The default ``lstmkit.LSTM``/``GRU``/``RNN`` against ``torch.nn.LSTM``/``GRU``/``RNN``: what a
user gets without choosing a backend.

For each family and shape ``(T, B, input, hidden)``, one process times, in rounds that alternate
the candidates (their order rotating every round, so that none always runs first):

* ``torch``: torch's module of the same family and shape, without lengths (the reference);
* ``default``: the lstmkit layer with default arguments (``backend="auto"``), same weights;
* ``default+len``: the same layer with ``lengths=`` (right padding, lengths drawn once per shape
  between T/2 and T, the longest T, so the padded input is the reference's input);
* with ``--paths``, also the forced paths behind the rule of :mod:`lstmkit.dispatch`:
  ``engine``, ``native`` (torch's kernel through the layer), ``engine+len`` and ``native+len``.

Each candidate runs a training step (forward, backward of a fixed output gradient; the input
needs no gradient) and, separately, inference (forward under ``torch.no_grad``). Every round runs
the reference before and after each candidate; a candidate's ratio in a round is its time over
the mean of those two reference runs, and the table gives medians over rounds, so that load from
other processes mostly cancels. The table names the path each default call took (seen by
watching which runner the layer called) and the reason :func:`lstmkit.dispatch.route` gives.

Targets: a training step of ``default`` at most 1.0x ``torch`` on every shape, and of
``default+len`` at most 1.0x ``torch`` (without lengths) on every shape.

Run from the repository root (one thread; about ten minutes on a loaded 2-core machine, and
about twice that with ``--paths``, which can be run a family or two at a time)::

    .venv/bin/python benchmarks/bench_default_path.py --out benchmarks/results-default-path.md
    .venv/bin/python benchmarks/bench_default_path.py --paths --families lstm --repeats 5

Options: ``--quick``, ``--shapes``, ``--families``, ``--repeats``, ``--threads``, ``--paths``,
``--out`` (Markdown; the numbers go to a ``.json`` beside it).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from bench_engine import DEFAULT_SHAPES
from torch import Tensor, nn

import lstmkit
from lstmkit import dispatch, engine, stack
from lstmkit.bench import Shape, check_request, parse_shapes
from lstmkit.cells import reference

PROG = "benchmarks/bench_default_path.py"
FAMILIES: dict[str, tuple[type[nn.Module], type[nn.Module]]] = {
    "lstm": (nn.LSTM, lstmkit.LSTM), "gru": (nn.GRU, lstmkit.GRU), "rnn": (nn.RNN, lstmkit.RNN),
}
DEFAULT_CANDIDATES = ("default", "default+len")
PATH_CANDIDATES = ("engine", "native", "engine+len", "native+len")
MODES = ("train", "infer")
#: The targets: (mode, candidate) -> the largest ratio to ``torch`` (without lengths) allowed.
TARGETS = {("train", "default"): 1.0, ("train", "default+len"): 1.0}


@dataclass
class Row:
    """One family, shape and mode: every candidate's median time and ratio to ``torch``."""

    family: str
    shape: Shape
    mode: str
    torch_ms: float
    ms: dict[str, float] = field(default_factory=dict)
    ratio: dict[str, float] = field(default_factory=dict)
    #: the path each default candidate took, and the reason the dispatch gives for it
    path: dict[str, str] = field(default_factory=dict)
    reason: dict[str, str] = field(default_factory=dict)


def make_lengths(shape: Shape, seed: int = 0) -> Tensor:
    """Right-padding lengths for ``shape``: uniform between T/2 and T, the longest T."""
    steps, batch = shape[0], shape[1]
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint((steps + 1) // 2, steps + 1, (batch,), generator=g)
    lengths[0] = steps
    return lengths


@contextlib.contextmanager
def watch_paths() -> Iterator[list[str]]:
    """Record which runner each layer call reaches: torch's kernel, the engine or the
    reference (the layer looks each up on its module at call time)."""
    seen: list[str] = []
    patched = [(stack, "run_native", "native"), (engine, "scan", "engine"),
               (reference, "scan", "reference")]
    originals = [getattr(mod, name) for mod, name, _ in patched]

    def wrap(fn: Callable, label: str) -> Callable:
        def inner(*args: object, **kwargs: object) -> object:
            seen.append(label)
            return fn(*args, **kwargs)
        return inner

    for (mod, name, label), fn in zip(patched, originals):
        setattr(mod, name, wrap(fn, label))
    try:
        yield seen
    finally:
        for (mod, name, _), fn in zip(patched, originals):
            setattr(mod, name, fn)


def _call(module: nn.Module, x: Tensor, grad: Tensor | None,
          lengths: Tensor | None) -> Callable[[], None]:
    """One training step (``grad`` given: forward, backward of ``grad``) or one inference."""
    params = list(module.parameters())
    kwargs = {} if lengths is None else {"lengths": lengths}

    def train() -> None:
        for p in params:
            p.grad = None
        module(x, **kwargs)[0].backward(grad)

    def infer() -> None:
        with torch.no_grad():
            module(x, **kwargs)

    return train if grad is not None else infer


def sandwiched(ref: Callable[[], None], fns: dict[str, Callable[[], None]], repeats: int,
               warmup: int) -> tuple[list[float], dict[str, list[float]], dict[str, list[float]]]:
    """Seconds per call of ``ref`` and of each candidate, and each candidate's ratios to ``ref``.

    Every round runs ``ref`` before and after each candidate (the candidates' order rotating
    every round); a candidate's ratio in a round is its time over the mean of the two ``ref``
    runs around it, so that load which changes within a round mostly cancels too.
    """
    names = list(fns)
    for _ in range(warmup):
        ref()
        for name in names:
            fns[name]()
    ref_times: list[float] = []
    times: dict[str, list[float]] = {name: [] for name in names}
    ratios: dict[str, list[float]] = {name: [] for name in names}

    def timed(fn: Callable[[], None]) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    for r in range(repeats):
        before = timed(ref)
        ref_times.append(before)
        for name in names[r % len(names):] + names[: r % len(names)]:
            took = timed(fns[name])
            after = timed(ref)
            ref_times.append(after)
            times[name].append(took)
            ratios[name].append(took / (0.5 * (before + after)))
            before = after
    return ref_times, times, ratios


def bench_shape(family: str, shape: Shape, *, repeats: int, warmup: int, paths: bool,
                seed: int = 0) -> list[Row]:
    """Time every candidate of ``family`` at ``shape``, training and inference."""
    torch.manual_seed(seed)
    steps, batch, n_in, hidden = shape
    torch_cls, kit_cls = FAMILIES[family]
    x = torch.randn(steps, batch, n_in)
    out_grad = torch.randn(steps, batch, hidden)
    lengths = make_lengths(shape, seed)
    ref = torch_cls(n_in, hidden)
    layers = {"default": kit_cls(n_in, hidden)}
    if paths:
        layers |= {"engine": kit_cls(n_in, hidden, backend="engine"),
                   "native": kit_cls(n_in, hidden, backend="native")}
    for layer in layers.values():
        layer.load_state_dict(ref.state_dict())
    names = [*DEFAULT_CANDIDATES, *(PATH_CANDIDATES if paths else ())]
    rows = []
    for mode in MODES:
        grad = out_grad if mode == "train" else None
        fns = {}
        for name in names:
            base, with_len = name.removesuffix("+len"), name.endswith("+len")
            fns[name] = _call(layers[base], x, grad, lengths if with_len else None)
        ref_times, times, ratios = sandwiched(_call(ref, x, grad, None), fns, repeats, warmup)
        row = Row(family, shape, mode, 1e3 * statistics.median(ref_times))
        for name in names:
            row.ms[name] = 1e3 * statistics.median(times[name])
            row.ratio[name] = statistics.median(ratios[name])
        for name in DEFAULT_CANDIDATES:
            with_len = name.endswith("+len")
            with watch_paths() as seen:
                fns[name]()
            row.path[name] = "+".join(sorted(set(seen))) or "?"
            route = dispatch.route(layers["default"].spec, "auto", x, lengths=with_len,
                                   grad=mode == "train")
            row.reason[name] = route.reason
            if route.path != row.path[name]:
                row.reason[name] += f" (the dispatch chose {route.path})"
        rows.append(row)
    return rows


def machine(threads: int) -> str:
    """The machine and settings, as the record's header names them."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    ext = engine._build.load()
    kernel = ext.step_gemm() if ext is not None else "none (the engine is not built)"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, "
            f"torch {torch.__version__}, {threads} threads, engine per-step GEMMs: {kernel}, "
            f"load average {load:.1f} at the end")


def check_targets(rows: Sequence[Row]) -> list[str]:
    """One line per target: met or not, with the worst shape."""
    lines = []
    for (mode, name), limit in TARGETS.items():
        for family in dict.fromkeys(r.family for r in rows):
            mine = [r for r in rows if r.mode == mode and r.family == family and name in r.ratio]
            if not mine:
                continue
            worst = max(mine, key=lambda r: r.ratio[name])
            verdict = "met" if worst.ratio[name] <= limit else "NOT met"
            lines.append(f"{family}, {mode} step, {name} / torch <= {limit}: {verdict} "
                         f"(largest {worst.ratio[name]:.2f} at {tuple(worst.shape)})")
    return lines


def format_report(rows: Sequence[Row], header: str) -> str:
    """The Markdown record: header, one table per step kind, the targets."""
    names = list(dict.fromkeys(n for r in rows for n in r.ratio))
    forced = [n for n in names if n not in DEFAULT_CANDIDATES]
    parts = [header, ""]
    for mode in MODES:
        title = "Training step" if mode == "train" else "Inference (torch.no_grad)"
        cols = ["family", "shape (T, B, in, H)", "torch ms", "default ms", "default / torch",
                "default path", "with lengths ms", "with lengths / torch", "path with lengths",
                *(f"{n} / torch" for n in forced)]
        parts += [f"### {title}", "", "| " + " | ".join(cols) + " |",
                  "|" + "|".join("---" if i < 2 or c.endswith("path") or "path " in c
                                 else "---:" for i, c in enumerate(cols)) + "|"]
        for r in (r for r in rows if r.mode == mode):
            cells = [r.family, str(tuple(r.shape)), f"{r.torch_ms:.2f}",
                     f"{r.ms['default']:.2f}", f"{r.ratio['default']:.2f}", r.path["default"],
                     f"{r.ms['default+len']:.2f}", f"{r.ratio['default+len']:.2f}",
                     r.path["default+len"], *(f"{r.ratio[n]:.2f}" for n in forced)]
            parts.append("| " + " | ".join(cells) + " |")
        parts.append("")
    reasons = {(r.family, r.mode, n): r.reason[n] for r in rows for n in DEFAULT_CANDIDATES}
    parts += ["### Why each default call took its path", ""]
    parts += [f"* {family}, {mode}{' with lengths' if n.endswith('+len') else ''}: {why}"
              for (family, mode, n), why in reasons.items()]
    parts += ["", "### Targets", ""] + [f"* {line}" for line in check_targets(rows)]
    return "\n".join(parts) + "\n"


def run(shapes: Sequence[Shape] = DEFAULT_SHAPES, families: Sequence[str] = tuple(FAMILIES), *,
        repeats: int = 9, warmup: int = 2, threads: int = 1, paths: bool = False,
        out: str | Path | None = None, command: str = PROG) -> list[Row]:
    """Run the benchmark, print the report, and write it (``out`` and ``out`` as .json)."""
    check_request(shapes, ["lstm"] * (1 + len(DEFAULT_CANDIDATES)
                                      + (len(PATH_CANDIDATES) if paths else 0)))
    for family in families:
        if family not in FAMILIES:
            raise ValueError(f"--families: expected names from {', '.join(FAMILIES)}, "
                             f"got {family!r}")
    if not engine.available():
        raise OSError(f"the fused engine is not available: {engine.build_error()}")
    torch.set_num_threads(threads)
    rows: list[Row] = []
    for family in families:
        for shape in shapes:
            rows += bench_shape(family, shape, repeats=repeats, warmup=warmup, paths=paths)
            print(f"{family} {shape} done", file=sys.stderr, flush=True)
    when = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    where = machine(threads)
    header = (f"`{command}` — {when} — {where}; medians of {repeats} alternating rounds after "
              f"{warmup} warm-up, float32")
    report = format_report(rows, header)
    print(report)
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(report)
        data = path.with_suffix(".json")
        payload = {"command": command, "date": when, "machine": where, "repeats": repeats,
                   "warmup": warmup, "targets": [f"{m} {n} <= {v}" for (m, n), v
                                                 in TARGETS.items()],
                   "rows": [asdict(r) for r in rows]}
        data.write_text(json.dumps(payload, indent=1))
        print(f"wrote {path} and {data}")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="3 rounds and 1 warm-up (smoke test)")
    p.add_argument("--shapes", default=None,
                   help="comma-separated TxBxINxH (default: "
                   + ",".join("x".join(map(str, s)) for s in DEFAULT_SHAPES) + ")")
    p.add_argument("--families", default=",".join(FAMILIES),
                   help=f"comma-separated, from {','.join(FAMILIES)} (default: all)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 9)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--paths", action="store_true",
                   help="also time the forced engine and torch-kernel paths (the rule's evidence)")
    p.add_argument("--out", default=None,
                   help="Markdown report path; a .json beside it (default: print only)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 9)
    warmup = 1 if args.quick else 2
    if repeats < 1:
        p.error(f"--repeats: expected an int >= 1, got {repeats}")
    if args.threads < 1:
        p.error(f"--threads: expected an int >= 1, got {args.threads}")
    try:
        shapes = parse_shapes(args.shapes) if args.shapes else list(DEFAULT_SHAPES)
        families = [f.strip() for f in args.families.split(",") if f.strip()]
        parts = [PROG] + [a for a in (sys.argv[1:] if argv is None else argv)]
        run(shapes, families, repeats=repeats, warmup=warmup, threads=args.threads,
            paths=args.paths, out=args.out, command=" ".join(parts))
    except (ValueError, TypeError, OSError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
