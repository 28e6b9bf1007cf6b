"""Chrono initialisation (``chrono_init=T_max``) of the LSTM and GRU layers: where the biases go,
their distribution, that ``reset_parameters`` redraws them, and the refused combinations."""

from __future__ import annotations

import math

import pytest
import torch

import lstmkit
from lstmkit.cells.spec import PRESETS


def _rows(layer, block):
    return layer.layout.bias_slice(block)


def _biases(layer):
    """Every layer-direction's (bias_ih, bias_hh or None)."""
    return [(p["bias_ih"], p.get("bias_hh"))
            for layer_i in range(layer.num_layers) for d in range(layer._directions)
            for p in [layer.cell_params(layer_i, d)]]


def test_lstm_forget_bias_is_log_uniform_and_input_bias_its_negative():
    torch.manual_seed(0)
    t_max = 50
    lstm = lstmkit.LSTM(3, 256, num_layers=2, bidirectional=True, chrono_init=t_max)
    f_rows, i_rows = _rows(lstm, "f"), _rows(lstm, "i")
    draws = []
    for bias_ih, bias_hh in _biases(lstm):
        b_f, b_i = bias_ih[f_rows].detach(), bias_ih[i_rows].detach()
        assert torch.equal(b_i, -b_f)
        # The whole value sits in bias_ih, so the sum of the two vectors is the value.
        assert torch.equal(bias_hh[f_rows], torch.zeros_like(b_f))
        assert torch.equal(bias_hh[i_rows], torch.zeros_like(b_f))
        draws.append(b_f)
    b_f = torch.cat(draws)
    assert b_f.min() >= 0.0 and b_f.max() <= math.log(t_max - 1)
    u = b_f.exp()  # uniform in [1, T_max - 1]: mean T_max / 2, spread over the whole range
    assert abs(u.mean().item() - t_max / 2) < 2.0
    assert u.min() < 3.0 and u.max() > t_max - 3.0
    # Each layer-direction draws its own biases.
    assert not torch.equal(draws[0], draws[1])
    # The other blocks keep torch's initialisation.
    bound = 1 / math.sqrt(256)
    g = lstm.bias_ih_l0[_rows(lstm, "g")]
    assert g.abs().max() <= bound and g.std() > 0


def test_gru_update_gate_gets_the_forget_gate_draw():
    torch.manual_seed(1)
    gru = lstmkit.GRU(2, 128, chrono_init=20)
    z = _rows(gru, "z")
    b_z = gru.bias_ih_l0[z].detach()
    # torch's h = z h + (1 - z) n: z keeps the old state, so its bias is positive.
    assert b_z.min() >= 0.0 and b_z.max() <= math.log(19)
    assert b_z.exp().mean() > 5.0
    assert torch.equal(gru.bias_hh_l0[z], torch.zeros_like(b_z))
    bound = 1 / math.sqrt(128)
    assert gru.bias_ih_l0[_rows(gru, "r")].abs().max() <= bound


def test_coupled_and_input_gateless_cells():
    torch.manual_seed(2)
    cifg = lstmkit.LSTM(2, 64, variant="cifg", chrono_init=30)
    b_i = cifg.bias_ih_l0[_rows(cifg, "i")].detach()
    # f = 1 - i = σ(-b_i): the forget gate's draw is -b_i.
    assert b_i.max() <= 0.0 and -b_i.min() <= math.log(29)
    nig = lstmkit.LSTM(2, 64, variant="nig", chrono_init=30)
    b_f = nig.bias_ih_l0[_rows(nig, "f")].detach()
    assert b_f.min() >= 0.0 and b_f.max() <= math.log(29) and b_f.mean() > 1.0


def test_blocks_of_cells_share_one_gate_bias():
    spec = PRESETS["peephole"].replace(block_size=3)
    lstm = lstmkit.LSTM(2, 6, variant=spec, chrono_init=10)
    f_rows = _rows(lstm, "f")
    assert f_rows.stop - f_rows.start == 2  # one forget gate per block
    b_f = lstm.bias_ih_l0[f_rows].detach()
    assert torch.equal(lstm.bias_ih_l0[_rows(lstm, "i")].detach(), -b_f)


def test_t_max_2_is_a_zero_bias():
    lstm = lstmkit.LSTM(2, 4, chrono_init=2)
    assert torch.equal(lstm.bias_ih_l0[_rows(lstm, "f")].detach(), torch.zeros(4))


def test_reset_parameters_draws_again():
    torch.manual_seed(3)
    lstm = lstmkit.LSTM(3, 32, chrono_init=100)
    f_rows = _rows(lstm, "f")
    first = lstm.bias_ih_l0[f_rows].detach().clone()
    with torch.no_grad():
        lstm.bias_ih_l0.zero_()
        lstm.bias_hh_l0.fill_(5.0)
    lstm.reset_parameters()
    again = lstm.bias_ih_l0[f_rows].detach()
    assert not torch.equal(again, first)  # a fresh draw, not a stored copy
    assert again.min() >= 0.0 and again.max() <= math.log(99) and again.mean() > 1.0
    assert torch.equal(lstm.bias_ih_l0[_rows(lstm, "i")].detach(), -again)
    assert torch.equal(lstm.bias_hh_l0[f_rows].detach(), torch.zeros(32))
    # The same seed gives the same draw.
    torch.manual_seed(3)
    assert torch.equal(lstmkit.LSTM(3, 32, chrono_init=100).bias_ih_l0[f_rows].detach(), first)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(variant="nfg", chrono_init=5), ValueError,
     "chrono_init: the 'nfg' cell has no forget gate, got chrono_init=5"),
    (dict(variant="lstm1997", chrono_init=5), ValueError,
     "chrono_init: the 'lstm1997' cell has no forget gate"),
    (dict(bias=False, chrono_init=5), ValueError, "chrono_init: the layer has no bias"),
    (dict(chrono_init=1), ValueError, "chrono_init: expected an int T_max >= 2"),
    (dict(chrono_init=0), ValueError, "chrono_init: expected an int >= 1, got 0"),
    (dict(chrono_init=5.0), TypeError, "chrono_init: expected an int, got float"),
    (dict(chrono_init=True), TypeError, "chrono_init: expected an int, got bool"),
    (dict(chrono_init=5, forget_bias=1.0), ValueError,
     "chrono_init: sets the forget-gate bias itself, so expected forget_bias=None, "
     "got forget_bias=1.0"),
])
def test_refused(kwargs, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(")):
        lstmkit.LSTM(3, 4, **kwargs)


def test_refused_by_rnn_and_biasless_gru():
    with pytest.raises(ValueError, match="chrono_init: the 'rnn' cell has no forget gate"):
        lstmkit.RNN(3, 4, chrono_init=5)
    with pytest.raises(ValueError, match="chrono_init: the layer has no bias for the 'z' gate"):
        lstmkit.GRU(3, 4, bias=False, chrono_init=5)
