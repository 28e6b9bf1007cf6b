"""The fused C++ engine against the reference: values, every gradient, the named seam, dispatch.

The engine must reproduce :func:`lstmkit.cells.reference.scan` to 1e-5 in float32 (outputs,
final states, per-step cell states and the gradients of the input, the initial states and every
parameter) for every preset and random shapes, lengths, directions and projections; float64
gradcheck confirms the hand-written backward is the true gradient. A missing compiler or a
failing build must degrade to the reference path with exactly one warning.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lstmkit
from _engine import NoFallback, engine_or_skip
from lstmkit import engine
from lstmkit.cells import PRESETS, CellSpec, lstm1997

CLASSES = {"lstm": lstmkit.LSTM, "gru": lstmkit.GRU, "rnn": lstmkit.RNN}
ROOT = Path(__file__).resolve().parents[1]

# Presets plus specs no preset exercises: memory blocks, no output gate, no hidden recurrence,
# gate recurrence into the gates only with blocks, the full (untruncated) 1997 gradient, layer
# norm with peepholes and blocks, with coupled gates, and with no recurrence but the cell's.
SPECS: dict[str, CellSpec] = {
    **PRESETS,
    "lstm1997_blocks": lstm1997(block_size=2),
    "lstm1997_no_o_full": lstm1997(block_size=3, output_gate=False, truncated_gradient=False),
    "lstm1997_carousel": lstm1997(block_size=2, hidden_recurrence=False, bias_units="gates"),
    "fgr_blocks": PRESETS["fgr"].replace(block_size=2),
    "layernorm_vanilla_blocks": PRESETS["vanilla"].replace(layer_norm=True, block_size=2),
    "layernorm_cifg": PRESETS["cifg"].replace(layer_norm=True),
    "layernorm_carousel": lstm1997(block_size=2, hidden_recurrence=False, gate_recurrence="none",
                                   truncated_gradient=False).replace(layer_norm=True),
}


def _pair(spec: CellSpec, n_in: int, hidden: int, dtype: torch.dtype, **kwargs):
    cls = CLASSES[spec.family]
    # What the engine does not cover goes through auto, which routes it to the reference.
    backend = "engine" if engine.supports(spec) else "auto"
    eng = cls(n_in, hidden, dtype=dtype, variant=spec, backend=backend, **kwargs)
    ref = cls(n_in, hidden, dtype=dtype, variant=spec, backend="reference", **kwargs)
    with torch.no_grad():  # away from torch's init so that saturated gates do not hide errors
        for p in eng.parameters():
            p.uniform_(-0.8, 0.8)
    ref.load_state_dict(eng.state_dict())
    return eng, ref


def _flatten(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for item in out for t in _flatten(item)]


def _run(layer, x, hx, lengths, return_cells):
    x = x.detach().clone().requires_grad_()
    hx = None if hx is None else tuple(h.detach().clone().requires_grad_() for h in hx)
    arg = hx if hx is None or layer.spec.family == "lstm" else hx[0]
    kwargs = {"lengths": lengths}
    if return_cells:
        kwargs["return_cell_states"] = True
    outs = _flatten(layer(x, arg, **kwargs))
    return outs, x, hx


def _grad(t: torch.Tensor) -> torch.Tensor:
    """A gradient where None (the truncated 1997 gradient cuts the path) means zeros."""
    return torch.zeros_like(t) if t.grad is None else t.grad


def _compare(spec: CellSpec, *, steps, batch, n_in, hidden, layers, bidirectional, proj,
             lengths, with_hx, return_cells, bias, seed):
    torch.manual_seed(seed)
    kwargs = {"num_layers": layers, "bidirectional": bidirectional, "bias": bias}
    if proj:
        kwargs["proj_size"] = proj
    eng, ref = _pair(spec, n_in, hidden, torch.float32, **kwargs)
    x = torch.randn(steps, batch, n_in)
    hx = None
    if with_hx:
        rows = layers * (2 if bidirectional else 1)
        hx = tuple(torch.randn(rows, batch, n) * 0.5 for n in eng.state_sizes)
    with pytest.MonkeyPatch.context() as mp:
        if engine.supports(spec):
            mp.setattr(engine, "reference", NoFallback)
        e_out, e_x, e_hx = _run(eng, x, hx, lengths, return_cells)
    r_out, r_x, r_hx = _run(ref, x, hx, lengths, return_cells)
    assert len(e_out) == len(r_out)
    for e, r in zip(e_out, r_out):
        torch.testing.assert_close(e, r, atol=1e-5, rtol=1e-5)
    # Layer norm's gradients at these small widths and large weights amplify float32 rounding:
    # the reference's own gradients are off its float64 values by up to 2e-5. The float64
    # gradcheck below holds the engine's to the true gradient.
    tol = 1e-4 if spec.layer_norm else 1e-5
    grads = [torch.randn_like(r) for r in r_out]
    torch.autograd.backward(e_out, grads)
    torch.autograd.backward(r_out, grads)
    torch.testing.assert_close(e_x.grad, r_x.grad, atol=tol, rtol=tol)
    if hx is not None:
        for e, r in zip(e_hx, r_hx):
            torch.testing.assert_close(_grad(e), _grad(r), atol=tol, rtol=tol)
    for (name, pe), (_, pr) in zip(eng.named_parameters(), ref.named_parameters()):
        assert pe.grad is not None, name
        torch.testing.assert_close(pe.grad, pr.grad, atol=tol, rtol=tol,
                                   msg=lambda m, name=name: f"{name}: {m}")


@st.composite
def _cases(draw):
    name = draw(st.sampled_from(sorted(SPECS)))
    spec = SPECS[name]
    steps = draw(st.integers(1, 7))
    batch = draw(st.integers(1, 4))
    # Layer norm over fewer than three units, or of W_hh h with one projected output, is close
    # to singular (see test_engine_row_split_matches_reference).
    low = 3 if spec.layer_norm else 1
    hidden = spec.block_size * draw(st.integers(low, low + 2))
    lstm = spec.family == "lstm"
    proj = draw(st.integers(0, hidden - 1)) if lstm and hidden > 1 else 0
    if spec.layer_norm and proj == 1:
        proj = 0
    lengths = None
    if draw(st.booleans()):
        lengths = torch.tensor(draw(st.lists(st.integers(1, steps), min_size=batch,
                                             max_size=batch)))
    return dict(
        spec=spec, steps=steps, batch=batch, n_in=draw(st.integers(1, 4)), hidden=hidden,
        layers=draw(st.integers(1, 2)), bidirectional=draw(st.booleans()), proj=proj,
        lengths=lengths, with_hx=draw(st.booleans()),
        return_cells=lstm and draw(st.booleans()), bias=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


@pytest.fixture
def row_split():
    """Two threads, and the row split (each thread runs every step for its own batch rows) from
    one row per thread on, so that even the small batches drawn below take the split path."""
    engine_or_skip()
    ext = engine._build.load()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    previous = ext.set_split(1)
    yield ext
    ext.set_split(previous)
    torch.set_num_threads(threads)


@settings(max_examples=150, deadline=None,  # the fixture holds for every example alike
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(case=_cases())
def test_engine_matches_reference_float32(case, row_split):
    assert row_split.split_parts(case["batch"]) == min(2, case["batch"])
    _compare(**case)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_engine_row_split_matches_reference(name, row_split):
    """Default split threshold, a batch that splits unevenly (5 + 4 rows), lengths that end on
    both sides of the split, both directions, projections and per-step cell states."""
    row_split.set_split(4)
    assert row_split.split_parts(9) == 2 and row_split.split_parts(7) == 1
    spec = SPECS[name]
    lstm = spec.family == "lstm"
    # A norm over two units, or of a rank-one product W_hh h (one projected output), is close to
    # singular: float32 rounding would decide the comparison, not the equations.
    width = 4 if spec.layer_norm else 2
    proj = (2 if spec.layer_norm else 1) if lstm and spec.block_size == 1 else 0
    _compare(spec, steps=6, batch=9, n_in=3, hidden=width * spec.block_size, layers=2,
             bidirectional=True, proj=proj,
             lengths=torch.tensor([6, 1, 4, 6, 2, 3, 6, 5, 1]), with_hx=True,
             return_cells=lstm, bias=True, seed=4)


def test_small_batch_shares_the_step_gemm_by_columns(row_split):
    """Below the row split (4 rows, 2 threads) the packed kernel's panels are shared among the
    threads: a width that makes the step GEMM big enough to fork must still match."""
    row_split.set_split(4)
    assert row_split.split_parts(4) == 1
    torch.manual_seed(6)
    # torch's initialisation: at this width _pair's larger weights would saturate every gate,
    # and float32 rounding of 256-term sums would dominate the comparison
    eng = lstmkit.LSTM(5, 256, variant="peephole", backend="engine", bidirectional=True)
    ref = lstmkit.LSTM(5, 256, variant="peephole", backend="reference", bidirectional=True)
    ref.load_state_dict(eng.state_dict())
    x = torch.randn(3, 4, 5)
    lengths = [3, 1, 2, 3]
    outs = [layer(x, lengths=lengths)[0] for layer in (eng, ref)]
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(outs[1])
    for out in outs:
        out.backward(grad)
    for (name, pe), (_, pr) in zip(eng.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(pe.grad, pr.grad, atol=1e-5, rtol=1e-5,
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_row_split_and_column_split_agree(row_split):
    """The split changes only which thread computes a row: results agree to rounding."""
    torch.manual_seed(0)
    layer = lstmkit.LSTM(8, 24, variant="peephole", backend="engine", num_layers=2)
    x = torch.randn(20, 16, 8)
    results = []
    for min_rows in (0, 4):
        row_split.set_split(min_rows)
        assert row_split.split_parts(16) == (1 if min_rows == 0 else 2)
        layer.zero_grad()
        out = layer(x)[0]
        out.square().sum().backward()
        results.append([out.detach(), *(p.grad.clone() for p in layer.parameters())])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_engine_matches_reference_every_spec(name):
    """Each spec at least once with lengths, both directions, two layers and hx given."""
    engine_or_skip()
    spec = SPECS[name]
    hidden = 2 * spec.block_size * (2 if spec.block_size == 1 else 1)
    _compare(spec, steps=5, batch=3, n_in=3, hidden=hidden, layers=2, bidirectional=True,
             proj=1 if spec.family == "lstm" and name in ("peephole", "lstm1997") else 0,
             lengths=torch.tensor([5, 2, 4]), with_hx=True,
             return_cells=spec.family == "lstm", bias=True, seed=1)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_engine_gradcheck_float64(name):
    engine_or_skip()
    spec = SPECS[name]
    if spec.truncated_gradient:  # deliberately not the true gradient
        spec = spec.replace(truncated_gradient=False)
    kwargs = {"bidirectional": True}
    if spec.family == "lstm" and name in ("lstm", "vanilla", "lstm1997_blocks", "layernorm"):
        kwargs["proj_size"] = 1
    hidden = 2 * spec.block_size
    torch.manual_seed(0)
    layer, _ = _pair(spec, 2, hidden, torch.float64, **kwargs)
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in layer.named_parameters()]
    x = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    states = [torch.randn(2, 3, n, dtype=torch.float64, requires_grad=True)
              for n in layer.state_sizes]
    lengths = torch.tensor([4, 2, 3])

    def fn(x, *rest):
        hx = tuple(rest[: len(states)])
        hx = hx if spec.family == "lstm" else hx[0]
        ps = rest[len(states) :]
        out = torch.func.functional_call(layer, dict(zip(names, ps)), (x, hx),
                                         {"lengths": lengths})
        return tuple(_flatten(out))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine, "reference", NoFallback)
        assert torch.autograd.gradcheck(fn, (x, *states, *params), eps=1e-6, atol=1e-5)


def test_engine_gemm_fallback_matches_blas():
    """The ATen GEMM path (used where the BLAS symbols are missing) gives the same numbers."""
    engine_or_skip()
    ext = engine._build.load()
    case = dict(spec=PRESETS["vanilla"], steps=4, batch=3, n_in=2, hidden=4, layers=1,
                bidirectional=True, proj=0, lengths=torch.tensor([4, 1, 3]), with_hx=True,
                return_cells=False, bias=True, seed=3)
    try:
        ext.set_blas(False)
        _compare(**case)
        _compare(**{**case, "spec": PRESETS["gru_cho"]})
    finally:
        ext.set_blas(True)


def test_engine_blas_steps_match_packed_kernel_steps():
    """Where the packed per-step kernel and one-pass row run (float; AVX-512 or AVX2), the BLAS
    steps and the general row (other machines, float64) must give the same numbers."""
    engine_or_skip()
    ext = engine._build.load()
    case = dict(steps=5, batch=10, n_in=3, hidden=8, layers=2, bidirectional=True, proj=0,
                lengths=torch.tensor([5, 1, 3, 5, 2, 4, 5, 1, 5, 3]), with_hx=True,
                return_cells=False, bias=True, seed=5)
    previous = ext.set_kernel(False)
    try:
        for name in ("peephole", "cifg", "vanilla", "lstm", "nfg", "cifg_peephole", "gru_cho",
                     "rnn", "layernorm", "layernorm_gru"):
            _compare(spec=PRESETS[name], **case)
    finally:
        ext.set_kernel(previous)
    assert ext.set_kernel(previous) == previous


def test_packed_kernel_gemm_matches_torch():
    """The per-step GEMM as the floor runs it: odd sizes exercise partial panels and row blocks."""
    engine_or_skip()
    ext = engine._build.load()
    torch.manual_seed(0)
    for m, n, k in ((1, 1, 1), (13, 33, 7), (29, 70, 64), (40, 16, 3)):
        a, w = torch.randn(m, k), torch.randn(n, k)
        for trans in (True, False):
            wm = w if trans else w.t().contiguous()
            c = torch.randn(m, n)
            expected = c + 3 * (a @ w.t())
            ext.gemm_loop(a, wm, c, 3, True, trans)
            torch.testing.assert_close(c, expected, atol=1e-4, rtol=1e-5)
            c0 = torch.randn(m, n)
            ext.gemm_loop(a, wm, c0, 2, False, trans)
            torch.testing.assert_close(c0, a @ w.t(), atol=1e-4, rtol=1e-5)
            # per-step slices, as the engine's forward (C) and backward (A) steps use them
            cs = torch.randn(3, m, n)
            expected = cs + a @ w.t()
            ext.gemm_loop(a, wm, cs, 3, True, trans)
            torch.testing.assert_close(cs, expected, atol=1e-4, rtol=1e-5)
            a_s, c1 = torch.randn(3, m, k), torch.zeros(m, n)
            ext.gemm_loop(a_s, wm, c1, 3, True, trans)
            torch.testing.assert_close(c1, (a_s @ w.t()).sum(0), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("name", ["peephole", "cifg", "lstm", "nig", "lstm1997", "fgr",
                                  "layernorm"])
@pytest.mark.parametrize("proj", [0, 2])
def test_no_grad_forward_without_lengths_matches_reference(name, proj, row_split):
    """Inference with no lengths reads each step's h straight from the output (no state ring):
    values and final states must still be the reference's, in both directions, split or not."""
    torch.manual_seed(1)
    row_split.set_split(4)
    eng, ref = _pair(PRESETS[name], 3, 5, torch.float32, num_layers=2, bidirectional=True,
                     proj_size=proj)
    for batch in (3, 9):
        x = torch.randn(6, batch, 3)
        with torch.no_grad():
            for e, r in zip(_flatten(eng(x)), _flatten(ref(x))):
                torch.testing.assert_close(e, r, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_engine_propagates_nan_like_the_reference(name):
    """NaN in one sequence's input is NaN in that sequence's output (as in torch), never clamped
    into a number by the fast paths, and never leaks into the other sequences of the batch."""
    engine_or_skip()
    spec = PRESETS[name]
    eng, ref = _pair(spec, 3, 5, torch.float32)
    x = torch.randn(4, 9, 3)
    x[1, 2, 0] = float("nan")
    with torch.no_grad():
        y_eng, y_ref = eng(x)[0], ref(x)[0]
    assert torch.equal(torch.isnan(y_eng), torch.isnan(y_ref))
    assert torch.isnan(y_eng[1, 2]).all()
    others = [b for b in range(9) if b != 2]
    assert torch.isfinite(y_eng[:, others]).all()


def test_engine_entry_points_reject_wrong_operands():
    """A direct call with a missing or mis-sized operand stops with a message, not a crash."""
    engine_or_skip()
    from lstmkit.engine import _function as F

    ext = engine._build.load()
    spec = PRESETS["lstm1997"]  # carries gate activations: a0 is required
    lay = spec.layout(4)
    cfg = F.engine_config(ext, spec, lay, False)
    xg, none = torch.randn(3, 2, lay.rows), torch.empty(0)
    wcat = torch.randn(lay.rows, 4 + 8)
    h0, c0, a0 = torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, 8)
    lengths = torch.empty(0, dtype=torch.int64)

    def call(cfg=cfg, wcat=wcat, h0=h0, a0=a0, lengths=lengths):
        return ext.lstm_forward(cfg=cfg, xg=xg.clone(), wcat=wcat, peep=none, w_hr=none, h0=h0,
                                c0=c0, a0=a0, lengths=lengths, save=False, return_cells=False)

    assert set(call()) >= {"y", "h", "c", "a"}
    bad = {"the initial gate activations": {"a0": a0.new_empty(0)},
           "h0": {"h0": torch.zeros(2, 3)},
           "the recurrent weight": {"wcat": wcat[:, :5].contiguous()},
           "lengths": {"lengths": torch.tensor([3])}}
    for name, change in bad.items():
        with pytest.raises(RuntimeError, match=name):
            call(**change)
    gru_cfg = F.engine_config(ext, PRESETS["gru_cho"], PRESETS["gru_cho"].layout(4), False)
    with pytest.raises(RuntimeError, match="weight_hh"):
        ext.gru_forward(cfg=gru_cfg, xg=torch.randn(3, 2, 12), w_hh=torch.randn(11, 4),
                        b_hn=none, h0=h0, lengths=lengths, save=False)
    # an output width other than H without a projection, a zero block size, a block that does
    # not fit the row
    fields = {n: getattr(cfg, n) for n in ext.LstmConfig.fields}
    for change in ({"out": 3}, {"block_size": 0}, {"off_o": lay.rows}):
        with pytest.raises(RuntimeError, match="LstmConfig"):
            call(cfg=ext.LstmConfig(**{**fields, **change}))
    with pytest.raises(RuntimeError, match="gemm_loop operands do not agree"):
        ext.gemm_loop(torch.randn(8, 64), torch.randn(32, 16), torch.zeros(8, 32), 1, True, True)


