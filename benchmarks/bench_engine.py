"""Benchmark of the fused CPU engine (issue 5): the same code as ``lstmkit bench``.

Run from the repository root, e.g. ``.venv/bin/python benchmarks/bench_engine.py --out
benchmarks/results.md``; every option of ``lstmkit bench`` applies (``--quick``, ``--shapes``,
``--variants``, ``--repeats``, ``--threads``, ``--no-memory``).
"""

from __future__ import annotations

import argparse
import sys

from lstmkit import bench


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_engine.py")
    sub = parser.add_subparsers(dest="command")
    bench.register(sub)
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
