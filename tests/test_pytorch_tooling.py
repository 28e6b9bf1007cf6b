"""Every preset under PyTorch's tools: torch.compile, torch.export, torch.jit.trace, autocast,
half-precision tensors, torch.func, DDP and higher-order gradients.

Each row of the README's "Works with" table is a test here (ONNX export has its own). The
engine's kernels are ``torch.library`` operators (``torch.ops.lstmkit.*``), checked with
``torch.library.opcheck``. Compiling with inductor is slow on small machines, so
``torch.compile`` runs with the ``aot_eager`` backend (Dynamo with ``fullgraph=True`` and
AOTAutograd, which run the operators' fake kernels and registered autograd; inductor only
generates code from the same graph), on every preset.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.distributed as dist

import lstmkit
from _engine import engine_or_skip
from lstmkit.cells import PRESETS
from lstmkit.engine import _ops
from lstmkit.engine._function import GRU_PARAMS, LSTM_PARAMS, cell_key

CLASSES = {"lstm": lstmkit.LSTM, "gru": lstmkit.GRU, "rnn": lstmkit.RNN}
ALL = list(PRESETS)
# torch's kernel (lstm, rnn), the engine with peepholes, with carried gates and the truncated
# gradient, with Cho's GRU and with layer norm.
COMPILED = ALL
ENGINE_CELLS = [n for n, s in PRESETS.items() if not s.torch_native]
I, H = 3, 4
TOL = {"atol": 1e-5, "rtol": 1e-5}


@pytest.fixture(autouse=True)
def _engine():
    engine_or_skip()


def _layer(name: str, dtype: torch.dtype = torch.float32, **kwargs):
    spec = PRESETS[name]
    torch.manual_seed(0)
    layer = CLASSES[spec.family](I, H, variant=name, dtype=dtype, **kwargs)
    with torch.no_grad():  # away from torch's init so that saturated gates do not hide errors
        for p in layer.parameters():
            p.uniform_(-0.8, 0.8)
    return layer


def _flatten(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for item in out for t in _flatten(item)]


def _step(module, layer, x: torch.Tensor, **kwargs) -> list[torch.Tensor]:
    """Outputs, then the gradients of the input and every parameter of one training step."""
    x = x.detach().clone().requires_grad_()
    outs = _flatten(module(x, **kwargs))
    loss = sum((o.float() * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs)
    grads = torch.autograd.grad(loss, [x, *layer.parameters()])
    return [o.detach() for o in outs] + list(grads)


def _assert_same(got: list[torch.Tensor], want: list[torch.Tensor], **tol) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        torch.testing.assert_close(g, w, **(tol or TOL), msg=lambda m, i=i: f"tensor {i}: {m}")


# -- torch.compile --------------------------------------------------------------------------

@pytest.fixture
def fresh_dynamo():
    # Each test compiles new layers: without a reset, their recompilations of the layers'
    # forward would add up to Dynamo's recompile limit.
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("name", COMPILED)
def test_compile_fullgraph_trains_like_eager(name, fresh_dynamo):
    """One graph (``fullgraph=True``) whose outputs and gradients equal eager's. For one cell
    per path (torch's kernel, the engine, the reference) a second call of another length and
    batch size, which recompiles once with symbolic sizes and is right too; for the engine a
    stack of two bidirectional layers."""
    deep = name == "peephole"
    layer = _layer(name, num_layers=2 if deep else 1, bidirectional=deep)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    for steps, batch in ((5, 2), (7, 3))[: 2 if name in ("lstm", "peephole", "layernorm") else 1]:
        x = torch.randn(steps, batch, I)
        _assert_same(_step(compiled, layer, x), _step(layer, layer, x))


def test_compile_and_export_the_reference_path(fresh_dynamo):
    """The reference path (here forced; no preset takes it on the CPU) is one operator per
    layer-direction too, compiled and exported, with a symbolic length and batch size."""
    layer = _layer("layernorm", backend="reference")
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    for steps, batch in ((5, 2), (7, 3)):
        x = torch.randn(steps, batch, I)
        _assert_same(_step(compiled, layer, x), _step(layer, layer, x))
    dims = {"input": {0: torch.export.Dim.AUTO, 1: torch.export.Dim.AUTO}}
    program = torch.export.export(layer, (torch.randn(5, 2, I),), dynamic_shapes=dims)
    ops = [str(n.target) for n in program.graph.nodes if str(n.target).startswith("lstmkit.")]
    assert ops == ["lstmkit.reference_scan.default"], ops
    x = torch.randn(9, 4, I)
    with torch.no_grad():
        _assert_same(_flatten(program.module()(x)), _flatten(layer(x)))


def test_compile_with_lengths_and_a_carried_state(fresh_dynamo):
    layer = _layer("lstm1997", bidirectional=True)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    x, lengths = torch.randn(6, 3, I), torch.tensor([6, 2, 4])
    hx = tuple(torch.randn(2, 3, n) for n in layer.state_sizes)
    _assert_same(_step(compiled, layer, x, hx=hx, lengths=lengths),
                 _step(layer, layer, x, hx=hx, lengths=lengths))


# -- torch.export ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL)
def test_export_matches_eager(name):
    """Every preset exports. Engine cells export as one
    operator per layer-direction with a symbolic length and batch size; cells torch has a
    kernel for export as torch's own RNN operators, which torch specialises to the example's
    length as it does for ``torch.nn.LSTM``."""
    dynamic = not PRESETS[name].torch_native
    layer = _layer(name, num_layers=2 if dynamic else 1)
    dims = {"input": {0: torch.export.Dim.AUTO, 1: torch.export.Dim.AUTO}}
    program = torch.export.export(layer, (torch.randn(5, 2, I),), dynamic_shapes=dims)
    shapes = [(5, 2)]
    if dynamic:
        ops = [n.target for n in program.graph.nodes if str(n.target).startswith("lstmkit.")]
        assert len(ops) == 2, ops
        shapes.append((9, 4))
    for steps, batch in shapes:
        x = torch.randn(steps, batch, I)
        with torch.no_grad():
            _assert_same(_flatten(program.module()(x)), _flatten(layer(x)))


# -- torch.jit.trace -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL)
def test_trace_is_right_on_other_lengths_and_batch_sizes(name):
    """The trace passes torch's own check and computes the right outputs and gradients for
    inputs of other shapes (no Python-side length or batch size is baked into the graph)."""
    layer = _layer(name, bidirectional=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(layer, (torch.randn(5, 2, I),))
    x = torch.randn(8, 3, I)
    _assert_same(_step(traced, layer, x), _step(layer, layer, x))


# -- autocast and half precision -----------------------------------------------------------

@pytest.mark.parametrize("name", ALL)
def test_autocast_bfloat16_runs_in_float32(name):
    """Under CPU autocast every preset runs (even where torch's own LSTM kernel has no bfloat16
    support) and computes in float32, on an autocast region's bfloat16 activations too."""
    layer = _layer(name)
    x = torch.randn(5, 2, I).bfloat16()

    def autocast_layer(x, **kwargs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return layer(x, **kwargs)

    got = _step(autocast_layer, layer, x)
    assert all(t.dtype == torch.float32 for t in got[:2])
    want = _step(layer, layer, x.float())
    dx = len(want) - len(list(layer.parameters())) - 1
    assert got[dx].dtype == torch.bfloat16  # the gradient of a bfloat16 input
    got[dx], want[dx] = got[dx].float(), want[dx].bfloat16().float()
    _assert_same(got, want)


@pytest.mark.parametrize("name", ["lstm", "peephole", "layernorm", "gru"])
def test_devices_without_autocast_run(name):
    """The autocast handling asks only devices that have autocast (``meta`` has none)."""
    spec = PRESETS[name]
    layer = CLASSES[spec.family](I, H, variant=name, device="meta")
    out = _flatten(layer(torch.empty(5, 2, I, device="meta")))
    assert out[0].shape == (5, 2, H) and out[0].device.type == "meta"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ALL)
def test_half_precision_tensors(name, dtype):
    """float16/bfloat16 layers run on the engine where a float32 layer would (computing in
    float32 and rounding the results), with the float32 layer's values to the dtype's
    precision; torch's kernel and the reference compute in the dtype itself."""
    layer = _layer(name, dtype=dtype)
    x = torch.randn(5, 2, I).to(dtype)
    if name in ENGINE_CELLS:
        assert layer.route(x).path == "engine"
    got = _step(layer, layer, x)
    assert all(t.dtype == dtype for t in got)
    wide = _layer(name)
    wide.load_state_dict({k: v.float() for k, v in layer.state_dict().items()})
    want = _step(wide, wide, x.float())
    eps = 2e-2 if dtype == torch.bfloat16 else 3e-3
    _assert_same([t.float() for t in got], want, atol=eps * 4, rtol=eps * 4)


# -- torch.func, DDP, higher-order gradients ------------------------------------------------

@pytest.mark.parametrize("name", ALL)
def test_torch_func_grad_equals_autograd(name):
    layer = _layer(name, dtype=torch.float64)
    params = {k: v.detach() for k, v in layer.named_parameters()}
    x = torch.randn(4, 2, I, dtype=torch.float64)

    def loss(p):
        return _flatten(torch.func.functional_call(layer, p, (x,)))[0].pow(2).sum()

    got = torch.func.grad(loss)(params)
    want = torch.autograd.grad(loss(dict(layer.named_parameters())), list(layer.parameters()))
    _assert_same(list(got.values()), list(want), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("name", ALL)
def test_double_backward_equals_the_reference(name):
    """A gradient penalty through the default path gives the reference equations' gradient."""
    results = []
    for backend in ("auto", "reference"):
        layer = _layer(name, dtype=torch.float64, backend=backend)
        torch.manual_seed(1)
        x = torch.randn(4, 2, I, dtype=torch.float64, requires_grad=True)
        out = layer(x)[0]
        (gx,) = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)
        grads = torch.autograd.grad(gx.pow(2).sum(), list(layer.parameters()))
        results.append(list(grads))
    _assert_same(results[0], results[1], atol=1e-9, rtol=1e-7)


@pytest.fixture
def one_process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("name", ["lstm", "peephole", "lstm1997", "gru_cho"])
def test_distributed_data_parallel_trains_like_the_layer(name, one_process_group):
    layer = _layer(name)
    ddp = torch.nn.parallel.DistributedDataParallel(_layer(name))
    x = torch.randn(5, 2, I)
    _assert_same(_step(ddp, ddp.module, x), _step(layer, layer, x))


# -- the operators themselves --------------------------------------------------------------

def _masks(out: int, hidden: int | None) -> tuple:
    """Recurrent dropout and zoneout masks of one call (steps 4, batch 2); no cell mask for
    ``hidden`` None (GRU, RNN)."""
    rand = lambda *shape: torch.rand(*shape, dtype=torch.float64)  # noqa: E731
    return (rand(2, out), *(() if hidden is None else (rand(4, 2, hidden),)), rand(4, 2, out))


def _lstm_args(name: str, proj: int = 0, masked: bool = False) -> tuple:
    layer = _layer(name, dtype=torch.float64, proj_size=proj)
    p = layer.cell_params(0)
    x = torch.randn(4, 2, I, dtype=torch.float64, requires_grad=True)
    carry = [torch.randn(2, n, dtype=torch.float64, requires_grad=True)
             for n in layer.state_sizes]
    a0 = carry[2] if len(carry) > 2 else None
    masks = _masks(proj or H, H) if masked else (None, None, None)
    return (x, carry[0], carry[1], a0, torch.tensor([4, 2]), *(p.get(n) for n in LSTM_PARAMS),
            *masks, cell_key(PRESETS[name]), H, proj, True, True, True)


@pytest.mark.parametrize(("op", "args"), [
    ("lstm_scan", lambda: _lstm_args("lstm1997")),
    ("lstm_scan", lambda: _lstm_args("peephole", proj=2)),
    ("gru_scan", lambda: _small_args("gru_cho")),
    ("lstm_scan", lambda: _lstm_args("layernorm", proj=2)),
    ("gru_scan", lambda: _small_args("layernorm_gru")),
    ("lstm_scan", lambda: _lstm_args("layernorm", proj=2, masked=True)),
    ("gru_scan", lambda: _small_args("layernorm_gru", masked=True)),
], ids=["lstm1997", "peephole-proj", "gru_cho", "layernorm-proj", "layernorm_gru",
        "layernorm-proj-masks", "layernorm_gru-masks"])
def test_operators_pass_opcheck(op, args):
    """Schema, fake kernel, autograd registration and AOT dispatch with symbolic sizes."""
    torch.library.opcheck(getattr(torch.ops.lstmkit, op).default, args())


def _small_args(name: str, masked: bool = False) -> tuple:
    layer = _layer(name, dtype=torch.float64)
    p = layer.cell_params(0)
    x = torch.randn(4, 2, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, H, dtype=torch.float64, requires_grad=True)
    masks = _masks(H, None) if masked else (None, None)
    return (x, h0, None, *(p.get(n) for n in GRU_PARAMS), *masks, cell_key(PRESETS[name]),
            H, False, True)


def test_reference_operator_passes_opcheck():
    layer = _layer("layernorm", dtype=torch.float64)
    p = {k: v for k, v in layer.cell_params(0).items()}
    x = torch.randn(4, 2, I, dtype=torch.float64, requires_grad=True)
    h0, c0 = (torch.randn(2, H, dtype=torch.float64, requires_grad=True) for _ in range(2))
    # The reference reads the hidden size from the carry's shape, where it must be a number:
    # "static" keeps every size concrete (a compiled call's sizes that change are the length
    # and the batch size; the compile tests cover those).
    torch.library.opcheck(_ops.reference_scan, (
        x, h0, c0, None, None, list(p.values()), ",".join(p), cell_key(PRESETS["layernorm"]),
        H, 0, False, True), test_utils=("test_schema", "test_autograd_registration",
                                        "test_faketensor", "test_aot_dispatch_static"))


def test_an_operator_run_without_saving_refuses_backward():
    args = list(_lstm_args("peephole"))
    args[-1] = False  # save
    out = torch.ops.lstmkit.lstm_scan(*args)
    with pytest.raises(RuntimeError, match="lstmkit::lstm_scan: called with save=False"):
        out[0].sum().backward()
