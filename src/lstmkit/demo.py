"""``lstmkit demo``: an LSTM bridges a 100-step lag on the adding problem, a plain RNN does not.

Both nets get the same budget (Adam, minibatches of 64, gradient clipping) on Arjovsky et al.'s
adding problem; the table at the end shows each one's test mean squared error next to the 1/6 of
a memoryless predictor, and the fraction of test sequences within 0.04 of the target.
"""

from __future__ import annotations

import argparse
import time

import torch

from . import tasks
from .layers import LSTM, RNN
from .models import SequenceModel


def train_and_test(
    cell: str, task: tasks.Task, *, steps: int, hidden: int, seed: int, batch_size: int = 64,
    lr: float = 3e-3, log_every: int = 250,
) -> dict[str, float]:
    """Train ``cell`` ("lstm" or "rnn") on ``task``; return test loss, accuracy and seconds."""
    torch.manual_seed(seed)
    layer_cls = LSTM if cell == "lstm" else RNN
    model = SequenceModel(layer_cls(task.input_size, hidden), task.output_size,
                          output_activation=task.output_activation)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    data = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        batch = task.sample(batch_size, generator=data)
        loss = task.loss(model(batch.inputs, batch.lengths), batch)
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        if step % log_every == 0 or step == steps:
            print(f"  {cell:>4}  step {step:>5}/{steps}  train loss {loss.item():.4f}", flush=True)
    seconds = time.perf_counter() - start
    test = task.sample(2560, generator=torch.Generator().manual_seed(10_000 + seed))
    with torch.no_grad():
        outputs = model(test.inputs, test.lengths)
        test_loss = float(task.loss(outputs, test))
        accuracy = float(task.evaluate(outputs, test).float().mean())
    return {"test_loss": test_loss, "accuracy": accuracy, "seconds": seconds,
            "weights": float(sum(p.numel() for p in model.parameters()))}


def run_demo(*, steps: int = 2500, length: int = 100, seed: int = 0, hidden: int = 64) -> dict:
    """Train an LSTM and a plain RNN on the adding problem and print a comparison table."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    task = tasks.make("adding", T=length)
    print(f"adding problem, T={length}: predict the sum of the two marked values at the end")
    print(f"memoryless baseline (always predict 1): test MSE {task.baseline:.4f}\n")
    results = {}
    for cell in ("lstm", "rnn"):
        results[cell] = train_and_test(cell, task, steps=steps, hidden=hidden, seed=seed)
    print(f"\n{'cell':<6}{'weights':>9}{'test MSE':>10}{'baseline':>10}"
          f"{'|err|<0.04':>12}{'train s':>9}")
    for cell, r in results.items():
        print(f"{cell:<6}{int(r['weights']):>9}{r['test_loss']:>10.4f}{task.baseline:>10.4f}"
              f"{r['accuracy']:>12.1%}{r['seconds']:>9.0f}")
    for cell, r in results.items():
        verdict = "bridged the lag" if r["test_loss"] < task.baseline / 10 else \
            "did not beat the baseline by 10x"
        print(f"{cell}: {verdict}")
    return results


def _command(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    run_demo(steps=args.steps, length=args.length, seed=args.seed, hidden=args.hidden)
    print(f"\ntotal wall time {time.perf_counter() - start:.0f} s")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``lstmkit demo`` to the command line."""
    p = sub.add_parser(
        "demo", help="train an LSTM and a plain RNN on the adding problem and compare"
    )
    p.add_argument("--steps", type=int, default=2500, help="Adam steps per model (default 2500)")
    p.add_argument("--length", type=int, default=100, help="sequence length T (default 100)")
    p.add_argument("--hidden", type=int, default=64, help="hidden units (default 64)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(func=_command)
