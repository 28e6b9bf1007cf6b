"""Recurrent dropout, zoneout and weight drop: the engine against the reference, gradients, modes,
arguments and dispatch.

Masks are drawn once per call from torch's generator and given to both paths, so the fused engine
must reproduce the reference (outputs, final states, every gradient) for every preset it runs,
with lengths, both directions, projections and several layers; float64 gradcheck confirms the
hand-written backward with masks; eval mode is deterministic and zoneout there is its
expectation; weight drop leaves the parameters alone; torch's kernel never runs a regularised
call.
"""

from __future__ import annotations

import pytest
import torch

import lstmkit
from _engine import NoFallback, engine_or_skip
from lstmkit import engine, regularise
from lstmkit.cells import PRESETS, reference
from lstmkit.regularise import Masks

CLASSES = {"lstm": lstmkit.LSTM, "gru": lstmkit.GRU, "rnn": lstmkit.RNN}
ENGINE_PRESETS = sorted(n for n, s in PRESETS.items() if engine.supports(s))
# Every regulariser the engine computes, alone and together.
MASK_KINDS = {
    "recurrent": dict(recurrent_dropout=0.4),
    "zoneout": dict(zoneout_cell=0.3, zoneout_hidden=0.5),
    "zoneout_h": dict(zoneout_hidden=0.5),
    "zoneout_c": dict(zoneout_cell=0.5),
    "all": dict(recurrent_dropout=0.3, zoneout_cell=0.4, zoneout_hidden=0.3),
}


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _params(spec, n_in, hidden, proj, dtype):
    shapes = reference.param_shapes(spec, n_in, hidden, proj)
    return {k: (torch.rand(s, dtype=dtype) * 1.6 - 0.8).requires_grad_()
            for k, s in shapes.items()}


def _scan_case(name, kind, *, proj=0, lengths=False, reverse=False, training=True,
               return_cells=False, dtype=torch.float32, seed=0):
    """Engine and reference scans of one layer-direction with the same masks."""
    torch.manual_seed(seed)
    spec = PRESETS[name]
    steps, batch, n_in, hidden = 5, 3, 4, 6 if spec.block_size == 1 else 4
    proj = proj if spec.family == "lstm" else 0
    lay = spec.layout(hidden, proj)
    masks = regularise.draw(lay, steps, batch, torch.empty(0, dtype=dtype), training=training,
                            **MASK_KINDS[kind])
    p = _params(spec, n_in, hidden, proj, dtype)
    x = torch.randn(steps, batch, n_in, dtype=dtype, requires_grad=True)
    carry = tuple((torch.randn(batch, n, dtype=dtype) * 0.5).requires_grad_()
                  for n in lay.state_sizes)
    lens = torch.tensor([5, 2, 4]) if lengths else None
    kwargs = dict(hidden_size=hidden, lengths=lens, reverse=reverse, masks=masks,
                  return_cells=return_cells and spec.family == "lstm")
    return spec, p, x, carry, kwargs


def _flat(result):
    y, final, cells = result
    return [y, *final] + ([cells] if cells is not None else [])