def test_layer_norm_runs_on_the_engine_and_its_operands_are_checked():
    """auto takes the engine for both layer-norm cells; a direct kernel call without the norm's
    gains stops with a message naming them."""
    engine_or_skip()
    from lstmkit.engine import _function as F

    for cls, name in ((lstmkit.LSTM, "layernorm"), (lstmkit.GRU, "layernorm_gru")):
        layer = cls(2, 3, variant=name)
        assert layer.route(torch.randn(3, 2, 2)).path == "engine"
        with torch.no_grad():
            assert layer.route(torch.randn(3, 2, 2)).path == "engine"
    ext = engine._build.load()
    none, lengths = torch.empty(0), torch.empty(0, dtype=torch.int64)
    spec = PRESETS["layernorm"]
    lay = spec.layout(4)
    cfg = F.engine_config(ext, spec, lay, False)
    with pytest.raises(RuntimeError, match="ln_hh_weight"):
        ext.lstm_forward(cfg=cfg, xg=torch.randn(3, 2, lay.rows), wcat=torch.randn(lay.rows, 4),
                         peep=none, w_hr=none, h0=torch.zeros(2, 4), c0=torch.zeros(2, 4),
                         a0=none, lengths=lengths, save=False, return_cells=False)
    with pytest.raises(RuntimeError, match="ln_c_bias"):
        ext.lstm_forward(cfg=cfg, xg=torch.randn(3, 2, lay.rows), wcat=torch.randn(lay.rows, 4),
                         peep=none, w_hr=none, h0=torch.zeros(2, 4), c0=torch.zeros(2, 4),
                         a0=none, lengths=lengths, save=False, return_cells=False,
                         ln_hh=torch.ones(lay.rows), ln_cw=torch.ones(4))
    spec = PRESETS["layernorm_gru"]
    gru_cfg = F.engine_config(ext, spec, spec.layout(4), False)
    with pytest.raises(RuntimeError, match="ln_hh_weight"):
        ext.gru_forward(cfg=gru_cfg, xg=torch.randn(3, 2, 12), w_hh=torch.randn(12, 4),
                        b_hn=none, h0=torch.zeros(2, 4), lengths=lengths, save=False)


