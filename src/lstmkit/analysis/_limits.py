"""Up-front checks shared by the analysis commands: size limits, a memory estimate, matplotlib.

A size argument far too large for the machine should be refused before any work starts, with the
limit and the reason, rather than end minutes later in a ``MemoryError`` (or the kernel killing
the process). The memory estimates are deliberately rough upper bounds measured on the reference
path; they only have to tell "fits" from "hopeless".
"""

from __future__ import annotations

import os


def check_int(name: str, value: object, low: int, high: int | None = None, why: str = "") -> int:
    """``value`` if it is an int in ``low..high``; else ``ValueError`` naming ``name``.

    ``why`` (shown only when ``value`` is above ``high``) says what the upper limit protects.
    """
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    if value < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {value}")
    if high is not None and value > high:
        reason = f" ({why})" if why else ""
        raise ValueError(f"{name}: expected an int from {low} to {high:,}, got {value}{reason}")
    return value


def physical_memory() -> int | None:
    """The machine's physical memory in bytes, or None where the platform does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return None


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:,.1f} GiB"


def check_memory(nbytes: float, what: str, hint: str, *, share: float = 0.8) -> None:
    """``ValueError`` when ``nbytes`` (an estimate) exceeds ``share`` of the physical memory.

    ``what`` says what takes the memory, ``hint`` which arguments to lower. Where the platform
    does not report its memory nothing is checked.
    """
    total = physical_memory()
    if total is None or nbytes <= share * total:
        return
    raise ValueError(f"{what} would need about {_gib(nbytes)}, more than this machine's "
                     f"{_gib(total)} of memory allows; {hint}")


def require_matplotlib() -> None:
    """Import matplotlib now, so a command that draws fails before its work, not after it.

    A missing matplotlib raises ``ModuleNotFoundError`` (name ``"matplotlib"``), which the
    command line turns into one line naming the install command.
    """
    import matplotlib  # noqa: F401


__all__ = ["check_int", "check_memory", "physical_memory", "require_matplotlib"]
