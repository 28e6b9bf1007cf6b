"""Checkpoints that are written atomically and loaded without executing code.

A checkpoint is a ``dict`` of tensors, numbers, strings, lists and dicts saved with
``torch.save`` and read back with ``torch.load(weights_only=True)``, which refuses to unpickle
arbitrary objects. Writing goes to a temporary file in the same directory, is flushed to disk,
then renamed over the old file, so a process killed mid-write leaves the last good checkpoint in
place. Every checkpoint carries ``format`` and a ``meta`` dict (cell spec, sizes, task) that
:func:`load_checkpoint` can compare against what the caller expects. Everything wrong with a
checkpoint is reported as a :class:`CheckpointError` whose one-line message starts with the
file's path.
"""

from __future__ import annotations

import glob
import math
import os
import re
from pathlib import Path
from typing import Any

import torch

from .._atomic import write_atomic

FORMAT = "lstmkit-checkpoint-v1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, unreadable, not an lstmkit checkpoint, holding
    a field of the wrong type, shape or range, or written by another run.

    The message is one line that starts with the file's path and names the field, e.g.
    ``runs/exp4/trial-0.pt: model.readout.weight: expected shape (1, 8), got (1, 4)``;
    :attr:`path` and :attr:`problem` hold its two parts.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = Path(path)
        self.problem = " ".join(str(problem).split())  # always one line
        super().__init__(f"{self.path}: {self.problem}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from both parts when it crosses a process boundary (trials in worker pools).
        return (type(self), (self.path, self.problem))

# Paragraphs of torch's weights-only error that carry no reason. The first one also advises
# retrying with weights_only=False, which is exactly wrong for a file nobody vouches for.
_TORCH_BOILERPLATE = ("Weights only load failed", "Please file an issue",
                      "Check the documentation")


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename).

    The temporary, ``.{name}.{pid}.{random}.tmp`` beside ``path``, names the writing process.
    Afterwards the temporaries that writers killed mid-write left beside ``path`` are removed:
    those of this process and of processes that no longer exist, never those of a process that
    may still be writing.
    """
    path = Path(path)
    payload = {"format": FORMAT, **state}
    write_atomic(path, lambda handle: torch.save(payload, handle))
    _remove_stale_temporaries(path)
    return path


def _remove_stale_temporaries(path: Path) -> None:
    """Remove the temporaries of ``path`` whose writer is this process or is gone."""
    # mkstemp's random part has no dots, so the pattern cannot match another file's temporary.
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[^.]+\.tmp")
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        match = pattern.fullmatch(candidate.name)
        # A name without a pid does not say whose it is: leave it.
        if match is not None and not _may_be_running(int(match.group(1))):
            candidate.unlink(missing_ok=True)


def _may_be_running(pid: int) -> bool:
    """Whether the process ``pid`` may still be writing a temporary: False for one known to be
    gone, and for this process, whose own write has finished by now (a temporary with its pid
    is left over from an earlier process that had the same pid)."""
    if pid == os.getpid():
        return False
    if os.name != "posix" or pid <= 0:
        return True  # os.kill(pid, 0) is no probe off POSIX: it would end the process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # another user's process, or a pid the system cannot look up: keep it
    return True


def load_checkpoint(
    path: str | os.PathLike[str], expect_meta: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Read a checkpoint without executing code from it, checking it is one of ours.

    Raises :class:`CheckpointError` naming the file when it is missing, truncated, corrupted,
    not an lstmkit checkpoint, has a ``meta`` that is not a dict, or (with ``expect_meta``) was
    made for another cell spec or shape: every key of ``expect_meta`` must have the same value
    in the checkpoint's ``meta``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - whatever the file does to torch.load, it is bad
        raise CheckpointError(
            path, "not a readable lstmkit checkpoint (truncated, corrupted or containing "
            f"code-bearing objects): {_reason(err)}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            path, f"not an lstmkit checkpoint (expected format {FORMAT!r}, got {describe(found)})"
        )
    meta = state.get("meta", {} if expect_meta is None else None)
    if not isinstance(meta, dict):
        raise CheckpointError(path, f"meta: expected a dict, got {describe(meta)}")
    if expect_meta is not None:
        for key, value in expect_meta.items():
            if key not in meta:
                raise CheckpointError(path, f"made for another run: meta.{key}: missing from "
                                            f"the checkpoint, expected {describe(value)}")
            if not same_value(meta[key], value):
                raise CheckpointError(path, f"made for another run: meta.{key}: checkpoint has "
                                            f"{describe(meta[key])}, expected {describe(value)}")
    return state


def describe(value: Any, limit: int = 80) -> str:
    """``repr(value)`` on one line, cut to ``limit`` characters (a checkpoint can hold anything,
    and a message must stay one readable line)."""
    if isinstance(value, torch.Tensor):
        text = f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    else:
        try:
            text = repr(value)
        except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the real problem
            text = f"a {type(value).__name__}"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def same_value(a: Any, b: Any) -> bool:
    """Equality of plain records, where NaN equals NaN and a bool is not the int 1 or 0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return (type(a) is type(b) and len(a) == len(b)
                and all(same_value(x, y) for x, y in zip(a, b)))
    try:
        return bool(type(a) is type(b) and a == b) or (
            _is_number(a) and _is_number(b) and a == b)
    except Exception:  # noqa: BLE001 - tensors and odd objects: not a plain equal value
        return False


def first_difference(expected: Any, found: Any, field: str) -> str | None:
    """Where the plain record ``found`` (a checkpoint's) first differs from ``expected`` (this
    run's), as ``"field.sub: checkpoint has X, expected Y"``; None when they are the same."""
    if isinstance(expected, dict) and isinstance(found, dict):
        for key, value in expected.items():
            sub = f"{field}.{key}"
            if key not in found:
                return f"{sub}: missing from the checkpoint, expected {describe(value)}"
            diff = first_difference(value, found[key], sub)
            if diff is not None:
                return diff
        for key in found:
            if key not in expected:
                return (f"{field}.{key}: the checkpoint has {describe(found[key])}, this run "
                        "has no such entry")
        return None
    if same_value(found, expected):
        return None
    return f"{field}: checkpoint has {describe(found)}, expected {describe(expected)}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _reason(err: BaseException) -> str:
    """The one line of a ``torch.load`` error that says what is wrong with the file."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(_TORCH_BOILERPLATE)]
    if not useful:
        return lines[0] if lines else type(err).__name__
    # torch appends advice sentences ("This is an internal miniz error. If you are seeing...").
    return useful[0].split(". ")[0].rstrip(".")
