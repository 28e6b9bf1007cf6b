"""``backend="auto"`` takes the fastest correct path per call: the dispatch's rule for the cells
torch has a kernel for (training steps, inference, lengths, the engine's step kernel), what a
layer tells the dispatch about its call, and ``lstmkit variants``' columns. No timing here: the
measurements behind the rule are ``benchmarks/bench_default_path.py``'s."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lstmkit
from _engine import engine_or_skip
from lstmkit import dispatch, engine
from lstmkit.cells import PRESETS
from lstmkit.cli import main

TORCH_CELLS = [name for name, spec in PRESETS.items() if spec.torch_native]
X = torch.randn(5, 3, 2)


def _route(name: str, *, grad: bool, lengths: bool, x: torch.Tensor | None = X) -> dispatch.Route:
    return dispatch.route(PRESETS[name], "auto", x, lengths=lengths, grad=grad)


@pytest.fixture
def kernel(monkeypatch):
    """Set whether the engine's packed AVX-512 step kernel is in use (it depends on the CPU)."""
    def set_kernel(value: bool) -> None:
        monkeypatch.setattr(dispatch, "step_kernel", lambda dtype=torch.float32: value)
    return set_kernel


def test_rule_covers_every_kind_of_call():
    assert {"lstm", "np", "gru", "rnn", "rnn_relu"} == set(TORCH_CELLS)
    for family, grad, lengths, has_kernel in itertools.product(
            ("lstm", "gru", "rnn"), (True, False), (True, False), (True, False)):
        choice = dispatch.RULE[(family, grad, lengths, has_kernel)]
        assert choice.path in ("native", "engine") and choice.reason


@pytest.mark.parametrize("has_kernel", [False, True])
def test_training_with_lengths_runs_the_engine(kernel, has_kernel):
    """torch's kernel takes lengths as a packed sequence, several times slower in training."""
    engine_or_skip()
    kernel(has_kernel)
    for name in TORCH_CELLS:
        route = _route(name, grad=True, lengths=True)
        assert route.path == "engine", (name, route)
        assert "packed sequence" in route.reason


@pytest.mark.parametrize("has_kernel", [False, True])
def test_gru_and_rnn_training_steps_run_the_engine(kernel, has_kernel):
    engine_or_skip()
    kernel(has_kernel)
    for name in ("gru", "rnn", "rnn_relu"):
        assert _route(name, grad=True, lengths=False).path == "engine", name


def test_lstm_training_follows_the_engines_step_kernel(kernel):
    """With its packed step kernel the engine is the faster one; without, torch's kernel."""
    engine_or_skip()
    for name in ("lstm", "np"):
        kernel(True)
        assert _route(name, grad=True, lengths=False).path == "engine"
        kernel(False)
        route = _route(name, grad=True, lengths=False)
        assert route.path == "native" and "packed step kernel" in route.reason


def test_lstm_inference_keeps_torchs_kernel_without_building_the_engine(monkeypatch):
    """A plain LSTM's inference is decided without the engine: no build, no wait for one."""
    def refuse(*args, **kwargs):
        raise AssertionError("the dispatch asked about the engine's build")

    monkeypatch.setattr(engine, "available", refuse)
    monkeypatch.setattr(dispatch, "step_kernel", refuse)
    for x in (X, None):
        assert _route("lstm", grad=False, lengths=False, x=x).path == "native"


def test_grad_defaults_to_torchs_grad_mode(monkeypatch):
    engine_or_skip()
    seen = []

    def spy(spec, *, grad, lengths, dtype=torch.float32):
        seen.append(grad)
        return dispatch.Choice("native", "spy")

    monkeypatch.setattr(dispatch, "auto_choice", spy)
    dispatch.route(PRESETS["gru"], "auto", X)
    with torch.no_grad():
        dispatch.route(PRESETS["gru"], "auto", X)
    with torch.inference_mode():
        dispatch.route(PRESETS["gru"], "auto", X)
    dispatch.route(PRESETS["gru"], "auto", X, grad=False)
    assert seen == [True, False, False, False]


