"""Higher-order gradients through the fused engine, and ``torch.func`` over it.

A backward that builds a graph (``create_graph=True``) must give the derivatives of the
reference equations: float64 ``gradgradcheck`` for every preset the engine computes, and a
gradient penalty whose parameter gradients match the reference path's. ``torch.func``
transforms and forward-mode AD must give the reference's numbers too.
"""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwad

import lstmkit
from _engine import NoFallback, engine_or_skip
from lstmkit import engine
from lstmkit.cells import PRESETS

CLASSES = {"lstm": lstmkit.LSTM, "gru": lstmkit.GRU, "rnn": lstmkit.RNN}
ENGINE_PRESETS = [name for name, spec in PRESETS.items() if engine.supports(spec)]
T, B, I, H = 3, 2, 3, 4
F64 = torch.float64


@pytest.fixture
def no_fallback(monkeypatch):
    engine_or_skip()
    monkeypatch.setattr(engine, "reference", NoFallback)


def _layer(spec, backend: str, **kwargs):
    torch.manual_seed(0)
    layer = CLASSES[spec.family](I, H, dtype=F64, variant=spec, backend=backend, **kwargs)
    with torch.no_grad():  # away from torch's init so that saturated gates do not hide errors
        for p in layer.parameters():
            p.uniform_(-0.8, 0.8)
    return layer


def _flatten(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for item in out for t in _flatten(item)]


CASES = [(name, {}) for name in ENGINE_PRESETS] + [
    ("peephole", {"bidirectional": True, "lengths": True, "cells": True}),
    ("lstm", {"bidirectional": True, "lengths": True, "proj_size": 2}),
    ("fgr", {"lengths": True}),
    ("gru_cho", {"bidirectional": True, "lengths": True}),
    ("rnn", {"bidirectional": True, "lengths": True}),
]


@pytest.mark.parametrize(("name", "options"), CASES,
                         ids=[f"{n}-{'-'.join(o) or 'plain'}" for n, o in CASES])
def test_gradgradcheck_through_the_engine(name, options, no_fallback):
    spec = PRESETS[name]
    if spec.truncated_gradient:
        # Second derivatives of a truncated gradient are not those of any function (the cut
        # paths are held constant), so finite differences check the full gradient's.
        spec = spec.replace(truncated_gradient=False)
    kwargs = {k: v for k, v in options.items() if k in ("bidirectional", "proj_size")}
    layer = _layer(spec, "engine", **kwargs)
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in layer.named_parameters()]
    x = torch.randn(T, B, I, dtype=F64, requires_grad=True)
    rows = 2 if options.get("bidirectional") else 1
    states = [torch.randn(rows, B, n, dtype=F64, requires_grad=True)
              for n in layer.state_sizes]
    call = {"lengths": torch.tensor([3, 2])} if options.get("lengths") else {}
    if options.get("cells"):
        call["return_cell_states"] = True

    def fn(x, *rest):
        hx = tuple(rest[: len(states)])
        hx = hx if spec.family == "lstm" else hx[0]
        ps = rest[len(states) :]
        out = torch.func.functional_call(layer, dict(zip(names, ps)), (x, hx), call)
        return tuple(_flatten(out))

    inputs = (x, *states, *params)
    assert torch.autograd.gradgradcheck(fn, inputs, eps=1e-6, atol=1e-5, fast_mode=True)


def _penalty_grads(spec, backend: str, **kwargs) -> dict[str, torch.Tensor | None]:
    layer = _layer(spec, backend, **kwargs)
    torch.manual_seed(1)
    x = torch.randn(T, B, I, dtype=F64, requires_grad=True)
    y, _ = layer(x, lengths=torch.tensor([3, 2]))
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    (g.norm() - 1).pow(2).backward()
    return {n: p.grad for n, p in layer.named_parameters()}


@pytest.mark.parametrize("name", ["peephole", "lstm1997", "fgr", "gru", "gru_cho", "rnn"])
def test_gradient_penalty_matches_the_reference(name, no_fallback):
    spec = PRESETS[name]
    kwargs = {"bidirectional": True} if spec.family != "lstm" or name == "peephole" else {}
    eng = _penalty_grads(spec, "engine", **kwargs)
    ref = _penalty_grads(spec, "reference", **kwargs)
    assert eng.keys() == ref.keys()
    for n in ref:
        assert eng[n] is not None, n
        assert ref[n].abs().max() > 0, n  # the penalty reaches every parameter
        torch.testing.assert_close(eng[n], ref[n], atol=1e-6, rtol=1e-6, msg=n)


