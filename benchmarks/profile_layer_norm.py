"""Where a layer-norm cell's training step spends its time on the fused engine, beside the same
cell without layer norm and ``torch.nn.LSTM`` of the same shape.

For one shape ``(T, B, input, hidden)`` it times, in alternating rounds (medians, and each
candidate's median ratio to ``torch.nn.LSTM`` in the same round), the training step of
``torch.nn.LSTM``, the engine's ``lstm`` and ``layernorm``, and the engine's ``gru`` and
``layernorm_gru``; then it profiles a few steps of each layer-norm cell and of its plain cell
with torch's profiler and prints the operators by their own time per step. Run from the
repository root::

    .venv/bin/python benchmarks/profile_layer_norm.py --shape 100x32x32x128 --threads 1
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from lstmkit.bench import alternate, make_layer, paired_ratio, parse_shapes, train_step

#: The candidates and the backend each is forced onto (the engine, so that the comparison with
#: and without layer norm is of the same code).
CANDIDATES = {"lstm": "engine", "layernorm": "engine", "gru": "engine",
              "layernorm_gru": "engine"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("``", ""))
    parser.add_argument("--shape", default="100x32x32x128", help="TxBxINxH")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--repeats", type=int, default=9, help="timed rounds (default 9)")
    parser.add_argument("--top", type=int, default=8, help="operators listed per cell")
    args = parser.parse_args(argv)
    (shape,) = parse_shapes(args.shape)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    steps, batch, n_in, hidden = shape
    x, grad = torch.randn(steps, batch, n_in), torch.randn(steps, batch, hidden)
    layers = {v: make_layer(v, shape, backend=b) for v, b in CANDIDATES.items()}
    fns = {"torch.nn.LSTM": train_step(nn.LSTM(n_in, hidden), x, grad),
           **{v: train_step(m, x, grad) for v, m in layers.items()}}
    times = alternate(fns, args.repeats, 2)
    print(f"training step, shape {shape}, {args.threads} thread(s), medians of {args.repeats} "
          "alternating rounds")
    for name, ts in times.items():
        ratio = paired_ratio(ts, times["torch.nn.LSTM"])
        print(f"  {name:14s} {1e3 * statistics.median(ts):8.2f} ms   x{ratio:.2f} nn.LSTM")
    for name in CANDIDATES:
        step = fns[name]
        for _ in range(2):
            step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(5):
                step()
        events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        print(f"\n{name}: operators by own time per step")
        for e in events[: args.top]:
            print(f"  {e.key:42s} {e.self_cpu_time_total / 5e3:8.2f} ms   {e.count / 5:.0f} "
                  "call(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
