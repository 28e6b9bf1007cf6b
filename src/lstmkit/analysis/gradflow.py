"""``lstmkit gradflow``: how far back in time does the error signal reach, cell by cell?

For each cell the loss is a fixed random projection of the *last* step's output,
``L = u . h(T-1)`` with ``u`` a unit vector drawn from the seed (the same ``u`` at initialisation
and after training). The command measures, for every earlier step t, the norms of
``dL/dx(t)`` (the input), ``dL/dh(t)`` (the output/hidden state) and, for LSTM-family cells,
``dL/dc(t)`` (the cell state), each the Euclidean norm over features for one sequence, averaged
over a batch of sequences and then over seeds, and plots them on a log scale against the lag
``T-1-t``.

What is measured is the gradient each cell actually trains with: the reference step functions
of :mod:`lstmkit.cells.reference` are run one step at a time under autograd (tests check this
against the layer's own backward). For ``lstm1997`` that is the 1997 *truncated* gradient: the
error reaches earlier steps only through the cell state, so ``dL/dh(t)`` is exactly zero for
every lag >= 1 while ``dL/dc(t)`` and ``dL/dx(t)`` stay constant.

Everything runs in float64, so the plain RNN's gradient (around 1e-30 at a lag of 100) does not
underflow to zero. Weights start from torch's initialisation, U(-1/sqrt(H), 1/sqrt(H)), for every
cell, optionally with a forget-gate bias; optionally each net is first trained briefly (Adam) on
a task and measured again.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import tasks
from ..cells import reference
from ..cells.spec import get_spec
from ..layers import _Recurrent
from ._common import build_layer, build_model, make_task, plural, quick_train
from ._limits import check_int, check_memory, require_matplotlib

DEFAULT_CELLS = ("rnn", "lstm", "lstm1997", "gru", "peephole")
QUANTITIES = {
    "x": "input x(t)",
    "h": "hidden state h(t)",
    "c": "cell state c(t)",
}
#: Lags printed in the terminal table (those shorter than the sequence).
REPORT_LAGS = (1, 10, 50, 100, 150)

_STEPWISE = "the probe runs the cells one step at a time and gradflow.json holds every lag"
#: Size arguments: (lowest, highest, why the ceiling). Larger values are refused up front; the
#: memory estimate of :func:`check_arguments` also bounds them together.
LIMITS: dict[str, tuple[int, int, str]] = {
    "length": (2, 20_000, _STEPWISE),
    "hidden": (1, 4096, "a wider net says nothing more about the decay with the lag"),
    "batch_size": (1, 4096, "the batch only averages the norms over sequences"),
    "seeds": (1, 100, "every seed repeats the whole measurement"),
    "train_steps": (0, 1_000_000, "the training is a short look, not a reproduction"),
    "train_length": (2, 20_000, _STEPWISE),
}
_FLAGS = {"length": "--length", "hidden": "--hidden", "batch_size": "--batch",
          "seeds": "--seeds", "train_steps": "--train-steps", "train_length": "--train-length"}
#: Numbers kept per step, sequence and hidden unit by the measurement's graph, with a margin
#: (measured at T=2000, B=32, H=64: RNN about 12, GRU 18, LSTM 23, lstm1997 26, peephole 30).
_GRAPH_WIDTH = 48


def probe_inputs(task: tasks.Task, batch_size: int, seed: int) -> Tensor:
    """``batch_size`` sequences of ``task`` as float64 ``[T, B, in]``, all of the same length."""
    batch = task.sample(batch_size, generator=torch.Generator().manual_seed(seed))
    if not bool((batch.lengths == batch.steps).all()):
        raise ValueError(
            f"task: gradflow needs sequences of one length; {task.name!r} draws lengths "
            f"{int(batch.lengths.min())}..{int(batch.lengths.max())}"
        )
    return batch.inputs.to(torch.float64)


def measure(layer: _Recurrent, x: Tensor, u: Tensor) -> dict[str, Tensor]:
    """Per-step gradient norms of ``L = sum_b u . h_b(T-1)`` for a one-layer, one-way layer.

    Returns ``{"x": [T], "h": [T], "c": [T] (LSTM family)}``, indexed by *time step*: each the
    per-sequence Euclidean norm over features, averaged over the batch. Sequences do not
    interact, so summing the loss over the batch gives every sequence its own gradient.
    """
    if layer.num_layers != 1 or layer.bidirectional:
        raise ValueError("gradflow measures one-layer, one-direction layers")
    spec = layer.spec
    params = layer.cell_params(0, 0)
    x = x.detach().clone().requires_grad_(True)
    steps, batch = x.shape[0], x.shape[1]
    carry: tuple[Tensor, ...] = tuple(x.new_zeros(batch, n) for n in layer.state_sizes)
    x_proj = reference.input_projection(spec, params, x, layer.hidden_size)
    hs, cs = [], []
    for t in range(steps):
        carry, y = reference.step(spec, params, carry, x_proj[t])
        # The carried tensors are the ones the next step reads, so their .grad is the full
        # gradient through time (not just the direct path to the loss).
        carry[0].retain_grad()
        hs.append(carry[0])
        if spec.family == "lstm":
            carry[1].retain_grad()
            cs.append(carry[1])
    loss = (y * u).sum()
    loss.backward()

    def norms(grads: list[Tensor | None], like: list[Tensor]) -> Tensor:
        rows = [torch.zeros(batch, dtype=x.dtype) if g is None else g.norm(dim=-1)
                for g, _ in zip(grads, like)]
        return torch.stack(rows).mean(1).detach()

    out = {"x": x.grad.norm(dim=-1).mean(1).detach(), "h": norms([h.grad for h in hs], hs)}
    if cs:
        out["c"] = norms([c.grad for c in cs], cs)
    return out


def _stage(
    models: dict[str, list[_Recurrent]], probe: tasks.Task, batch_size: int
) -> dict[str, Any]:
    """Measurements of every cell's nets (one per seed), by lag, with seed means and ranges."""
    result: dict[str, Any] = {}
    for cell, layers in models.items():
        per_q: dict[str, list[list[float]]] = {}
        for seed, layer in enumerate(layers):
            x = probe_inputs(probe, batch_size, 10_000 + seed)
            u = torch.randn(layer.proj_size or layer.hidden_size, dtype=torch.float64,
                            generator=torch.Generator().manual_seed(20_000 + seed))
            norms = measure(layer, x, u / u.norm())
            for q, values in norms.items():
                per_q.setdefault(q, []).append(values.flip(0).tolist())  # by lag
        result[cell] = {
            q: {"mean": torch.tensor(v).mean(0).tolist(), "min": torch.tensor(v).min(0)
                .values.tolist(), "max": torch.tensor(v).max(0).values.tolist(), "seeds": v}
            for q, v in per_q.items()
        }
    return result