def test_first_order_backward_keeps_the_compiled_kernels(monkeypatch, no_fallback):
    """Without ``create_graph`` the backward never recomputes with the reference."""
    from lstmkit.engine import _function

    monkeypatch.setattr(_function, "reference", NoFallback)
    for name in ("peephole", "gru", "rnn"):
        layer = _layer(PRESETS[name], "engine")
        x = torch.randn(T, B, I, dtype=F64, requires_grad=True)
        layer(x)[0].sum().backward()
        assert x.grad is not None and layer.weight_hh_l0.grad is not None


def _pair(name: str, backend: str = "engine"):
    eng = _layer(PRESETS[name], backend)
    ref = _layer(PRESETS[name], "reference")
    params = {n: p.detach() for n, p in eng.named_parameters()}
    return eng, ref, params


@pytest.mark.parametrize("name", ["peephole", "gru_cho"])
def test_torch_func_transforms_give_the_reference_numbers(name):
    """Under ``auto`` a transform takes the reference; a forced engine says it cannot run."""
    engine_or_skip()
    forced, _, params = _pair(name)
    with pytest.raises(ValueError, match="'engine' cannot run this call: torch.func"):
        torch.func.grad(lambda p: torch.func.functional_call(forced, p, (torch.randn(
            T, B, I, dtype=F64),))[0].sum())(params)
    eng, ref, params = _pair(name, "auto")
    torch.manual_seed(2)
    x = torch.randn(T, B, I, dtype=F64)

    def loss(layer):
        return lambda p, x: torch.func.functional_call(layer, p, (x,))[0].pow(2).sum()

    got, want = torch.func.grad(loss(eng), argnums=(0, 1))(params, x), \
        torch.func.grad(loss(ref), argnums=(0, 1))(params, x)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    # Plain autograd on the reference agrees, so the transform did not just repeat a mistake.
    xr = x.clone().requires_grad_()
    ref(xr)[0].pow(2).sum().backward()
    torch.testing.assert_close(got[1], xr.grad, atol=1e-10, rtol=1e-10)

    def outputs(layer):
        return lambda xx: torch.func.functional_call(layer, params, (xx,))[0]

    batched = x.unsqueeze(2)  # vmap over the batch, one sequence at a time
    got_v = torch.func.vmap(outputs(eng), in_dims=1, out_dims=1)(batched)
    torch.testing.assert_close(got_v.squeeze(2), ref(x)[0].detach(), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(torch.func.jacrev(outputs(eng))(x),
                               torch.func.jacrev(outputs(ref))(x), atol=1e-10, rtol=1e-10)


def test_forward_mode_ad_gives_the_reference_tangent():
    engine_or_skip()
    eng, ref, _ = _pair("peephole", "auto")
    x, tangent = torch.randn(T, B, I, dtype=F64), torch.randn(T, B, I, dtype=F64)
    with fwad.dual_level():
        got = fwad.unpack_dual(eng(fwad.make_dual(x, tangent))[0]).tangent
        want = fwad.unpack_dual(ref(fwad.make_dual(x, tangent))[0]).tangent
        # Inside the dual level, tensors without a tangent still take the engine.
        assert "LSTMFunction" in type(eng(x)[0].grad_fn).__name__
    assert got is not None
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


def test_one_tensor_passed_as_two_states_gets_both_gradients(no_fallback):
    """``hx=(h, h)``: the recomputed backward must not count one use's gradient twice."""
    grads = {}
    for backend in ("engine", "reference"):
        layer = _layer(PRESETS["peephole"], backend)
        torch.manual_seed(3)
        x = torch.randn(T, B, I, dtype=F64)
        h = torch.randn(1, B, H, dtype=F64, requires_grad=True)
        y, _ = layer(x, (h, h))
        (g,) = torch.autograd.grad(y.pow(2).sum(), h, create_graph=True)
        (gg,) = torch.autograd.grad(g.pow(2).sum(), h)
        grads[backend] = (g.detach(), gg)
    torch.testing.assert_close(grads["engine"], grads["reference"], atol=1e-10, rtol=1e-10)
