"""What the engine tests share: skipping only for a missing toolchain, and a stand-in that fails
any fallback to the reference."""

from __future__ import annotations

import os
import shutil

import pytest

from lstmkit import engine


def engine_or_skip() -> None:
    """Skip only where the engine cannot be built for a known, external reason."""
    if engine.available():
        return
    reason = engine.build_error() or ""
    if shutil.which(os.environ.get("CXX", "c++").split()[0]) is None or "ninja" in reason:
        pytest.skip(f"no toolchain for the fused engine: {reason}")
    pytest.fail(f"the fused engine failed to build: {reason}")


class NoFallback:
    """Stands in for the engine's reference module: any fallback inside ``engine.scan`` fails."""

    @staticmethod
    def scan(*args, **kwargs):
        raise AssertionError("engine.scan fell back to the reference path")