def test_engine_config_is_named_and_complete():
    """Every field by name: a missing, unknown or misspelt one is refused at the seam."""
    engine_or_skip()
    from lstmkit.engine import _function as F

    ext = engine._build.load()
    spec = PRESETS["peephole"]
    cfg = F.engine_config(ext, spec, spec.layout(4), True)
    fields = {n: getattr(cfg, n) for n in ext.LstmConfig.fields}
    assert cfg.off_f == 4 and cfg.reverse and cfg.gate_activation == "sigmoid" and cfg.peephole
    with pytest.raises(TypeError, match="missing field 'off_o'"):
        ext.LstmConfig(**{k: v for k, v in fields.items() if k != "off_o"})
    with pytest.raises(TypeError, match="unknown field 'of_o'"):
        ext.LstmConfig(**fields, of_o=3)
    with pytest.raises(ValueError, match="unknown activation 'tanhh'"):
        ext.LstmConfig(**{**fields, "gate_activation": "tanhh"})
    for name in ("gru_cho", "rnn_relu"):
        spec = PRESETS[name]
        cfg = F.engine_config(ext, spec, spec.layout(4), False)
        assert cfg.input_activation == spec.input_activation


def test_scan_refuses_what_it_cannot_run_and_auto_takes_the_reference():
    spec = PRESETS["fgr"].replace(name="fgr_ln", layer_norm=True)
    assert not engine.supports(spec)
    assert all(engine.supports(s) for s in PRESETS.values())
    layer = lstmkit.LSTM(2, 3, variant="peephole", dtype=torch.float16, backend="reference")
    p = {k: v.detach() for k, v in layer.cell_params(0).items()}
    x = torch.randn(3, 2, 2, dtype=torch.float16)
    carry = (torch.zeros(2, 3, dtype=torch.float16),) * 2
    with pytest.raises(ValueError, match="the carry and parameters must have the input's"):
        engine.scan(PRESETS["peephole"], p, x.float(), carry, hidden_size=3)
    forced = lstmkit.LSTM(2, 3, variant=spec, backend="engine")
    with pytest.raises(ValueError, match="'engine' cannot run this call: .*layer normalisation"):
        forced(torch.randn(3, 2, 2))
    auto = lstmkit.LSTM(2, 3, variant=spec)
    route = auto.route(torch.randn(3, 2, 2))
    assert route.path == "reference" and "layer normalisation" in route.reason
    assert auto(torch.randn(3, 2, 2))[0].shape == (3, 2, 3)


