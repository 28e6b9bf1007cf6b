"""The ``lstmkit`` command line: ``lstmkit demo``, ``lstmkit variants``.

Bad arguments end with a one-line message and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import torch

from .cells import PRESETS


def _variants(_: argparse.Namespace) -> int:
    width = max(len(n) for n in PRESETS)
    for name, spec in PRESETS.items():
        print(f"{name:<{width}}  [{spec.family}]  {spec.doc}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    start = time.perf_counter()
    run_demo(steps=args.steps, length=args.length, seed=args.seed, hidden=args.hidden)
    print(f"\ntotal wall time {time.perf_counter() - start:.0f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lstmkit", description="LSTM-family cells and the long-time-lag experiments."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("variants", help="list the cell presets with their equations")
    p.set_defaults(func=_variants)
    p = sub.add_parser(
        "demo", help="train an LSTM and a plain RNN on the adding problem and compare"
    )
    p.add_argument("--steps", type=int, default=1500, help="Adam steps per model (default 1500)")
    p.add_argument("--length", type=int, default=100, help="sequence length T (default 100)")
    p.add_argument("--hidden", type=int, default=64, help="hidden units (default 64)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    try:
        return int(args.func(args))
    except (ValueError, TypeError) as err:
        print(f"lstmkit {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
