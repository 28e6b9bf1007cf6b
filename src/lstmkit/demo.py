"""``lstmkit demo``: the 1997 LSTM bridges a long time lag that a plain RNN cannot.

The headline demonstration of ``make demo``. It reruns one experiment of Hochreiter &
Schmidhuber (1997) the way ``lstmkit reproduce`` does (the paper's net, learning rate, on-line
gradient descent and stopping rule), side by side with a plain RNN of about the same number of
weights trained under the same rules and budget, one process each, with progress bars; then it
prints the table beside the paper's row and says which of the two bridged the lag.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import torch

from .analysis._limits import check_int
from .reproduce.experiments import get
from .reproduce.records import RunResult
from .reproduce.report import table
from .reproduce.runner import compare

DEFAULTS: dict[str, Any] = {"experiment": "exp3a", "T": 50, "max_sequences": 40_000}
MAX_T = 10_000


def run_demo(*, experiment: str = DEFAULTS["experiment"], T: int | None = DEFAULTS["T"],
             max_sequences: int = DEFAULTS["max_sequences"], seed: int = 0,
             out: str | None = None, progress: bool = True) -> list[RunResult]:
    """Train the paper's LSTM and a plain RNN on ``experiment``; print and return the results.

    ``T`` (the task's sequence length; None: the experiment's own) is at most
    :data:`MAX_T`; the task itself checks the lower end.
    """
    if T is not None:
        # Up front, before any worker starts: a huge T would otherwise surface as out of memory
        # inside the workers. The lower end is the task's own (its error names its minimum).
        if isinstance(T, int) and not isinstance(T, bool) and T > MAX_T:
            check_int("T", T, 1, MAX_T, "the paper's time lags are at most 1,000 steps")
        get(experiment).make_task({"T": T})
    task_params = {"T": T} if T is not None else None
    print(f"{experiment}: the paper's LSTM (lstm1997, on-line SGD) against a plain RNN with "
          f"about as many weights,\nsame learning rule and budget of {max_sequences:,} training "
          f"sequences" + (f", sequence length T={T}" if T is not None else "") + ".\n",
          flush=True)
    outs = [None, None] if out is None else [os.path.join(out, c) for c in ("lstm1997", "rnn")]
    workers = 2 if (os.cpu_count() or 1) >= 2 else 1
    results = compare(experiment, ["lstm1997", "rnn"], setting="paper", seed=seed,
                      max_sequences=max_sequences, outs=outs, workers=workers,
                      progress=progress, task_params=task_params)
    print()
    print(table(results))
    print()
    for res in results:
        s = res.summary
        if s.successes and s.mean_sequences is not None:
            verdict = (f"bridged the lag: met the paper's stopping rule after "
                       f"{s.mean_sequences:,.0f} sequences")
        else:
            verdict = f"did not meet the paper's stopping rule in {max_sequences:,} sequences"
        print(f"{res.cell:>9}: {verdict}; {s.mean_test_wrong or 0:.0f} of {s.test_size or 0:.0f} "
              "fresh test sequences wrong")
    return results


def _command(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    torch.set_num_threads(1)
    run_demo(experiment=args.experiment, T=args.T, max_sequences=args.max_sequences,
             seed=args.seed, out=args.out, progress=not args.quiet)
    print(f"\ntotal wall time {time.perf_counter() - start:.0f} s")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``lstmkit demo`` to the command line."""
    p = sub.add_parser(
        "demo", help="the 1997 LSTM against a plain RNN on a long-time-lag experiment"
    )
    p.add_argument("--experiment", default=DEFAULTS["experiment"],
                   help=f"experiment of `lstmkit reproduce --list` (default "
                   f"{DEFAULTS['experiment']})")
    p.add_argument("--T", type=int, default=DEFAULTS["T"],
                   help=f"sequence length T of the task, at most {MAX_T:,} (default "
                   f"{DEFAULTS['T']})")
    p.add_argument("--max-sequences", type=int, default=DEFAULTS["max_sequences"],
                   help=f"training sequences per net (default {DEFAULTS['max_sequences']:,})")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", default=None, help="also write results.json and curves here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_command)