def test_half_precision_runs_on_the_engine_in_float32():
    engine_or_skip()
    layer = lstmkit.LSTM(2, 3, variant="peephole", dtype=torch.float16, backend="engine")
    wide = lstmkit.LSTM(2, 3, variant="peephole", backend="reference")
    wide.load_state_dict({k: v.float() for k, v in layer.state_dict().items()})
    x = torch.randn(3, 2, 2, dtype=torch.float16)
    assert layer.route(x).path == "engine"
    y = layer(x)[0]
    assert y.dtype == torch.float16
    torch.testing.assert_close(y.float(), wide(x.float())[0], atol=2e-3, rtol=2e-3)


def test_route_names_the_path_and_why():
    engine_or_skip()
    with torch.no_grad():  # inference without lengths: torch's kernel on every CPU
        assert lstmkit.LSTM(2, 3).route().path == "native"
    route = lstmkit.LSTM(2, 3, variant="cifg").route()
    assert route.path == "engine" and "no kernel for variant 'cifg'" in route.reason
    assert lstmkit.LSTM(2, 3).route(return_cell_states=True).path == "engine"
    assert lstmkit.GRU(2, 3, backend="reference").route().path == "reference"
    with pytest.raises(ValueError, match="'native' cannot run this call"):
        lstmkit.LSTM(2, 3, variant="cifg", backend="native")


