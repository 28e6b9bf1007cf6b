"""``lstmkit reproduce``: rerun a row of the 1997 paper's tables from the command line."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from .experiments import EXPERIMENTS, get
from .nets import SETTINGS
from .records import load_results
from .report import markdown, table
from .runner import Terminated, compare, default_budget


def _list() -> int:
    width = max(len(n) for n in EXPERIMENTS)
    for name, exp in EXPERIMENTS.items():
        ref = exp.reference()
        paper = f"paper: {ref.sequences:,} sequences" if ref and ref.sequences else "paper: -"
        print(f"{name:<{width}}  {exp.title_for():<52} {paper}  "
              f"(default budget {default_budget(name):,})")
    return 0


def _task_params(items: list[str] | None) -> dict[str, int | float | str]:
    """``["T=50", "p=10"]`` as ``{"T": 50, "p": 10}`` (ints, then floats, else strings)."""
    out: dict[str, int | float | str] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--task-param: expected KEY=VALUE, got {item!r}")
        value: int | float | str = text
        for kind in (int, float):
            try:
                value = kind(text)
                break
            except ValueError:
                continue
        out[key] = value
    return out


def _command(args: argparse.Namespace) -> int:
    if args.list:
        return _list()
    if args.summarize:
        print(markdown(load_results(args.summarize)))
        return 0
    if not args.experiment:
        raise ValueError("experiment: expected an experiment name (see `lstmkit reproduce "
                         "--list`), got none")
    get(args.experiment)
    task_params = _task_params(args.task_param)
    cells = args.cell or [None]
    outs: list[Path | None] = [None] * len(cells)
    if args.out is not None:
        outs = [Path(args.out) if len(cells) == 1 else
                Path(args.out) / f"{args.experiment}-{args.setting}-{cell or 'default'}"
                for cell in cells]
    try:
        results = compare(
            args.experiment, cells, setting=args.setting, trials=args.trials, seed=args.seed,
            max_sequences=args.max_sequences, outs=outs, workers=args.workers,
            resume=args.resume, progress=not args.quiet, task_params=task_params or None,
            checkpoint_every=args.checkpoint_every, group=not args.one_by_one, ray=args.ray,
        )
    except Terminated:
        # Like Ctrl-C, but the shell's status for a SIGTERM: 128 + 15.
        hint = "; rerun with --resume to continue from the checkpoints" if args.out else ""
        print(f"lstmkit reproduce: terminated{hint}", file=sys.stderr)
        return 128 + signal.SIGTERM
    print()
    print(table(results))
    if args.out is not None:
        print(f"\nresults written to {args.out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``lstmkit reproduce`` to the command line."""
    p = sub.add_parser("reproduce", help="rerun an experiment of Hochreiter & Schmidhuber 1997")
    p.add_argument("experiment", nargs="?", help="e.g. exp1, exp2c-q1000-p1000, exp4-T100")
    p.add_argument("--list", action="store_true", help="list the experiments and exit")
    p.add_argument("--summarize", metavar="DIR", default=None,
                   help="print the Markdown table of every results.json under DIR and exit")
    p.add_argument("--setting", choices=SETTINGS, default="paper",
                   help="paper: lstm1997 net, on-line SGD; modern: lstm of 16-64 units, Adam, "
                   "minibatches, clipping, chrono initialisation, a softmax readout with "
                   "cross-entropy where targets are one-hot; modern-fb1: the modern net with "
                   "forget-gate bias 1 instead")
    p.add_argument("--cell", action="append",
                   help="cell preset (default lstm1997/lstm); repeat to compare, e.g. --cell rnn")
    p.add_argument("--trials", type=int, default=1, help="independent trials (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first trial (default 0)")
    p.add_argument("--max-sequences", type=int, default=None,
                   help="training sequences per trial (default: 3x the paper's mean, at "
                   "least 20,000, at most the paper's own budget)")
    p.add_argument("--task-param", action="append", metavar="KEY=VALUE",
                   help="change a task parameter of the row, e.g. T=50 (repeatable); the table "
                   "marks such rows as changed")
    p.add_argument("--workers", type=int, default=None,
                   help="processes (or Ray tasks) at once, each training a group of trials "
                   "(default: the cores, or the cluster's CPUs)")
    p.add_argument("--out", default=None, help="folder for results.json, curves, checkpoints")
    p.add_argument("--checkpoint-every", type=int, default=20_000, metavar="N",
                   help="with --out, checkpoint each trial every N sequences (default 20,000)")
    p.add_argument("--resume", action="store_true",
                   help="continue trials from their checkpoints in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--one-by-one", action="store_true",
                   help="train each trial on its own instead of side by side in groups "
                   "(slower; a trial's data, and so its numbers, differ between the two)")
    p.add_argument("--ray", metavar="ADDRESS", default=None,
                   help="run the trial groups on the Ray cluster at ADDRESS ('local': start "
                   "one here); --out must be a folder every node sees")
    p.set_defaults(func=_command)