def check_arguments(
    *, length: int, hidden: int, batch_size: int, seeds: int, train_steps: int = 0,
    train_length: int = 50, input_size: int = 1, cli: bool = False,
) -> None:
    """Refuse sizes out of :data:`LIMITS`, or too large together for this machine's memory.

    ``cli`` names the command-line flags (``--batch``) instead of the parameters
    (``batch_size``) in the message. Raises ``TypeError``/``ValueError``; returns nothing.
    """
    values = {"length": length, "hidden": hidden, "batch_size": batch_size, "seeds": seeds,
              "train_steps": train_steps, "train_length": train_length}
    for name, value in values.items():
        low, high, why = LIMITS[name]
        check_int(_FLAGS[name] if cli else name, value, low, high, why)
    need = memory_estimate(length=length, hidden=hidden, batch_size=batch_size,
                           input_size=input_size,
                           train_length=train_length if train_steps else 0)
    names = ("--length", "--batch", "--hidden") if cli else ("length", "batch_size", "hidden")
    check_memory(need, f"measuring {length:,} steps x {batch_size:,} sequences x {hidden:,} "
                 "units (every step's float64 graph is kept for the backward pass)",
                 f"lower {names[0]}, {names[1]} or {names[2]}")


def memory_estimate(
    *, length: int, hidden: int, batch_size: int, input_size: int = 1, train_length: int = 0
) -> float:
    """A rough upper bound, in bytes, of what one measurement (or training run) holds at once.

    The measurement keeps every step's autograd graph in float64 (about 23 numbers per hidden
    unit for the plain LSTM, more with peepholes or gate recurrence: :data:`_GRAPH_WIDTH`
    covers every preset); training holds the engine's saved gates for a batch of 32 in float32.
    """
    measure_bytes = 8.0 * length * batch_size * (_GRAPH_WIDTH * hidden + input_size)
    train_bytes = 4.0 * train_length * 32 * (_GRAPH_WIDTH * hidden + input_size)
    return max(measure_bytes, train_bytes)