def test_no_grad_forward_matches_training_forward():
    """The inference path (no saved tensors) computes the same values as the training one."""
    engine_or_skip()
    torch.manual_seed(0)
    for name in ("vanilla", "cifg", "lstm1997", "gru_cho", "rnn_relu", "layernorm",
                 "layernorm_gru"):
        layer = CLASSES[PRESETS[name].family](3, 5, variant=name, backend="engine",
                                              bidirectional=True)
        x = torch.randn(6, 2, 3)
        with torch.no_grad():
            fast = _flatten(layer(x, lengths=[6, 3]))
        slow = _flatten(layer(x, lengths=[6, 3]))
        assert slow[0].requires_grad
        for a, b in zip(fast, slow):
            torch.testing.assert_close(a, b.detach(), atol=1e-6, rtol=1e-6)


_FALLBACK_SCRIPT = textwrap.dedent(
    """
    import json, os, warnings
    import torch
    import lstmkit
    from lstmkit.engine import _build

    report = {}
    for label, env in (("compiler", {"CXX": "/nonexistent/bogus-c++"}),
                       ("flags", {"LSTMKIT_ENGINE_CFLAGS": "--lstmkit-no-such-flag"})):
        os.environ.pop("CXX", None)
        os.environ.update(env)
        _build._reset_for_tests()
        torch.manual_seed(0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            layer = lstmkit.LSTM(3, 4, variant="peephole")
            ref = lstmkit.LSTM(3, 4, variant="peephole", backend="reference")
            ref.load_state_dict(layer.state_dict())
            x = torch.randn(5, 2, 3)
            out = layer(x)[0]
            out.sum().backward()
            layer(x)
            gru = lstmkit.GRU(3, 4, variant="gru_cho")(x)[0]
        same = torch.equal(out, ref(x)[0])
        msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        report[label] = {"warnings": msgs, "same": same, "grad": layer.weight_ih_l0.grad
                         is not None, "gru": list(gru.shape), "error": _build.error()}
    print(json.dumps(report))
    """
)


