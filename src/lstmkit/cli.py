"""The ``lstmkit`` command line.

Each command lives beside the code it drives and registers itself here through a
``register(subparsers)`` function (see ``_COMMANDS``); this module only assembles the parser
and turns bad input into a one-line message with exit status 2 (a diverged or killed run, or one
that ran out of memory: 1), never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys
import textwrap
import warnings
from collections.abc import Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, NoReturn

from .cells import PRESETS, CellSpec
from .train.trainer import TrainingDiverged

if TYPE_CHECKING:
    from .dispatch import Route

# Modules with a ``register(subparsers)`` function, in the order ``lstmkit --help`` lists them.
_COMMANDS = (
    "lstmkit.demo",
    "lstmkit.reproduce.cli",
    "lstmkit.bench",
    "lstmkit.analysis.gradflow",
    "lstmkit.analysis.gates",
    "lstmkit.analysis.report",
)

# argparse's own wording, rephrased as ``name: expected X, got Y`` like every other error.
_TYPE_NAMES = {"int": "an integer", "float": "a number"}
_INVALID_VALUE = re.compile(r"argument (?P<arg>[^:]+): invalid (?P<type>\w+) value: (?P<got>.*)")
_INVALID_CHOICE = re.compile(
    r"argument (?P<arg>[^:]+): invalid choice: (?P<got>.*?) \(choose from (?P<choices>.*)\)"
)
_ARGUMENT = re.compile(r"argument (?P<arg>[^:]+): (?P<rest>.*)")


def _rephrase(message: str) -> str:
    """argparse's error ``message`` in the ``name: expected X, got Y`` form where it has one."""
    if m := _INVALID_VALUE.fullmatch(message):
        kind = _TYPE_NAMES.get(m["type"], f"a valid {m['type']} value")
        return f"{m['arg']}: expected {kind}, got {m['got']}"
    if m := _INVALID_CHOICE.fullmatch(message):
        choices = ", ".join(c.strip().strip("'\"") for c in m["choices"].split(","))
        return f"{m['arg']}: expected one of {choices}, got {m['got']}"
    if m := _ARGUMENT.fullmatch(message):
        rest = "expected a value" if m["rest"] == "expected one argument" else m["rest"]
        return f"{m['arg']}: {rest}"
    return message


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (no usage block), exit status 2.

    ``add_subparsers`` makes every command's parser of this class too, so each command's
    errors read ``lstmkit CMD: error: ...`` without any code in the command itself.
    """

    def error(self, message: str) -> NoReturn:
        self._fail(self.prog, message)

    def _fail(self, prog: str, message: str) -> NoReturn:
        self.exit(2, f"{prog}: error: {_rephrase(message)} (see {prog} --help)\n")

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            # Unknown options reach the top parser; blame the command they were given to.
            command = getattr(parsed, "command", None)
            prog = f"{self.prog} {command}" if command else self.prog
            self._fail(prog, f"unrecognized arguments: {' '.join(extras)}")
        return parsed


#: How ``lstmkit variants`` names the paths of ``backend="auto"`` (``"none"``: refused).
PATH_NAMES = {"native": "torch kernel", "engine": "fused engine", "reference": "reference",
              "none": "none (refused)"}
#: The kinds of call ``lstmkit variants`` shows: (column, training step, lengths given).
CALLS = (("training", True, False), ("inference", False, False),
         ("training+lengths", True, True), ("inference+lengths", False, True))


def auto_route(spec: CellSpec, *, grad: bool = True, lengths: bool = False) -> Route | None:
    """The route a layer's default ``backend="auto"`` takes for ``spec`` on CPU float32 input,
    for a training step (``grad``) or inference, with or without ``lengths``: the layers' own
    decision (:func:`lstmkit.dispatch.route`). None where a forced ``LSTMKIT_BACKEND`` refuses
    the cell."""
    from . import dispatch

    try:
        return dispatch.route(spec, "auto", None, lengths=lengths, grad=grad)
    except (ValueError, RuntimeError):
        return None


def auto_path(spec: CellSpec, *, grad: bool = True, lengths: bool = False) -> str:
    """:func:`auto_route`'s path (``"native"``, ``"engine"``, ``"reference"``), or ``"none"``
    where a forced ``LSTMKIT_BACKEND`` refuses the cell."""
    route = auto_route(spec, grad=grad, lengths=lengths)
    return "none" if route is None else route.path


def _engine_status() -> tuple[bool, str]:
    """Whether the fused engine runs here, and a sentence saying so (building it if needed)."""
    from . import engine

    # The first use compiles the engine (a minute or so): say so rather than hang silently.
    log = logging.getLogger("lstmkit.engine")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        with warnings.catch_warnings():
            # A failed build warns at length; the listing says it in one sentence instead.
            warnings.simplefilter("ignore", RuntimeWarning)
            ok = engine.available()
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    if ok:
        return True, "The fused engine is built and runs on this machine."
    return False, (f"The fused engine is not available on this machine ({engine.build_error()}), "
                   "so the cells without a torch kernel run the reference.")


def _variants(_: argparse.Namespace) -> int:
    from . import dispatch

    forced = dispatch.requested("auto")  # LSTMKIT_BACKEND, checked
    # Forced to torch's kernels or the reference, no layer uses the engine: no need to build it.
    _, status = (False, "") if forced in ("native", "reference") else _engine_status()
    routes = {name: [auto_route(spec, grad=grad, lengths=lengths) for _, grad, lengths in CALLS]
              for name, spec in PRESETS.items()}
    rows = [(name, spec.family,
             *(PATH_NAMES["none" if r is None else r.path] for r in routes[name]), spec.doc)
            for name, spec in PRESETS.items()]
    header = ("variant", "family", *(column for column, _, _ in CALLS), "equations")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        print("  ".join(f"{v:<{w}}" for v, w in zip(row[:-1], widths)) + "  " + row[-1])
    print('\nWhat the default backend="auto" runs for CPU float32 tensors here, for a training '
          "step,\ninference (torch.no_grad), and each with lengths=: torch kernel (torch's own), "
          "fused engine\n(lstmkit's C++) or reference (the Python step functions). A layer's "
          "route() method\nsays the same for a given call." + (f"\n{status}" if status else ""))
    if forced != "auto":
        print(f"LSTMKIT_BACKEND={forced} is set and decides the path of every layer.")
        return 0
    # One line per distinct reason, naming the presets and kinds of call it applies to.
    why: dict[str, list[str]] = {}
    for name, found in routes.items():
        for (column, _, _), route in zip(CALLS, found):
            if route is None:
                continue
            reason = route.reason
            if not PRESETS[name].torch_native and route.path == "engine":
                reason = "torch has no kernel for these cells; the fused engine computes them"
            why.setdefault(reason, []).append(f"{name} {column}")
    print("\nWhy:")
    for reason, calls in why.items():
        print(textwrap.fill(f"{_summarise_calls(calls)}: {reason}", width=100,
                            initial_indent="  ", subsequent_indent="      "))
    return 0


def _summarise_calls(calls: list[str]) -> str:
    """``["a training", "a inference", "b training"]`` -> ``"a (training, inference), b
    (training)"``; a preset with every kind of call is named alone."""
    by_name: dict[str, list[str]] = {}
    for call in calls:
        name, column = call.split(" ", 1)
        by_name.setdefault(name, []).append(column)
    return ", ".join(name if len(columns) == len(CALLS) else f"{name} ({', '.join(columns)})"
                     for name, columns in by_name.items())