def _compare(spec, p, x, carry, kwargs, atol=1e-5):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine, "reference", NoFallback)
        e_out = _flat(engine.scan(spec, p, x, carry, **kwargs))
    r_out = _flat(reference.scan(spec, p, x, carry, **kwargs))
    assert len(e_out) == len(r_out)
    for e, r in zip(e_out, r_out):
        torch.testing.assert_close(e, r, atol=atol, rtol=atol)
    grads = [torch.randn_like(r) for r in r_out]
    inputs = [x, *carry, *p.values()]
    e_g = torch.autograd.grad(e_out, inputs, grads, allow_unused=True)
    r_g = torch.autograd.grad(r_out, inputs, grads, allow_unused=True)
    names = ["x", *(f"carry{i}" for i in range(len(carry))), *p]
    for name, e, r in zip(names, e_g, r_g):
        e = torch.zeros_like(r) if e is None and r is not None else e
        r = torch.zeros_like(e) if r is None and e is not None else r
        if e is None:
            continue
        torch.testing.assert_close(e, r, atol=atol, rtol=atol,
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize(("name", "kind"), [
    (name, kind) for name in ENGINE_PRESETS for kind in sorted(MASK_KINDS)
    if kind != "zoneout_c" or PRESETS[name].family == "lstm"])  # GRU, RNN: no cell state
def test_engine_matches_reference_with_the_same_masks(name, kind):
    engine_or_skip()
    _compare(*_scan_case(name, kind))


@pytest.mark.parametrize("name", ["lstm", "peephole", "cifg", "vanilla", "fgr", "lstm1997",
                                  "layernorm", "gru", "gru_cho", "layernorm_gru", "rnn"])
@pytest.mark.parametrize("variant", ["lengths-reverse", "proj-lengths", "eval", "cells"])
def test_engine_matches_reference_lengths_directions_projection_eval(name, variant):
    engine_or_skip()
    opts = {"lengths-reverse": dict(lengths=True, reverse=True),
            "proj-lengths": dict(proj=2, lengths=True),
            "eval": dict(training=False, lengths=True),
            "cells": dict(return_cells=True, reverse=True)}[variant]
    # Layer norm's float32 gradients round further from the reference's (float64 agrees to
    # 1e-15 on these cases): the normalisation's sums cancel.
    _compare(*_scan_case(name, "all", seed=1, **opts), atol=5e-5 if "layernorm" in name else 1e-5)


@pytest.mark.parametrize("name", ["lstm", "peephole", "cifg", "layernorm", "gru", "gru_cho",
                                  "layernorm_gru", "rnn"])
def test_engine_gradcheck_with_masks(name):
    """The hand-written backward with masks; with layer norm, the norms of the masked recurrent
    product and of the cell update before zoneout."""
    engine_or_skip()
    spec, p, x, carry, kwargs = _scan_case(name, "all",
                                           proj=2 if name in ("peephole", "layernorm") else 0,
                                           lengths=True, dtype=torch.float64, seed=2)
    keys = list(p)

    def fn(x, *rest):
        n = len(carry)
        params = dict(zip(keys, rest[n:]))
        return tuple(_flat(engine.scan(spec, params, x, tuple(rest[:n]), **kwargs)))

    assert torch.autograd.gradcheck(fn, (x, *carry, *p.values()), atol=1e-6)


def _layers(family, name, **kwargs):
    cls = CLASSES[family]
    eng = cls(3, 6, variant=name, backend="engine", **kwargs)
    ref = cls(3, 6, variant=name, backend="reference", **kwargs)
    ref.load_state_dict(eng.state_dict())
    return eng, ref


@pytest.mark.parametrize("name", ["lstm", "peephole", "cifg", "layernorm", "gru",
                                  "layernorm_gru", "rnn"])
def test_layers_agree_multi_layer_bidirectional_with_weight_drop(name):
    engine_or_skip()
    family = PRESETS[name].family
    zone = (0.3, 0.2) if family == "lstm" else 0.2
    # Layer norm's 1/std amplifies float32 rounding beyond 1e-5 on gradients of size ~30.
    dtype = torch.float64 if PRESETS[name].layer_norm else torch.float32
    eng, ref = _layers(family, name, num_layers=2, bidirectional=True, recurrent_dropout=0.3,
                       zoneout=zone, weight_drop=0.4, dtype=dtype)
    x = torch.randn(6, 3, 3, dtype=dtype)
    lengths = torch.tensor([6, 3, 5])
    outs = []
    for layer in (eng, ref):
        torch.manual_seed(7)  # the same masks for both layers
        y, state = layer(x, lengths=lengths)
        states = state if isinstance(state, tuple) else (state,)
        (y.square().sum() + sum(s.sum() for s in states)).backward()
        outs.append((y, states))
    torch.testing.assert_close(outs[0][0], outs[1][0], atol=1e-5, rtol=1e-5)
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for (n, a), (_, b) in zip(eng.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-5, msg=n)


def test_zoneout_in_eval_is_the_expectation_and_eval_is_deterministic():
    for family, name in (("lstm", "peephole"), ("gru", "gru"), ("rnn", "rnn")):
        zone = (0.25, 0.6) if family == "lstm" else 0.6
        layer = CLASSES[family](3, 5, variant=name, zoneout=zone, recurrent_dropout=0.5,
                                weight_drop=0.5).eval()
        x = torch.randn(4, 2, 3)
        y1, _ = layer(x)
        y2, _ = layer(x)
        torch.testing.assert_close(y1, y2, rtol=0, atol=0)
        # By hand: h = p h(t-1) + (1 - p) h~(t), c likewise, with the plain reference step.
        p = layer.cell_params(0)
        spec = layer.spec
        carry = tuple(torch.zeros(2, n) for n in layer.state_sizes)
        xp = reference.input_projection(spec, p, x, 5)
        ys = []
        for t in range(4):
            new, _ = reference.step(spec, p, carry, xp[t])
            h = 0.6 * carry[0] + 0.4 * new[0]
            carry = (h, 0.25 * carry[1] + 0.75 * new[1]) if family == "lstm" else (h,)
            ys.append(h)
        torch.testing.assert_close(y1, torch.stack(ys), atol=1e-6, rtol=1e-6)


def test_training_masks_follow_the_seed_and_differ_between_calls():
    layer = lstmkit.LSTM(3, 8, recurrent_dropout=0.5, zoneout=0.3)
    x = torch.randn(5, 2, 3)
    torch.manual_seed(3)
    a, _ = layer(x)
    b, _ = layer(x)
    torch.manual_seed(3)
    c, _ = layer(x)
    torch.testing.assert_close(a, c, rtol=0, atol=0)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zoneout_masks_are_the_same_from_the_engine_and_from_torch(dtype):
    engine_or_skip()
    for shape, p in [((7, 5, 3), 0.1), ((40, 16, 33), 0.5), ((2, 1, 1), 0.0), ((9, 4, 8), 0.97)]:
        seeds = regularise._seeds()
        fast = regularise.hash_mask(shape, p, seeds, dtype=dtype, device="cpu")
        slow = regularise.hash_mask_torch(shape, p, seeds, dtype=dtype, device="cpu")
        assert fast.dtype == dtype and fast.shape == shape
        torch.testing.assert_close(fast, slow, rtol=0, atol=0)


def test_zoneout_masks_have_the_rate_and_no_pattern():
    lay = PRESETS["lstm"].layout(64)
    m = regularise.draw(lay, 200, 50, torch.empty(0), training=True, zoneout_cell=0.2,
                        zoneout_hidden=0.7)
    for mask, p in ((m.zone_cell, 0.2), (m.zone_hidden, 0.7)):
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        flat = mask.flatten()
        assert abs(flat.mean().item() - p) < 0.01
        # Neighbouring values (along units, rows and steps) are uncorrelated.
        for lag in (1, 64, 64 * 50):
            a, b = flat[:-lag], flat[lag:]
            assert abs((a * b).mean().item() - a.mean().item() * b.mean().item()) < 0.01
    # The cell and hidden masks come from different seeds: not the same pattern.
    assert not torch.equal(m.zone_cell < 0.5, m.zone_hidden < 0.5)


def test_recurrent_dropout_mask_is_one_per_sequence_and_inverted():
    lay = PRESETS["lstm"].layout(50)
    m = regularise.draw(lay, 7, 40, torch.empty(0), training=True, recurrent_dropout=0.25)
    assert m.recurrent.shape == (40, 50) and m.zone_hidden is None
    assert set(m.recurrent.unique().tolist()) <= {0.0, torch.tensor(1 / 0.75).item()}
    assert abs((m.recurrent == 0).float().mean().item() - 0.25) < 0.05
    assert regularise.draw(lay, 7, 40, torch.empty(0), training=False,
                           recurrent_dropout=0.25) == Masks()


def test_weight_drop_leaves_parameters_and_state_dict_and_trains():
    torch.manual_seed(0)
    layer = lstmkit.LSTM(3, 6, weight_drop=0.5, variant="peephole")
    names = list(layer.state_dict())
    plain = lstmkit.LSTM(3, 6, variant="peephole")
    assert names == list(plain.state_dict())
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    x = torch.randn(5, 2, 3)
    y, _ = layer(x)
    for k, v in layer.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    y.sum().backward()
    grad = layer.weight_hh_l0.grad
    # DropConnect: about half the recurrent weights get no gradient in this call.
    assert 0.2 < (grad == 0).float().mean().item() < 0.8
    assert (layer.weight_ih_l0.grad == 0).float().mean().item() < 0.1
    # And it trains: a few steps of SGD lower the loss of a fixed target.
    target = torch.randn(5, 2, 6) * 0.3
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = (layer(x)[0] - target).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) < sum(losses[:5])
    # In eval the weights are used as they are: the output is the plain layer's.
    plain.load_state_dict(layer.state_dict())
    layer.eval()
    torch.testing.assert_close(layer(x)[0], plain(x)[0])


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    (dict(recurrent_dropout=1.0), ValueError, r"recurrent_dropout: expected a float in \[0, 1\)"),
    (dict(recurrent_dropout=-0.1), ValueError, "recurrent_dropout: expected"),
    (dict(zoneout=1.5), ValueError, r"zoneout: expected a float in \[0, 1\), got 1.5"),
    (dict(zoneout=(0.1, 1.0)), ValueError, "zoneout: expected"),
    (dict(zoneout=(0.1, 0.2, 0.3)), ValueError, "zoneout: expected a float or a pair"),
    (dict(weight_drop="0.5"), TypeError, "weight_drop: expected a float in \\[0, 1\\), got str"),
    (dict(recurrent_dropout=True), TypeError, "recurrent_dropout: expected a float"),
    (dict(zoneout=[0.1, 0.2]), TypeError, "zoneout: expected a float"),
])
def test_bad_arguments_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        lstmkit.LSTM(3, 4, **kwargs)


