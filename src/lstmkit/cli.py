"""The ``lstmkit`` command line.

Each command lives beside the code it drives and registers itself here through a
``register(subparsers)`` function (see ``_COMMANDS``); this module only assembles the parser
and turns bad input into a one-line message with exit status 2 (a diverged or killed run: 1),
never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from concurrent.futures.process import BrokenProcessPool

from .cells import PRESETS
from .train.trainer import TrainingDiverged

# Modules with a ``register(subparsers)`` function, in the order ``lstmkit --help`` lists them.
_COMMANDS = (
    "lstmkit.demo",
    "lstmkit.reproduce.cli",
    "lstmkit.bench",
    "lstmkit.analysis.gradflow",
    "lstmkit.analysis.gates",
    "lstmkit.analysis.report",
)


def _variants(_: argparse.Namespace) -> int:
    width = max(len(n) for n in PRESETS)
    for name, spec in PRESETS.items():
        print(f"{name:<{width}}  [{spec.family}]  {spec.doc}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The full ``lstmkit`` parser with every registered command."""
    parser = argparse.ArgumentParser(
        prog="lstmkit", description="LSTM-family cells and the long-time-lag experiments."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("variants", help="list the cell presets with their equations")
    p.set_defaults(func=_variants)
    for name in _COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, TypeError, OSError) as err:
        print(f"lstmkit {args.command}: error: {err}", file=sys.stderr)
        return 2
    # Not bad input but a run that failed: its own message, status 1, still no traceback.
    except TrainingDiverged as err:
        print(f"lstmkit {args.command}: error: {err}", file=sys.stderr)
        return 1
    except BrokenProcessPool:
        print(f"lstmkit {args.command}: error: a trial's worker process died (killed, or out of "
              "memory); rerun with --resume to continue from the checkpoints", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