def build_parser() -> argparse.ArgumentParser:
    """The full ``lstmkit`` parser with every registered command."""
    parser = _Parser(
        prog="lstmkit", description="LSTM-family cells and the long-time-lag experiments."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("variants", help="list the cell presets with their equations and the "
                       "path each one runs on")
    p.set_defaults(func=_variants)
    for name in _COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def _is_out_of_memory(err: BaseException) -> bool:
    """A ``MemoryError``, or torch's allocator failing (a ``RuntimeError`` that says so)."""
    if isinstance(err, MemoryError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("can't allocate memory" in text
                                              or "not enough memory" in text)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    prefix = f"lstmkit {args.command}: error:"
    try:
        return int(args.func(args))
    except (ValueError, TypeError, OSError) as err:
        print(f"{prefix} {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] != "matplotlib":
            raise
        print(f"{prefix} this command draws figures with matplotlib, which is not installed; "
              "install it with: pip install matplotlib", file=sys.stderr)
        return 2
    # Not bad input but a run that failed: its own message, status 1, still no traceback.
    except TrainingDiverged as err:
        print(f"{prefix} {err}", file=sys.stderr)
        return 1
    except BrokenProcessPool:
        print(f"{prefix} a trial's worker process died (killed, or out of memory); rerun with "
              "--resume to continue from the checkpoints", file=sys.stderr)
        return 1
    except (MemoryError, RuntimeError) as err:
        if not _is_out_of_memory(err):
            raise
        print(f"{prefix} out of memory; rerun with smaller sizes (see lstmkit {args.command} "
              "--help)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