def run_gradflow(
    cells: tuple[str, ...] | list[str] = DEFAULT_CELLS, *, length: int = 200, hidden: int = 64,
    batch_size: int = 32, seeds: int = 3, task: str = "adding", train_steps: int = 0,
    train_length: int = 50, forget_bias: float | None = None, progress: bool = False,
) -> dict[str, Any]:
    """Measure gradient flow at initialisation (and after ``train_steps`` Adam steps).

    Returns the ``gradflow.json`` dictionary: ``settings``, ``lags`` and ``stages`` (``"init"``
    and, with training, ``"trained"``) mapping cell -> quantity (``x``, ``h``, ``c``) ->
    ``mean``/``min``/``max`` over seeds and the per-seed values, all indexed by lag.
    """
    sizes = {"length": length, "hidden": hidden, "batch_size": batch_size, "seeds": seeds,
             "train_steps": train_steps, "train_length": train_length}
    check_arguments(**sizes)
    cells = list(cells)
    if not cells:
        raise ValueError("cells: expected at least one cell preset")
    for cell in cells:
        get_spec(cell)  # unknown names fail before any work
    probe = make_task(task, length)
    check_arguments(**sizes, input_size=probe.input_size)
    train_task = make_task(task, train_length) if train_steps else None
    init: dict[str, list[_Recurrent]] = {}
    trained: dict[str, list[_Recurrent]] = {}
    start = time.perf_counter()
    for cell in cells:
        init[cell], trained[cell] = [], []
        for seed in range(seeds):
            torch.manual_seed(seed)
            layer = build_layer(cell, probe.input_size, hidden, forget_bias=forget_bias)
            init[cell].append(_as_float64(layer))
            if train_task is not None:
                model = build_model(cell, train_task, hidden, forget_bias=forget_bias)
                model.layer.load_state_dict(layer.state_dict())
                losses = quick_train(model, train_task, steps=train_steps, seed=seed)
                if progress:
                    print(f"  trained {cell} seed {seed}: loss {losses[0]:.4f} -> "
                          f"{sum(losses[-20:]) / len(losses[-20:]):.4f}", flush=True)
                trained[cell].append(_as_float64(model.layer))
    results: dict[str, Any] = {
        "settings": {
            "cells": cells, "length": length, "hidden": hidden, "batch_size": batch_size,
            "seeds": seeds, "task": task, "task_params": dict(probe.params),
            "train_steps": train_steps, "train_length": train_length if train_steps else None,
            "forget_bias": forget_bias, "dtype": "float64",
            "loss": "u . h(T-1), u a fixed random unit vector per seed",
            "gradient": "the cell's own (lstm1997: truncated)",
        },
        "lags": list(range(length)),
        "stages": {"init": _stage(init, probe, batch_size)},
    }
    if train_task is not None:
        results["stages"]["trained"] = _stage(trained, probe, batch_size)
    results["settings"]["wall_s"] = time.perf_counter() - start
    return results


def _as_float64(layer: _Recurrent) -> _Recurrent:
    """A float64 copy on the reference path (the measurement's own precision)."""
    copy = build_layer(layer.spec.name, layer.input_size, layer.hidden_size,
                       dtype=torch.float64, backend="reference")
    copy.load_state_dict({k: v.double() for k, v in layer.state_dict().items()})
    return copy


def at_lag(results: dict[str, Any], stage: str, cell: str, quantity: str, lag: int) -> float:
    """The seed-mean gradient norm of ``quantity`` at ``lag`` (0.0 where none flows)."""
    return results["stages"][stage][cell][quantity]["mean"][lag]


