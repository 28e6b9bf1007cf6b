"""``lstmkit inspect``: watch an LSTM's gates open and close on one sequence.

A net is trained briefly (or loaded from a checkpoint written by ``--save``), then run on one
sequence through :func:`lstmkit.cells.reference.lstm_step_parts`, which returns every step's
gate values beside the new state, so no cell equation is restated here. The figure stacks, over
time, the four steps of the LSTM workflow: what to forget (f), what to write (i and the
candidate g), the cell state c that holds it, and what to show (o and the output h), above the
input and below the net's prediction. Dashed lines mark the steps that carry information (the
adding problem's markers, the temporal-order X/Y symbols: ``info["positions"]`` of the task).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import tasks
from ..cells import reference
from ..models import SequenceModel, apply_readout
from ..train.checkpoint import load_checkpoint, save_checkpoint
from ._common import build_model, make_task, quick_train
from ._limits import check_int, check_memory, require_matplotlib

#: Panels in the order of the LSTM workflow: (part, title, colour map).
PANELS = (
    ("f", "forget gate f(t): 1 keeps c, 0 erases it", "viridis"),
    ("i", "input gate i(t): how much of g to write", "viridis"),
    ("g", "candidate g(t): the value offered to the cell", "RdBu_r"),
    ("c", "cell state c(t)", "RdBu_r"),
    ("o", "output gate o(t): how much of the cell to show", "viridis"),
    ("h", "output h(t) = o(t) * h(c(t))", "RdBu_r"),
)


#: Size arguments of ``lstmkit inspect``: (lowest, highest, why the ceiling).
LIMITS: dict[str, tuple[int, int, str]] = {
    "--length": (1, 10_000, "the figure gives every step a column"),
    "--hidden": (1, 1024, "the figure gives every memory cell a row"),
    "--steps": (0, 1_000_000, "the training is a short look, not a reproduction"),
}
_TEST_SIZE = 512  # test sequences behind the printed loss and accuracy


def trace(model: SequenceModel, inputs: Tensor) -> dict[str, Tensor]:
    """Every step's gate values of ``model`` on one sequence ``inputs`` (``[T, input_size]``).

    Returns ``{part: [T, units]}`` for the parts the cell has (``i``, ``f``, ``o`` per memory
    block, ``g``, ``c``, ``h`` per cell) and ``"y"``, the readout's output ``[T, outputs]``.
    """
    layer = model.layer
    if layer.spec.family != "lstm":
        raise ValueError(
            f"cell: inspect draws LSTM gates; {layer.spec.name!r} is a {layer.spec.family} cell"
        )
    if layer.num_layers != 1 or layer.bidirectional:
        raise ValueError("inspect draws one-layer, one-direction layers")
    if inputs.dim() != 2 or inputs.shape[1] != layer.input_size:
        raise ValueError(f"inputs: expected [T, {layer.input_size}], got {tuple(inputs.shape)}")
    params = layer.cell_params(0, 0)
    ref = next(layer.parameters())
    x = inputs.to(ref.dtype).unsqueeze(1)
    carry = tuple(x.new_zeros(1, n) for n in layer.state_sizes)
    steps: dict[str, list[Tensor]] = {}
    with torch.no_grad():
        x_proj = reference.input_projection(layer.spec, params, x, layer.hidden_size)
        for t in range(x.shape[0]):
            carry, _, parts = reference.lstm_step_parts(layer.spec, params, carry, x_proj[t])
            for name, value in parts.items():
                steps.setdefault(name, []).append(value[0])
        out = {name: torch.stack(values) for name, values in steps.items()}
        hidden = out["h"].unsqueeze(1)
        if model.input_shortcut:
            hidden = torch.cat([hidden, x], -1)
        out["y"] = apply_readout(model.output_activation, model.readout(hidden))[:, 0]
    return out


def markers(batch: tasks.Batch, index: int = 0) -> list[int]:
    """The informative steps of sequence ``index``: the task's ``info["positions"]``, if any."""
    positions = batch.info.get("positions")
    if positions is None:
        return []
    return sorted(int(p) for p in positions[:, index])