def test_an_engine_that_could_not_be_built_leaves_torchs_kernel(monkeypatch, kernel):
    monkeypatch.setattr(engine, "available", lambda: False)
    monkeypatch.setattr(engine, "build_error", lambda: "no C++ compiler found")
    kernel(False)
    for name in TORCH_CELLS:
        route = _route(name, grad=True, lengths=True)
        assert route.path == "native", name
        assert "could not be built (no C++ compiler found)" in route.reason
    assert _route("peephole", grad=True, lengths=True).path == "reference"


def test_calls_the_engine_cannot_run_keep_torchs_kernel():
    """Another device (here ``meta``) is torch's to run, as before; the reason names it."""
    x = torch.empty(5, 3, 2, device="meta")
    for name in TORCH_CELLS:
        for grad, lengths in itertools.product((True, False), (True, False)):
            route = _route(name, grad=grad, lengths=lengths, x=x)
            assert route.path == "native" and "meta" in route.reason, (name, route)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_keeps_torchs_kernel(dtype):
    """The rule is measured in float32; in half precision torch's kernel computes the dtype
    itself, the engine in float32 on cast copies."""
    x = torch.randn(5, 3, 2, dtype=dtype)
    for name in TORCH_CELLS:
        for grad, lengths in itertools.product((True, False), (True, False)):
            route = _route(name, grad=grad, lengths=lengths, x=x)
            assert route.path == "native" and str(dtype) in route.reason, (name, route)
    assert _route("peephole", grad=True, lengths=False, x=x).path != "native"


def test_empty_sequences_and_forced_backends_are_unchanged():
    engine_or_skip()
    empty = torch.randn(0, 3, 2)
    assert _route("gru", grad=True, lengths=True, x=empty).path == "reference"
    for name in TORCH_CELLS:
        spec = PRESETS[name]
        for lengths in (True, False):
            assert dispatch.route(spec, "native", X, lengths=lengths).path == "native"
            assert dispatch.route(spec, "engine", X, lengths=lengths).path == "engine"
            assert dispatch.route(spec, "reference", X, lengths=lengths).path == "reference"


def test_the_rule_is_read_inside_torch_compile():
    """torch.compile traces the dispatch; the step-kernel question must not call into the
    extension under the trace (a graph break, an error with ``fullgraph=True``)."""
    engine_or_skip()

    def step(x):
        route = dispatch.route(PRESETS["lstm"], "auto", x, grad=True, lengths=False)
        return x + (1.0 if route.path == "engine" else 2.0)

    x = torch.randn(5, 3, 2)
    want = step(x)
    torch.testing.assert_close(torch.compile(step, fullgraph=True, backend="eager")(x), want)


@pytest.mark.parametrize("cls", [lstmkit.LSTM, lstmkit.GRU, lstmkit.RNN])
def test_a_trace_does_not_depend_on_the_grad_mode(cls):
    """torch.jit.trace checks its graph by tracing again without gradients: the path of a
    torch cell must not change with the grad mode there."""
    engine_or_skip()
    layer = cls(2, 4)
    x = torch.randn(5, 3, 2)
    traced = torch.jit.trace(layer, (x,))  # check_trace=True: raises if the graphs differ
    assert "aten::" + cls.__name__.lower().replace("rnn", "rnn_tanh") in str(traced.graph)
    torch.testing.assert_close(traced(x)[0], layer(x)[0])


def test_auto_choice_refuses_a_cell_torch_has_no_kernel_for():
    with pytest.raises(ValueError, match="spec: expected a cell torch has a kernel for, got "
                                         "'peephole'"):
        dispatch.auto_choice(PRESETS["peephole"], grad=True, lengths=False)


# -- what a layer tells the dispatch ---------------------------------------------------------


