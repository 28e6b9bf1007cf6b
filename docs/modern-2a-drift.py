"""Exp. 2a for the modern LSTM outside the harness: why it fails (docs/modern-setting-notes.md).

Usage: python docs/modern-2a-drift.py P BATCHES LR HIDDEN LOSS [SEED [VARIANT]]

LOSS: ``all`` (cross-entropy at every step, the task's objective) or ``last`` (the last step
only). VARIANT: the LSTM variant (``lstm``; e.g. ``noaf``, h = o * c with no tanh on the way
out). Batches of 16 sequences, ``lstmkit.LSTM(p + 1, HIDDEN, chrono_init=P, variant=VARIANT)``
and a linear readout, Adam, clipping at 1. Prints the mean loss per step and the loss at the last
step every 250 batches, then how far apart the x- and y-sequences' hidden states are along
time, and the largest |c| at the end.
"""

import sys

import torch
from torch import nn

import lstmkit

P, BATCHES, LR, H, LOSS = (int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]),
                           int(sys.argv[4]), sys.argv[5])
torch.set_num_threads(1)
torch.manual_seed(int(sys.argv[6]) if len(sys.argv) > 6 else 0)
N = P + 1  # symbols a_1..a_{p-1}, x = a_p (index P - 1), y = a_{p+1} (index P)


def batch(label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x or y, a_1, ..., a_{p-1}) one-hot, and the next symbol at every step."""
    first = torch.where(label == 0, P - 1, P)
    middle = torch.arange(P - 1)[:, None].expand(P - 1, len(label))
    inputs = torch.cat([first[None], middle], 0)
    targets = torch.cat([middle, first[None]], 0)
    return nn.functional.one_hot(inputs, N).float(), targets


VARIANT = sys.argv[7] if len(sys.argv) > 7 else "lstm"
lstm, readout = lstmkit.LSTM(N, H, chrono_init=P, variant=VARIANT), nn.Linear(H, N)
params = [*lstm.parameters(), *readout.parameters()]
opt = torch.optim.Adam(params, lr=LR)
for step in range(1, BATCHES + 1):
    x, y = batch(torch.randint(0, 2, (16,)))
    logits = readout(lstm(x)[0])
    every = nn.functional.cross_entropy(logits.reshape(-1, N), y.reshape(-1))
    last = nn.functional.cross_entropy(logits[-1], y[-1])
    opt.zero_grad()
    (every if LOSS == "all" else last).backward()
    nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    if step % 250 == 0:
        print(step, f"loss/step {every.item():.4f}", f"last step {last.item():.4f}", flush=True)
with torch.no_grad():
    h, (_, c) = lstm(batch(torch.tensor([0, 1]))[0])
    apart = (h[:, 0] - h[:, 1]).abs().amax(-1)
    print("max |h_x - h_y| at t = 1, 10, 50, 99:",
          " ".join(f"{apart[t].item():.1e}" for t in (1, 10, 50, 99)))
    print(f"max |c(T)|: {c.abs().max().item():.2f}")