def plot(
    parts: dict[str, Tensor], inputs: Tensor, path: str | Path, *,
    marks: list[int] | tuple[int, ...] = (), target: Tensor | None = None, title: str = "",
    input_names: list[str] | None = None,
) -> Path:
    """The gate heatmaps of one sequence (``parts`` from :func:`trace`) as a PNG."""
    from .figures import new_figure, save

    panels = [p for p in PANELS if p[0] in parts]
    steps = inputs.shape[0]
    heights = [max(1.0, inputs.shape[1] * 0.25)] + [
        max(0.9, min(2.2, parts[name].shape[1] * 0.14)) for name, _, _ in panels] + [1.3]
    fig = new_figure((10, sum(heights) + 1.2))
    axes = fig.subplots(len(heights), 1, sharex=True, gridspec_kw={"height_ratios": heights})
    extent = (-0.5, steps - 0.5)

    def heat(ax: Any, values: Tensor, cmap: str, lo: float, hi: float, label: str) -> None:
        image = ax.imshow(values.T.numpy(), aspect="auto", interpolation="nearest", cmap=cmap,
                          vmin=lo, vmax=hi, extent=(*extent, values.shape[1] - 0.5, -0.5))
        fig.colorbar(image, ax=ax, pad=0.01, fraction=0.03)
        ax.set_ylabel(label, fontsize=8)

    heat(axes[0], inputs, "Greys", float(min(0.0, inputs.min())), float(max(1.0, inputs.max())),
         "input\nfeature")
    axes[0].set_title("input x(t)" + (": " + ", ".join(input_names) if input_names else ""),
                      fontsize=9, loc="left")
    for ax, (name, text, cmap) in zip(axes[1:], panels):
        values = parts[name].float()
        if cmap == "viridis":
            lo, hi = 0.0, 1.0
        else:
            hi = float(values.abs().max()) or 1.0
            lo = -hi
        unit = "block" if name in ("i", "f", "o") else "cell"
        heat(ax, values, cmap, lo, hi, unit)
        ax.set_title(text, fontsize=9, loc="left")
    ax_y = axes[-1]
    y = parts["y"].float()
    for k in range(y.shape[1]):
        ax_y.plot(range(steps), y[:, k].numpy(), lw=1.4, label=f"output {k}" if y.shape[1] > 1
                  else "net output y(t)")
    if target is not None:
        for k, value in enumerate(target.reshape(-1).tolist()):
            ax_y.plot([steps - 1], [value], "k*", ms=9,
                      label="target at the end" if k == 0 else None)
    ax_y.set_ylabel("output", fontsize=8)
    ax_y.set_xlabel("time step t")
    ax_y.legend(fontsize=7, loc="upper left")
    ax_y.grid(alpha=0.3)
    ax_y.set_title("the net's prediction", fontsize=9, loc="left")
    for ax in axes:
        for step in marks:
            ax.axvline(step, color="#e377c2", ls="--", lw=1.1)
    if marks:
        axes[0].text(marks[0], -0.7, " informative steps (dashed)", color="#e377c2",
                     fontsize=8, va="bottom")
    fig.suptitle(title, fontsize=10)
    return save(fig, path)


def train_or_load(
    *, cell: str, task: tasks.Task, hidden: int, steps: int, seed: int,
    forget_bias: float | None, lr: float, load: str | None = None,
) -> tuple[SequenceModel, dict[str, Any]]:
    """The model to inspect: from a ``--save`` checkpoint, or trained for ``steps`` Adam steps."""
    if load is not None:
        state = load_checkpoint(load)
        meta = state.get("meta", {})
        if meta.get("kind") != "inspect" or "model" not in state:
            raise ValueError(f"checkpoint {load}: not written by `lstmkit inspect --save`")
        if meta["task"] != task.name or meta["task_params"] != dict(task.params):
            raise ValueError(
                f"checkpoint {load}: trained on {meta['task']} {meta['task_params']}, "
                f"asked for {task.name} {dict(task.params)}"
            )
        model = build_model(meta["cell"], task, int(meta["hidden"]))
        model.load_state_dict(state["model"])
        return model, meta
    torch.manual_seed(seed)
    model = build_model(cell, task, hidden, forget_bias=forget_bias)
    losses = quick_train(model, task, steps=steps, seed=seed, batch_size=64, lr=lr)
    meta = {"kind": "inspect", "cell": cell, "hidden": hidden, "task": task.name,
            "task_params": dict(task.params), "steps": steps, "seed": seed,
            "forget_bias": forget_bias, "final_loss": sum(losses[-50:]) / max(1, len(losses[-50:]))}
    return model, meta