@pytest.mark.parametrize("cls", [lstmkit.LSTM, lstmkit.GRU, lstmkit.RNN])
def test_layers_tell_the_dispatch_about_lengths_and_training(monkeypatch, cls):
    """The layer passes whether the call has lengths (or a PackedSequence) and whether it
    records gradients, so that the path follows the call."""
    calls = []
    real = dispatch.route

    def spy(*args, **kwargs):
        calls.append((kwargs.get("lengths", False), kwargs.get("grad")))
        return real(*args, **kwargs)

    monkeypatch.setattr(dispatch, "route", spy)
    layer = cls(2, 4)
    x = torch.randn(5, 3, 2)
    layer(x)
    layer(x, lengths=[5, 2, 4])
    with torch.no_grad():
        layer(x)
        layer(x, lengths=[5, 2, 4])
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, [5, 2, 4], enforce_sorted=False)
    layer(packed)
    layer.requires_grad_(False)
    layer(x)  # grad mode on, but nothing records a gradient: inference
    # (lengths, training step) per call; a frozen layer's call in grad mode is inference.
    assert calls == [(False, True), (True, True), (False, False), (True, False), (True, True),
                     (False, False)]


# -- lstmkit variants ------------------------------------------------------------------------


def _rows(out: str) -> dict[str, list[str]]:
    rows = {}
    for line in out.splitlines():
        cols = [c.strip() for c in line.split("  ") if c.strip()]
        if cols and cols[0] in PRESETS:
            rows[cols[0]] = cols[1:6]
    return rows


@pytest.mark.parametrize("has_kernel", [False, True])
def test_variants_shows_the_path_of_each_kind_of_call_and_why(monkeypatch, capsys, kernel,
                                                              has_kernel):
    engine_or_skip()
    monkeypatch.delenv("LSTMKIT_BACKEND", raising=False)
    kernel(has_kernel)
    assert main(["variants"]) == 0
    out = capsys.readouterr().out
    header = [c.strip() for c in out.splitlines()[0].split("  ") if c.strip()]
    assert header[:6] == ["variant", "family", "training", "inference", "training+lengths",
                          "inference+lengths"]
    rows = _rows(out)
    names = {"native": "torch kernel", "engine": "fused engine"}
    for name in TORCH_CELLS:
        spec = PRESETS[name]
        want = [names[dispatch.RULE[(spec.family, grad, lengths, has_kernel)].path]
                for grad, lengths in ((True, False), (False, False), (True, True),
                                      (False, True))]
        assert rows[name] == [spec.family, *want], name
        assert rows[name][3] == "fused engine"  # training with lengths
    assert rows["peephole"][1:] == ["fused engine"] * 4
    assert rows["layernorm"][1:] == rows["layernorm_gru"][1:] == ["fused engine"] * 4
    why = " ".join(out.split("\nWhy:\n", 1)[1].split())  # the lines are wrapped
    for (family, _, _, k), choice in dispatch.RULE.items():
        if k == has_kernel:
            assert choice.reason in why, (family, choice)
    assert "the fused engine computes them" in why


# -- the benchmark script --------------------------------------------------------------------


def test_default_path_benchmark_script_writes_its_record(tmp_path):
    """``benchmarks/bench_default_path.py`` runs end to end and names each call's path."""
    engine_or_skip()
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_default_path.py"
    out = tmp_path / "record.md"
    proc = subprocess.run([sys.executable, str(script), "--quick", "--shapes", "3x2x2x4",
                           "--families", "gru", "--paths", "--out", str(out)],
                          capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    assert "| gru | (3, 2, 2, 4) |" in text and "engine / torch" in text
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [r["mode"] for r in rows] == ["train", "infer"]
    train = rows[0]
    assert train["path"]["default"] == "engine"  # a GRU's training step
    assert set(train["ratio"]) == {"default", "default+len", "engine", "native", "engine+len",
                                   "native+len"}
    assert all(r > 0 for r in train["ratio"].values())