def test_gru_and_rnn_take_one_zoneout_rate():
    with pytest.raises(TypeError, match="a GRU has no cell state"):
        lstmkit.GRU(3, 4, zoneout=(0.1, 0.2))
    with pytest.raises(TypeError, match="a RNN has no cell state"):
        lstmkit.RNN(3, 4, zoneout=(0.1, 0.2))
    assert lstmkit.GRU(3, 4, zoneout=0.1).regularisers.zoneout_cell == 0.0


def test_dispatch_never_sends_a_regularised_call_to_torch():
    x = torch.randn(5, 2, 3)
    for cls in (lstmkit.LSTM, lstmkit.GRU, lstmkit.RNN):
        plain = cls(3, 4).eval()
        with torch.no_grad():
            assert plain.route(x).path == "native"  # the rule's choice without regularisers
        for kwargs in (dict(recurrent_dropout=0.2), dict(weight_drop=0.2), dict(zoneout=0.2)):
            layer = cls(3, 4, **kwargs)
            route = layer.route(x, training=True)
            assert route.path != "native", (cls, kwargs)
            assert "torch's kernels cannot compute" in route.reason
            assert next(iter(kwargs)) in route.reason
        # In eval dropout and weight drop are off; zoneout's expectation still needs the engine.
        layer = cls(3, 4, recurrent_dropout=0.2, weight_drop=0.2).eval()
        with torch.no_grad():
            assert layer.route(x).path == "native"
        layer = cls(3, 4, zoneout=0.2).eval()
        with torch.no_grad():
            assert layer.route(x).path != "native"
    with pytest.raises(ValueError, match="backend: 'native' cannot run zoneout=0.2"):
        lstmkit.LSTM(3, 4, zoneout=0.2, backend="native")