def check_arguments(*, length: int, hidden: int, steps: int, input_size: int = 1) -> None:
    """Refuse ``lstmkit inspect`` sizes out of :data:`LIMITS` or too large for the memory."""
    for flag, value in (("--length", length), ("--hidden", hidden), ("--steps", steps)):
        low, high, why = LIMITS[flag]
        check_int(flag, value, low, high, why)
    # Training holds a batch of 64 sequences' saved gates, the test forward 512 sequences'
    # outputs and gate pre-activations, all float32 (the widths are generous upper bounds).
    need = 4.0 * length * (64 * 48 * hidden + _TEST_SIZE * (8 * hidden + 2 * input_size))
    check_memory(need, f"training and testing on {length:,}-step sequences with {hidden:,} "
                 "memory cells", "lower --length or --hidden")


def _command(args: argparse.Namespace) -> int:
    # Before any work: training for minutes should not end in "no matplotlib" or out of memory.
    require_matplotlib()
    check_arguments(length=args.length, hidden=args.hidden, steps=args.steps)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    task = make_task(args.task, args.length)
    check_arguments(length=args.length, hidden=args.hidden, steps=args.steps,
                    input_size=task.input_size)
    start = time.perf_counter()
    model, meta = train_or_load(cell=args.cell, task=task, hidden=args.hidden, steps=args.steps,
                                seed=args.seed, forget_bias=args.forget_bias, lr=args.lr,
                                load=args.load)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.save:
        save_checkpoint(args.save, {"model": model.state_dict(), "meta": meta})
    test = task.sample(_TEST_SIZE, generator=torch.Generator().manual_seed(10_000 + args.seed))
    with torch.no_grad():
        outputs = model(test.inputs, test.lengths)
        test_loss = float(task.loss(outputs, test))
        accuracy = float(task.evaluate(outputs, test).float().mean())
    one = task.sample(1, generator=torch.Generator().manual_seed(20_000 + args.seed))
    length = int(one.lengths[0])
    inputs = one.inputs[:length, 0]
    parts = trace(model, inputs)
    marks = markers(one)
    target = None
    if one.targets.dtype.is_floating_point and one.mask[:length, 0].any():
        target = one.targets[length - 1, 0] if one.mask[length - 1, 0] else None
    title = (f"{meta['cell']} (H={meta['hidden']}) on {task.name} "
             f"{', '.join(f'{k}={v}' for k, v in task.params.items())}: "
             f"test loss {test_loss:.4f} (baseline {getattr(task, 'baseline', float('nan')):.4f}),"
             f" {accuracy:.0%} of test sequences correct")
    figure = plot(parts, inputs, out / "gates.png", marks=marks, target=target, title=title)
    record = {"meta": meta, "test_loss": test_loss, "test_accuracy": accuracy,
              "markers": marks, "inputs": inputs.tolist(),
              "parts": {k: v.tolist() for k, v in parts.items()}}
    (out / "gates.json").write_text(json.dumps(record))
    print(title)
    print(f"wrote {figure} and {out / 'gates.json'} ({time.perf_counter() - start:.0f} s)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``lstmkit inspect`` to the command line."""
    p = sub.add_parser("inspect", help="train (or load) a net and draw its gates over time on "
                       "one sequence")
    p.add_argument("--cell", default="lstm", help="LSTM-family preset (default lstm)")
    p.add_argument("--task", default="adding", help="task (default adding)")
    p.add_argument("--length", type=int, default=30,
                   help="sequence length T for tasks that have one (default 30)")
    p.add_argument("--hidden", type=int, default=16, help="memory cells (default 16)")
    p.add_argument("--steps", type=int, default=800, help="Adam steps (default 800)")
    p.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (default 0.01)")
    p.add_argument("--forget-bias", type=float, default=None,
                   help="initial forget-gate bias (default: torch's initialisation)")
    p.add_argument("--seed", type=int, default=0, help="seed of the net and the sequence")
    p.add_argument("--load", default=None, help="inspect this `--save` checkpoint, no training")
    p.add_argument("--save", default=None, help="write the trained net to this checkpoint")
    p.add_argument("--out", default="inspect", help="folder for gates.png/.json (default "
                   "./inspect)")
    p.set_defaults(func=_command)
