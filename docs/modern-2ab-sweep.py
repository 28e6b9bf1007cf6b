"""Exps. 2a and 2b for the modern LSTM outside the harness: which nets learn them, if any.

Usage: python docs/modern-2ab-sweep.py ROW BATCHES SPEC [SPEC ...]

ROW: ``a`` (Exp. 2a, the fixed middle) or ``b`` (Exp. 2b, a random middle), p = 100. Each SPEC
is one trial, comma-separated ``key=value`` (defaults in brackets): ``H`` hidden size (32),
``L`` layers (1), ``lr`` Adam's rate (1e-2), ``bs`` batch size (16), ``skip`` 1 to let the
readout read the inputs too (0), ``wd`` AdamW weight decay (0), ``seed`` (0), ``chrono`` 0 for
torch's initialisation instead of ``chrono_init=100`` (1), ``bi`` / ``bf`` to set every
input-gate / forget-gate bias to one value after initialisation, ``last`` 1 to put the loss on
the last step alone (0: every step, the task's objective), ``gru`` 1 for ``lstmkit.GRU``
(chrono initialisation on its update gate; ``bi``/``bf`` do not apply) instead of the LSTM,
``v`` an LSTM variant (``lstm``; e.g. ``cifg``: f = 1 - i, so the cell state stays within
[-1, 1]; ``bi``/``bf`` assume ``lstm``'s gate layout), ``oa`` the variant's output
activation replaced (e.g. ``identity``: h = o * c, no tanh between the state and the output),
``ls`` label smoothing of the cross-entropy (0).

The recipe is the modern setting's: ``lstmkit.LSTM`` with chrono initialisation, a linear
readout with softmax and cross-entropy averaged over every step, Adam, clipping at norm 1,
batches of 16. Every 50 batches the net is tested with its weights frozen on 256 sequences
(2a: both of its sequences, 128 times; 2b: drawn); when all are right it is tested on 10,000
more (2a needs no more: it has only two sequences), and the trial is solved when those are all
right too: the paper's rule, the absolute error of every output below 0.25 at every step (2a)
or at the end (2b). Prints, per trial, the training sequences at success (``None``: not within
BATCHES) and the loss of the last batch per step (with ``last=1``: at the last step); chance
at the last step and right elsewhere is ln 2 / 100 = 0.0069 on 2a.
"""

import dataclasses
import sys
import time

import torch
from torch import nn

import lstmkit

P = 100
N = P + 1  # symbols a_1..a_{p-1} (indices 0..98), x = a_p (99), y = a_{p+1} (100)


def batch(label: torch.Tensor, random_middle: bool,
          gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(x|y, a_i, ..., x|y) one-hot without its last symbol, and the next symbol per step."""
    first = torch.where(label == 0, P - 1, P)
    if random_middle:
        middle = torch.randint(0, P - 1, (P - 1, len(label)), generator=gen)
    else:
        middle = torch.arange(P - 1)[:, None].expand(P - 1, len(label))
    inputs = torch.cat([first[None], middle], 0)
    targets = torch.cat([middle, first[None]], 0)
    return nn.functional.one_hot(inputs, N).float(), targets


def all_right(forward, random_middle: bool, n: int, gen: torch.Generator) -> bool:
    """Whether n sequences (half x, half y) are right by the paper's ABS(0.25) rule."""
    with torch.no_grad():
        for start in range(0, n, 1000):
            x, y = batch(torch.arange(min(1000, n - start)) % 2, random_middle, gen)
            err = (forward(x).softmax(-1) - nn.functional.one_hot(y, N).float()).abs().amax(-1)
            if not bool((err[-1] if random_middle else err.amax(0)).lt(0.25).all()):
                return False
    return True


def trial(random_middle: bool, batches: int, H: int = 32, L: int = 1, lr: float = 1e-2,
          bs: int = 16, skip: int = 0, wd: float = 0.0, seed: int = 0, chrono: int = 1,
          bi: float | None = None, bf: float | None = None,
          last: int = 0, gru: int = 0, v: str = "lstm",
          ls: float = 0.0, oa: str = "") -> tuple[int | None, float]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    test_gen = torch.Generator().manual_seed(seed + 2)
    layer = lstmkit.GRU if gru else lstmkit.LSTM
    spec = lstmkit.get_spec(v)
    if oa:
        spec = dataclasses.replace(spec, name=f"{v}_{oa}", output_activation=oa)
    lstm = layer(N, H, num_layers=L, **({"chrono_init": P} if chrono else {}),
                 **({} if gru else {"variant": spec}))
    with torch.no_grad():
        for name, prm in lstm.named_parameters():
            # Gate order i, f, g, o; the two bias vectors add, so each gets half.
            if name.startswith("bias") and bi is not None and not gru:
                prm[:H] = bi / 2
            if name.startswith("bias") and bf is not None and not gru:
                prm[H:2 * H] = bf / 2
    readout = nn.Linear(H + (N if skip else 0), N)
    params = [*lstm.parameters(), *readout.parameters()]
    opt = (torch.optim.AdamW(params, lr=lr, weight_decay=wd) if wd
           else torch.optim.Adam(params, lr=lr))

    def forward(x: torch.Tensor) -> torch.Tensor:
        h = lstm(x)[0]
        return readout(torch.cat([h, x], -1) if skip else h)

    for step in range(1, batches + 1):
        x, y = batch(torch.randint(0, 2, (bs,), generator=gen), random_middle, gen)
        logits = forward(x)
        loss = (nn.functional.cross_entropy(logits[-1], y[-1], label_smoothing=ls) if last else
                nn.functional.cross_entropy(logits.reshape(-1, N), y.reshape(-1),
                                            label_smoothing=ls))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 50 == 0 and all_right(forward, random_middle, 256, test_gen) and (
                not random_middle or all_right(forward, random_middle, 10_000, test_gen)):
            return step * bs, loss.item()
    return None, loss.item()


if __name__ == "__main__":
    torch.set_num_threads(1)
    row_b, batches = sys.argv[1] == "b", int(sys.argv[2])
    for spec in sys.argv[3:]:
        kv = dict(item.split("=") for item in spec.split(","))
        args = {k: (float(v) if k in ("lr", "wd", "bi", "bf", "ls") else v if k in ("v", "oa")
                     else int(v))
                for k, v in kv.items()}
        start = time.time()
        solved, last = trial(row_b, batches, **args)
        print(f"exp2{'b' if row_b else 'a'} {spec}: solved at {solved}, loss {last:.4f}, "
              f"{time.time() - start:.0f} s", flush=True)
