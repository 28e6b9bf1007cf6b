"""The command line: one-line errors for every command, the variants listing (with the path
each preset runs on), and the README and packaging in step with it."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lstmkit import cli
from lstmkit.cells import PRESETS
from lstmkit.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def test_variants_lists_every_preset(monkeypatch, capsys):
    from lstmkit import engine

    monkeypatch.setattr(engine, "available", lambda: True)  # no build just to list
    assert main(["variants"]) == 0
    out = capsys.readouterr().out
    for name in PRESETS:
        assert name in out


def test_readme_documents_every_preset():
    text = README.read_text()
    for name in PRESETS:
        assert f"`{name}`" in text, name


def test_unknown_command_exits_2(capsys):
    with pytest.raises(SystemExit) as err:
        main(["frobnicate"])
    assert err.value.code == 2


# -- one-line errors ------------------------------------------------------------------------


def _one_line_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """The stderr of an argv that argparse refuses: exit 2, exactly one line, no usage block."""
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert "usage:" not in captured.err
    return lines[0]


@pytest.mark.parametrize("argv, option", [
    (["reproduce", "exp1", "--trials", "x"], "--trials"),
    (["demo", "--T", "1e11"], "--T"),
    (["bench", "--repeats", "x"], "--repeats"),
    (["gradflow", "--length", "1e11"], "--length"),
    (["inspect", "--hidden", "x"], "--hidden"),
])
def test_type_errors_are_one_line_per_command(capsys, argv: list[str], option: str) -> None:
    line = _one_line_error(capsys, argv)
    got = argv[argv.index(option) + 1]
    assert line == (f"lstmkit {argv[0]}: error: {option}: expected an integer, got {got!r} "
                    f"(see lstmkit {argv[0]} --help)")


def test_float_choice_and_missing_value_errors_are_one_line(capsys) -> None:
    assert _one_line_error(capsys, ["gradflow", "--forget-bias", "big"]).startswith(
        "lstmkit gradflow: error: --forget-bias: expected a number, got 'big'")
    line = _one_line_error(capsys, ["reproduce", "exp1", "--setting", "fast"])
    assert line.startswith("lstmkit reproduce: error: --setting: expected one of paper, modern, "
                           "modern-fb1, got 'fast'")
    assert _one_line_error(capsys, ["inspect", "--steps"]).startswith(
        "lstmkit inspect: error: --steps: expected a value")
    line = _one_line_error(capsys, ["frobnicate"])
    assert line.startswith("lstmkit: error: command: expected one of variants, ")
    assert "got 'frobnicate'" in line


def test_unknown_option_names_its_command(capsys) -> None:
    line = _one_line_error(capsys, ["report", "somewhere", "--bogus"])
    assert line == ("lstmkit report: error: unrecognized arguments: --bogus "
                    "(see lstmkit report --help)")


def _failing_report(monkeypatch, err: BaseException) -> None:
    from lstmkit.analysis import report

    def fail(_args: object) -> int:
        raise err

    monkeypatch.setattr(report, "_command", fail)


@pytest.mark.parametrize("err", [
    MemoryError(),
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate "
                 "memory: you tried to allocate 800000000000 bytes"),
])
def test_out_of_memory_is_one_line(monkeypatch, capsys, err: BaseException) -> None:
    _failing_report(monkeypatch, err)
    assert main(["report", "anywhere"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["lstmkit report: error: out of memory; rerun with smaller sizes "
                     "(see lstmkit report --help)"]


def test_other_runtime_errors_still_raise(monkeypatch) -> None:
    # A bug is not bad input: it keeps its traceback.
    _failing_report(monkeypatch, RuntimeError("shape mismatch"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        main(["report", "anywhere"])


def test_missing_matplotlib_is_one_line(tmp_path: Path) -> None:
    # A fresh interpreter in which matplotlib cannot be imported, as after a bare install of a
    # broken environment; the library and the parser must not need it.
    script = (
        "import sys\n"
        "sys.modules['matplotlib'] = None\n"
        "import lstmkit\n"
        "from lstmkit import cli\n"
        "cli.build_parser()\n"
        "assert sys.modules['matplotlib'] is None, 'imported eagerly'\n"
        "status = cli.main(['gradflow', '--cell', 'rnn', '--length', '3', '--hidden', '2', "
        f"'--batch', '1', '--seeds', '1', '--out', {str(tmp_path / 'gf')!r}])\n"
        "sys.exit(status)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "lstmkit gradflow: error: this command draws figures with matplotlib, which is not "
        "installed; install it with: pip install matplotlib"]
    assert not (tmp_path / "gf").exists()  # refused before any work


def test_matplotlib_is_a_dependency() -> None:
    text = (README.parent / "pyproject.toml").read_text()
    deps = text.split("dependencies = [", 1)[1].split("]", 1)[0]
    assert '"matplotlib' in deps


# -- variants: the path each preset takes ---------------------------------------------------


def _variant_rows(out: str) -> dict[str, tuple[str, str]]:
    """``name -> (family, path)`` from ``lstmkit variants``' table."""
    rows = {}
    for line in out.splitlines():
        name = line.split("  ", 1)[0].strip()
        if name in PRESETS:
            rest = line[len(name):].split("  ")
            cols = [c.strip() for c in rest if c.strip()]
            rows[name] = (cols[0], cols[1])
    return rows