def test_build_failure_falls_back_with_one_warning(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "LSTMKIT_BACKEND"}
    env["LSTMKIT_CACHE_DIR"] = str(tmp_path / "cache")  # no cached build to find
    proc = subprocess.run([sys.executable, "-c", _FALLBACK_SCRIPT], capture_output=True,
                          text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    for label in ("compiler", "flags"):
        case = report[label]
        assert len(case["warnings"]) == 1, case["warnings"]
        assert "fused CPU engine could not be built" in case["warnings"][0]
        assert case["error"], label
        assert case["same"] and case["grad"] and case["gru"] == [5, 2, 4]
    assert "bogus" in report["compiler"]["error"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_tensors_run_the_reference_path():
    """auto takes the reference on CUDA; a forced engine says it runs on the CPU only."""
    torch.manual_seed(0)
    eng, ref = _pair(PRESETS["peephole"], 3, 4, torch.float32)
    auto = lstmkit.LSTM(3, 4, variant="peephole").cuda()
    auto.load_state_dict(ref.state_dict())
    ref = ref.cuda()
    x = torch.randn(5, 2, 3, device="cuda")
    assert auto.route(x).path == "reference"
    torch.testing.assert_close(auto(x)[0], ref(x)[0])
    with pytest.raises(ValueError, match="runs on the CPU"):
        eng.cuda()(x)


def test_bench_script_runs_the_same_benchmark(tmp_path):
    engine_or_skip()
    out = tmp_path / "script.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_engine.py"), "--quick", "--shapes",
         "3x2x2x4", "--variants", "cifg", "--no-memory", "--out", str(out)],
        capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| (3, 2, 2, 4) | cifg |" in out.read_text()
