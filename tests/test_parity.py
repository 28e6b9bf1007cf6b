"""Numerical parity with torch.nn.LSTM / GRU / RNN, on both the native and reference paths."""

import itertools

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import lstmkit

TOL = dict(atol=1e-5, rtol=1e-5)
BACKENDS = ["auto", "reference"]


def _pair(torch_cls, kit_cls, backend, *args, **kwargs):
    torch.manual_seed(0)
    ref = torch_cls(*args, **kwargs)
    kit = kit_cls(*args, backend=backend, **kwargs)
    kit.load_state_dict(ref.state_dict())
    return ref, kit


def _flat(x):
    if isinstance(x, torch.nn.utils.rnn.PackedSequence):
        return [x.data]
    if isinstance(x, (tuple, list)):
        return [t for item in x for t in _flat(item)]
    return [x]


def _assert_same_run(ref, kit, inputs, hx=None):
    """Forward outputs, final states and all gradients agree."""
    x_ref = inputs.detach().clone().requires_grad_(inputs.is_floating_point())
    x_kit = inputs.detach().clone().requires_grad_(inputs.is_floating_point())
    out_ref = ref(x_ref, hx)
    out_kit = kit(x_kit, hx)
    flat_ref, flat_kit = _flat(out_ref), _flat(out_kit)
    assert len(flat_ref) == len(flat_kit)
    for a, b in zip(flat_ref, flat_kit):
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, **TOL)
    g = torch.Generator().manual_seed(1)
    weights = [torch.randn(t.shape, generator=g) for t in flat_ref]
    loss_ref = sum((w * t).sum() for w, t in zip(weights, flat_ref))
    loss_kit = sum((w * t).sum() for w, t in zip(weights, flat_kit))
    loss_ref.backward()
    loss_kit.backward()
    torch.testing.assert_close(x_kit.grad, x_ref.grad, **TOL)
    kit_params = dict(kit.named_parameters())
    for name, p in ref.named_parameters():
        torch.testing.assert_close(kit_params[name].grad, p.grad, **TOL, msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "layers,bidirectional,batch_first,proj",
    list(itertools.product([1, 2], [False, True], [False, True], [0, 3])),
)
def test_lstm_matches_torch(backend, layers, bidirectional, batch_first, proj):
    ref, kit = _pair(torch.nn.LSTM, lstmkit.LSTM, backend, 4, 5, layers,
                     batch_first=batch_first, bidirectional=bidirectional, proj_size=proj)
    x = torch.randn(3, 6, 4) if batch_first else torch.randn(6, 3, 4)
    _assert_same_run(ref, kit, x)
    d = 2 if bidirectional else 1
    hx = (torch.randn(layers * d, 3, proj or 5), torch.randn(layers * d, 3, 5))
    ref.zero_grad()
    kit.zero_grad()
    _assert_same_run(ref, kit, x, hx)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("torch_cls,kit_cls,kwargs", [
    (torch.nn.LSTM, lstmkit.LSTM, {"proj_size": 2}),
    (torch.nn.GRU, lstmkit.GRU, {}),
    (torch.nn.RNN, lstmkit.RNN, {"nonlinearity": "relu"}),
])
def test_unbatched_and_packed(backend, torch_cls, kit_cls, kwargs):
    ref, kit = _pair(torch_cls, kit_cls, backend, 3, 4, 2, bidirectional=True, **kwargs)
    _assert_same_run(ref, kit, torch.randn(5, 3))
    ref.zero_grad()
    kit.zero_grad()
    x = torch.randn(7, 4, 3)
    lengths = torch.tensor([3, 7, 1, 5])
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    out_ref, h_ref = ref(packed)
    out_kit, h_kit = kit(packed)
    assert torch.equal(out_kit.batch_sizes, out_ref.batch_sizes)
    assert torch.equal(out_kit.sorted_indices, out_ref.sorted_indices)
    torch.testing.assert_close(out_kit.data, out_ref.data, **TOL)
    for a, b in zip(_flat(h_ref), _flat(h_kit)):
        torch.testing.assert_close(b, a, **TOL)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("torch_cls,kit_cls,kwargs", [
    (torch.nn.GRU, lstmkit.GRU, {}),
    (torch.nn.RNN, lstmkit.RNN, {}),
    (torch.nn.RNN, lstmkit.RNN, {"nonlinearity": "relu", "bias": False}),
])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_gru_rnn_match_torch(backend, torch_cls, kit_cls, kwargs, bidirectional):
    ref, kit = _pair(torch_cls, kit_cls, backend, 4, 5, 2, bidirectional=bidirectional,
                     batch_first=True, **kwargs)
    x = torch.randn(3, 6, 4)
    _assert_same_run(ref, kit, x)
    ref.zero_grad()
    kit.zero_grad()
    _assert_same_run(ref, kit, x, torch.randn(2 * (2 if bidirectional else 1), 3, 5))


def test_state_dict_round_trip_both_ways():
    torch_lstm = torch.nn.LSTM(3, 6, 2, bidirectional=True, proj_size=2)
    kit = lstmkit.LSTM(3, 6, 2, bidirectional=True, proj_size=2)
    assert list(kit.state_dict()) == list(torch_lstm.state_dict())
    torch_lstm.load_state_dict(kit.state_dict())
    x = torch.randn(4, 2, 3)
    torch.testing.assert_close(kit(x)[0], torch_lstm(x)[0], **TOL)


def test_gru_cho_differs_from_torch_gru_only_in_reset_placement():
    torch.manual_seed(0)
    gru = lstmkit.GRU(3, 4)
    cho = lstmkit.GRU(3, 4, variant="gru_cho")
    cho.load_state_dict(gru.state_dict())
    x = torch.randn(5, 2, 3)
    assert not torch.allclose(gru(x)[0], cho(x)[0])
    # With the reset gate forced open (r = 1) both orderings compute the same thing.
    with torch.no_grad():
        for m in (gru, cho):
            m.bias_ih_l0[:4] = 50.0
    torch.testing.assert_close(cho(x)[0], gru(x)[0], **TOL)
