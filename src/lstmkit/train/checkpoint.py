"""Checkpoints that are written atomically and loaded without executing code.

A checkpoint is a ``dict`` of tensors, numbers, strings, lists and dicts saved with
``torch.save`` and read back with ``torch.load(weights_only=True)``, which refuses to unpickle
arbitrary objects. Writing goes to a temporary file in the same directory, is flushed to disk,
then renamed over the old file, so a process killed mid-write leaves the last good checkpoint in
place. Every checkpoint carries ``format`` and a ``meta`` dict (cell spec, sizes, task) that
:func:`load_checkpoint` can compare against what the caller expects.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

FORMAT = "lstmkit-checkpoint-v1"

# Paragraphs of torch's weights-only error that carry no reason. The first one also advises
# retrying with weights_only=False, which is exactly wrong for a file nobody vouches for.
_TORCH_BOILERPLATE = ("Weights only load failed", "Please file an issue",
                      "Check the documentation")


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, **state}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # Temporaries of writers that were killed mid-write: the rename above superseded them.
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def load_checkpoint(
    path: str | os.PathLike[str], expect_meta: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Read a checkpoint without executing code from it, checking it is one of ours.

    Raises ``ValueError`` naming the file when it is missing, truncated, corrupted, not an
    lstmkit checkpoint, or (with ``expect_meta``) made for another cell spec or shape.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile,
            ValueError, KeyError, AttributeError, TypeError) as err:
        raise ValueError(
            f"checkpoint {path}: not a readable lstmkit checkpoint (truncated, corrupted or "
            f"containing code-bearing objects): {_reason(err)}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(
            f"checkpoint {path}: not an lstmkit checkpoint (expected format {FORMAT!r}, "
            f"got {state.get('format') if isinstance(state, dict) else type(state).__name__!r})"
        )
    if expect_meta is not None:
        meta = state.get("meta", {})
        diffs = [
            f"{key}: checkpoint has {meta.get(key)!r}, expected {value!r}"
            for key, value in expect_meta.items()
            if meta.get(key) != value
        ]
        if diffs:
            raise ValueError(f"checkpoint {path}: made for another model; " + "; ".join(diffs))
    return state


def _reason(err: BaseException) -> str:
    """The one line of a ``torch.load`` error that says what is wrong with the file."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(_TORCH_BOILERPLATE)]
    if not useful:
        return lines[0] if lines else type(err).__name__
    # torch appends advice sentences ("This is an internal miniz error. If you are seeing...").
    return useful[0].split(". ")[0].rstrip(".")