def test_forced_native_refuses_a_regularised_call():
    from lstmkit import dispatch

    with pytest.raises(ValueError, match="torch's kernels cannot compute recurrent_dropout"):
        dispatch.route(PRESETS["lstm"], "native", None, regularised="recurrent_dropout=0.2")


def test_regularisers_show_in_repr_and_state_dict_names_do_not_change():
    layer = lstmkit.LSTM(3, 4, num_layers=2, zoneout=(0.1, 0.2), recurrent_dropout=0.3)
    assert "zoneout=(0.1, 0.2)" in repr(layer) and "recurrent_dropout=0.3" in repr(layer)
    assert list(layer.state_dict()) == list(torch.nn.LSTM(3, 4, num_layers=2).state_dict())
    layer.load_state_dict(torch.nn.LSTM(3, 4, num_layers=2).state_dict())


def test_compiled_training_step_with_regularisers():
    engine_or_skip()
    torch._dynamo.reset()
    layer = lstmkit.LSTM(3, 5, recurrent_dropout=0.3, zoneout=0.2, weight_drop=0.2,
                         backend="engine")
    compiled = torch.compile(layer, fullgraph=True)
    x = torch.randn(4, 2, 3)
    y, _ = compiled(x)
    y.sum().backward()
    assert layer.weight_hh_l0.grad is not None
    layer.eval()
    ref = lstmkit.LSTM(3, 5, zoneout=0.2, backend="reference").eval()
    ref.load_state_dict(layer.state_dict())
    torch.testing.assert_close(compiled(x)[0], ref(x)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["peephole", "gru"])
def test_engine_double_backward_with_masks(name):
    """A backward that builds a graph recomputes with the reference and the same masks."""
    engine_or_skip()
    spec, p, x, carry, kwargs = _scan_case(name, "all", lengths=True, dtype=torch.float64,
                                           seed=4)
    inputs = [x, *carry, *p.values()]
    found = []
    for scan in (engine.scan, reference.scan):
        y = scan(spec, p, x, carry, **kwargs)[0]
        (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
        found.append(torch.autograd.grad(gx.square().sum(), inputs, allow_unused=True))
    for e, r in zip(*found):
        if r is None:
            assert e is None or not e.any()
        else:
            torch.testing.assert_close(e, r)


def test_bench_times_each_regulariser_against_the_variant_without():
    engine_or_skip()
    from lstmkit import bench

    rows = bench.compare_regularisers((3, 2, 2, 4), ["cifg", "gru"], repeats=1, warmup=0)
    assert [(r.variant, r.regulariser) for r in rows] == [
        (v, name) for v in ("cifg", "gru") for name in bench.REGULARISERS]
    assert all(r.ratio > 0 and r.lstm_ratio > 0 for r in rows)
    assert "weight_drop" in bench.format_reg_table(rows)


def test_onnx_export_refuses_regularisers_in_force():
    from lstmkit import onnx_export

    x = torch.randn(3, 2, 3)
    layer = lstmkit.LSTM(3, 4, zoneout=0.1).eval()
    with pytest.raises(ValueError, match="the graph has no recurrent regularisers"):
        onnx_export.forward(layer, x)
    # Dropout and weight drop are off in eval: the graph is the plain layer's.
    plain = lstmkit.LSTM(3, 4, recurrent_dropout=0.3, weight_drop=0.3).eval()
    onnx_export.forward(plain, x)