def write_csv(results: dict[str, Any], path: str | Path) -> Path:
    """One row per (stage, cell, quantity, lag): mean, min and max over seeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["stage", "cell", "quantity", "lag", "mean", "min", "max"])
        for stage, cells in results["stages"].items():
            for cell, quantities in cells.items():
                for q, v in quantities.items():
                    for lag in results["lags"]:
                        writer.writerow([stage, cell, q, lag, f"{v['mean'][lag]:.6e}",
                                         f"{v['min'][lag]:.6e}", f"{v['max'][lag]:.6e}"])
    return path


def plot(results: dict[str, Any], path: str | Path) -> Path:
    """Gradient norm against lag on a log scale: a row per stage, a column per quantity."""
    from .figures import cell_colour, new_figure, save

    stages = list(results["stages"])
    quantities = [q for q in QUANTITIES
                  if any(q in c for s in results["stages"].values() for c in s.values())]
    fig = new_figure((4.6 * len(quantities), 3.8 * len(stages)))
    axes = fig.subplots(len(stages), len(quantities), squeeze=False, sharex=True)
    lags = results["lags"]
    s = results["settings"]
    for row, stage in enumerate(stages):
        for col, q in enumerate(quantities):
            ax = axes[row][col]
            for index, (cell, data) in enumerate(results["stages"][stage].items()):
                if q not in data:
                    continue
                colour = cell_colour(cell, index)
                mean = _positive(data[q]["mean"])
                label = cell
                if all(v == 0.0 for v in data[q]["mean"][1:]):
                    label += " (0 beyond lag 0)"
                ax.plot(lags, mean, color=colour, lw=1.6, label=label)
                ax.fill_between(lags, _positive(data[q]["min"]), _positive(data[q]["max"]),
                                color=colour, alpha=0.15, lw=0)
            ax.set_yscale("log")
            ax.grid(alpha=0.3, which="both", lw=0.5)
            if len(lags) > 100:
                ax.axvline(100, color="0.5", ls=":", lw=1)
            trained_on = s["task"] + (f" (T={s['train_length']})"
                                      if "T" in s.get("task_params", {}) else "")
            title = "at initialisation" if stage == "init" else (
                f"after {plural(s['train_steps'], 'Adam step')} on {trained_on}")
            ax.set_title(f"‖∂L/∂{q}(t)‖, {title}", fontsize=9)
            ax.set_ylabel(f"gradient norm w.r.t. {QUANTITIES[q]}", fontsize=8)
            if row == len(stages) - 1:
                ax.set_xlabel("time lag T-1-t (steps before the loss)")
            ax.legend(fontsize=7, loc="lower left")
    fig.suptitle(caption(results), fontsize=9)
    return save(fig, path)


def caption(results: dict[str, Any]) -> str:
    """The figure's title: the loss, the net's size, the probe and what the lines average."""
    s = results["settings"]
    bias = "" if s["forget_bias"] is None else f", forget bias {s['forget_bias']}"
    if s["seeds"] == 1:
        spread = f"one seed, mean of {plural(s['batch_size'], 'sequence')}"
    else:
        spread = (f"mean of {plural(s['seeds'], 'seed')} x "
                  f"{plural(s['batch_size'], 'sequence')} (band: seed range)")
    return (f"Gradient flow back in time: L = u·h(T-1), H={s['hidden']}, "
            f"{s['task']} inputs, {spread}{bias}")


def _positive(values: list[float]) -> list[float]:
    """Zeros as NaN: a log axis cannot show them, and a gap says "no gradient at all"."""
    return [v if v > 0 else float("nan") for v in values]


def summary_table(results: dict[str, Any]) -> str:
    """Seed-mean norms at :data:`REPORT_LAGS` for every stage, cell and quantity."""
    lags = [lag for lag in REPORT_LAGS if lag < len(results["lags"])]
    header = f"{'stage':<9}{'cell':<11}{'grad':<6}" + "".join(f"{'lag ' + str(g):>11}"
                                                           for g in lags)
    lines = [header, "-" * len(header)]
    for stage, cells in results["stages"].items():
        for cell, quantities in cells.items():
            for q in quantities:
                values = "".join(f"{at_lag(results, stage, cell, q, g):>11.2e}" for g in lags)
                lines.append(f"{stage:<9}{cell:<11}{'d/d' + q:<6}{values}")
    return "\n".join(lines)


def _command(args: argparse.Namespace) -> int:
    # Both before any work: a run of minutes should not end in "no matplotlib" or out of memory.
    require_matplotlib()
    check_arguments(length=args.length, hidden=args.hidden, batch_size=args.batch,
                    seeds=args.seeds, train_steps=args.train_steps,
                    train_length=args.train_length, cli=True)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    results = run_gradflow(
        tuple(args.cell or DEFAULT_CELLS), length=args.length, hidden=args.hidden,
        batch_size=args.batch, seeds=args.seeds, task=args.task, train_steps=args.train_steps,
        train_length=args.train_length, forget_bias=args.forget_bias, progress=True,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gradflow.json").write_text(json.dumps(results, indent=1))
    write_csv(results, out / "gradflow.csv")
    figure = plot(results, out / "gradflow.png")
    print(summary_table(results))
    print(f"\nwrote {out / 'gradflow.json'}, {out / 'gradflow.csv'}, {figure} "
          f"({results['settings']['wall_s']:.0f} s)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``lstmkit gradflow`` to the command line."""
    p = sub.add_parser("gradflow", help="plot how the error signal decays with the time lag, "
                       "cell by cell")
    p.add_argument("--cell", action="append",
                   help=f"cell preset, repeatable (default: {' '.join(DEFAULT_CELLS)})")
    p.add_argument("--length", type=int, default=200,
                   help="probe sequence length T; lags run 0..T-1 (default 200)")
    p.add_argument("--hidden", type=int, default=64, help="hidden units (default 64)")
    p.add_argument("--batch", type=int, default=32, help="sequences per seed (default 32)")
    p.add_argument("--seeds", type=int, default=3, help="seeds averaged over (default 3)")
    p.add_argument("--task", default="adding",
                   help="task whose sequences probe the nets and that --train-steps trains on "
                   "(default adding)")
    p.add_argument("--train-steps", type=int, default=0,
                   help="also measure after this many Adam steps on --task (default 0: only "
                   "at initialisation)")
    p.add_argument("--train-length", type=int, default=50,
                   help="sequence length T while training (default 50)")
    p.add_argument("--forget-bias", type=float, default=None,
                   help="initial forget-gate bias for cells that have one (default: torch's "
                   "initialisation)")
    p.add_argument("--out", default="gradflow",
                   help="folder for gradflow.png/.csv/.json (default ./gradflow)")
    p.set_defaults(func=_command)