@pytest.mark.parametrize("engine_ok", [True, False])
def test_variants_says_which_path_each_preset_takes(monkeypatch, capsys, engine_ok: bool) -> None:
    from lstmkit import dispatch, engine

    monkeypatch.delenv("LSTMKIT_BACKEND", raising=False)
    monkeypatch.setattr(engine, "available", lambda: engine_ok)
    monkeypatch.setattr(engine, "build_error", lambda: "no C++ compiler found")
    # The CPU decides whether a plain LSTM trains faster on the engine (its AVX-512 step kernel).
    monkeypatch.setattr(dispatch, "step_kernel", lambda dtype=None: False)
    assert main(["variants"]) == 0
    out = capsys.readouterr().out
    rows = _variant_rows(out)
    assert set(rows) == set(PRESETS)
    compiled = "fused engine" if engine_ok else "reference"
    # The first path column is a training step: the engine for GRU and RNN where it runs.
    trains = "fused engine" if engine_ok else "torch kernel"
    expected = {"lstm": "torch kernel", "np": "torch kernel", "gru": trains,
                "rnn": trains, "rnn_relu": trains, "layernorm": compiled,
                "layernorm_gru": compiled, "peephole": compiled, "lstm1997": compiled,
                "gru_cho": compiled}
    for name, path in expected.items():
        assert rows[name] == (PRESETS[name].family, path), name
    if engine_ok:
        assert "The fused engine is built and runs on this machine." in out
    else:
        assert "not available on this machine (no C++ compiler found)" in out


def test_variants_paths_follow_the_layers_dispatch(monkeypatch) -> None:
    """The listing's rule agrees with what a layer decides (torch kernel or not) and with the
    engine's own coverage (engine or reference)."""
    from lstmkit import engine, layers

    monkeypatch.delenv("LSTMKIT_BACKEND", raising=False)
    for name, spec in PRESETS.items():
        cls = {"lstm": layers.LSTM, "gru": layers.GRU, "rnn": layers.RNN}[spec.family]
        layer = cls(2, 2 * spec.block_size, variant=name)
        assert cli.auto_path(spec) == layer.route().path, name
        if layer.route().path != "native":
            assert layer.route().path == ("engine" if engine.supports(spec) else "reference")


def test_variants_honours_lstmkit_backend(monkeypatch, capsys) -> None:
    from lstmkit import engine

    monkeypatch.setattr(engine, "available", lambda: True)
    monkeypatch.setenv("LSTMKIT_BACKEND", "reference")
    assert main(["variants"]) == 0
    out = capsys.readouterr().out
    assert {path for _, path in _variant_rows(out).values()} == {"reference"}
    assert "LSTMKIT_BACKEND=reference is set" in out
    monkeypatch.setenv("LSTMKIT_BACKEND", "fast")
    assert main(["variants"]) == 2
    assert "LSTMKIT_BACKEND: expected one of" in capsys.readouterr().err


# -- bench: a quick comparison in the package, the engine's benchmark record outside it ------

BENCHMARKS = README.parent / "benchmarks"
_ISSUE_NUMBER = re.compile(r"\bissues?\s*#?\d|#\d", re.IGNORECASE)


def _docstrings(module: object) -> list[str]:
    import inspect

    return [module.__doc__ or ""] + [
        obj.__doc__ or "" for obj in vars(module).values()
        if (inspect.isfunction(obj) or inspect.isclass(obj))
        and obj.__module__ == module.__name__]


@pytest.fixture
def harness(monkeypatch):
    """The repository's engine benchmark (``benchmarks/``), importable as its script sees it."""
    import importlib

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return {name: importlib.import_module(name)
            for name in ("bench_engine", "engine_floor", "engine_record")}


