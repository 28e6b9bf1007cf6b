"""float64 gradcheck of every preset through the layer, and the 1997 truncated gradient."""

import pytest
import torch

import lstmkit
from lstmkit.cells import PRESETS

CLASSES = {"lstm": lstmkit.LSTM, "gru": lstmkit.GRU, "rnn": lstmkit.RNN}


def _layer(spec, **kwargs):
    torch.manual_seed(0)
    return CLASSES[spec.family](2, 4, dtype=torch.float64, variant=spec, backend="reference",
                                **kwargs)


def _gradcheck(layer, lengths=None):
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in layer.named_parameters()]
    x = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)

    def fn(x, *ps):
        out = torch.func.functional_call(layer, dict(zip(names, ps)), (x,), {"lengths": lengths})
        hidden = out[1] if isinstance(out[1], tuple) else (out[1],)
        return (out[0], *hidden)

    # fast_mode compares the analytical and numerical Jacobians along random directions instead
    # of entry by entry: still a failing check for a wrong gradient, at a fraction of the cost.
    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("name", list(PRESETS))
def test_gradcheck_every_preset(name):
    spec = PRESETS[name]
    if spec.truncated_gradient:
        # The truncated gradient is deliberately not the true gradient; check the full one.
        spec = spec.replace(truncated_gradient=False)
    kwargs = {"bidirectional": True, "num_layers": 2}
    if spec.family == "lstm":
        kwargs["proj_size"] = 3 if name in ("lstm", "peephole", "lstm1997") else 0
    _gradcheck(_layer(spec, **kwargs), lengths=torch.tensor([4, 2, 3]))


def test_truncated_gradient_flows_back_only_through_the_cell_state():
    spec = PRESETS["lstm1997"]
    x = torch.randn(6, 2, 2, dtype=torch.float64)

    def input_grads(spec, zero_recurrence=False):
        layer = _layer(spec)
        if zero_recurrence:
            with torch.no_grad():
                layer.weight_hh_l0.zero_()
                layer.weight_gh_l0.zero_()
        xi = x.clone().requires_grad_()
        out, _ = layer(xi)
        out[-1].sum().backward()
        return xi.grad

    truncated, full = input_grads(spec), input_grads(spec.replace(truncated_gradient=False))
    # Same step: identical, since truncation only cuts paths that go back in time.
    torch.testing.assert_close(truncated[-1], full[-1])
    assert not torch.allclose(truncated[:-1], full[:-1])
    assert truncated[0].abs().sum() > 0  # the carousel still carries error to step 0
    # Without recurrent net-input weights the cell state is the only path: both agree.
    torch.testing.assert_close(
        input_grads(spec, zero_recurrence=True),
        input_grads(spec.replace(truncated_gradient=False), zero_recurrence=True),
    )