def test_bench_compares_variants_with_nn_lstm_on_the_given_shapes(capsys) -> None:
    import torch

    threads = torch.get_num_threads()
    assert main(["bench", "--quick", "--shapes", "4x2x3x4", "--variants",
                 "lstm,layernorm,torch.nn.GRU", "--threads", "1"]) == 0
    assert torch.get_num_threads() == threads  # the caller's setting is restored
    out = capsys.readouterr().out
    rows = {line.split()[4]: line for line in out.splitlines()
            if line.startswith("(4, 2, 3, 4)")}
    assert set(rows) == {"lstm", "layernorm", "torch.nn.GRU"}
    from lstmkit import dispatch

    # A plain LSTM's training step takes what the dispatch rule picks on this CPU.
    lstm_path = dispatch.route(PRESETS["lstm"], "auto", None, grad=True).path
    assert {"native": "torch kernel", "engine": "fused engine"}[lstm_path] in rows["lstm"]
    assert "fused engine" in rows["layernorm"]
    assert "torch module" in rows["torch.nn.GRU"]
    for line in rows.values():
        ratios = [float(v) for v in line.split()[-6:]]
        assert all(r > 0 for r in ratios), line
    assert "floor" not in out and "target" not in out.lower()


def test_the_engine_benchmark_writes_its_record(harness, tmp_path, capsys) -> None:
    import torch

    from lstmkit import engine

    if not engine.available():
        reason = engine.build_error() or ""
        if shutil.which(os.environ.get("CXX", "c++").split()[0]) is None or "ninja" in reason:
            pytest.skip(f"no toolchain for the fused engine: {reason}")
        pytest.fail(f"the fused engine failed to build: {reason}")
    threads = torch.get_num_threads()
    out = tmp_path / "bench.md"
    try:
        status = harness["bench_engine"].main(["--quick", "--shapes", "4x2x3x4", "--variants",
                                               "peephole,gru_cho", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert status == 0
    text = out.read_text()
    for needle in ("peephole", "gru_cho", "| (4, 2, 3, 4) | peephole |", "floor", "Targets",
                   "`benchmarks/bench_engine.py --quick --shapes 4x2x3x4"):
        assert needle in text, needle
    assert "peephole" in capsys.readouterr().out
    json_rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert {r["variant"] for r in json_rows} == {"peephole", "gru_cho"}
    for row in json_rows:
        for key in ("train_ratio", "infer_ratio", "train_floor_ratio", "infer_floor_ratio"):
            assert row[key] > 0, key


def test_bench_cpu_clock_times_this_process_only(monkeypatch) -> None:
    """The CPU clock reads the process's CPU time: a sleep (no CPU) costs nothing on it, while
    the wall clock sees it; an unknown clock is refused by name."""
    import time

    import pytest

    from lstmkit import bench

    fns = {"sleep": lambda: time.sleep(0.02), "none": lambda: None}
    wall = bench.alternate(fns, 2, 0, "wall")
    cpu = bench.alternate(fns, 2, 0, "cpu")
    assert min(wall["sleep"]) >= 0.02
    assert max(cpu["sleep"]) < 0.01
    with pytest.raises(ValueError, match="clock: expected one of"):
        bench.alternate(fns, 1, 0, "sundial")


def test_bench_texts_have_no_issue_numbers(harness, capsys) -> None:
    from lstmkit import bench

    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    with pytest.raises(SystemExit):
        harness["bench_engine"].main(["--help"])
    texts = [capsys.readouterr().out] + _docstrings(bench)
    for module in harness.values():
        texts += _docstrings(module)
    record = harness["engine_record"]
    row = record.Row(shape=(10, 2, 3, 4), variant="peephole", path="engine", train_ms=2.0,
                     ref_train_ms=1.0,
                     train_ratio=2.0, infer_ms=1.0, ref_infer_ms=1.0, infer_ratio=1.0,
                     train_floor_ms=1.0, infer_floor_ms=1.0, train_floor_ratio=2.0,
                     infer_floor_ratio=1.0, peak_bytes=10, ref_peak_bytes=10, gate_bytes=0,
                     floor_flops=1.0)
    texts.append(record.format_report([row], record.summarise([row]), "header"))
    for text in texts:
        assert not _ISSUE_NUMBER.search(text), text[:300]


def test_bench_refuses_a_shape_too_large_for_the_memory(monkeypatch, capsys) -> None:
    from lstmkit.analysis import _limits

    monkeypatch.setattr(_limits, "physical_memory", lambda: 8 * 2**30)
    assert main(["bench", "--shapes", "100000x100000x10x10", "--variants", "lstm1997"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "8.0 GiB" in err[0] and "smaller --shapes" in err[0]


def test_demo_refuses_a_huge_sequence_length_up_front(capsys) -> None:
    assert main(["demo", "--T", "100000000000", "--quiet"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing started
    assert captured.err.splitlines() == [
        "lstmkit demo: error: T: expected an int from 1 to 10,000, got 100000000000 (the paper's "
        "time lags are at most 1,000 steps)"]
