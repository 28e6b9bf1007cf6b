"""The state tuple of cells that carry their previous gate activations (``fgr``, ``lstm1997``).

Such a cell returns ``(output, (h_n, c_n, a_n))``. Continuing a sequence needs all three: with
``(h, c)`` alone the gate activations would restart from zero and the outputs would silently
differ from those of the whole sequence, so a 2-tuple initial state is refused with an error
that says what to pass instead.
"""

from __future__ import annotations

import pytest
import torch

import lstmkit
from lstmkit.cells import PRESETS

GATED = [name for name, spec in PRESETS.items() if spec.carries_gates]
BACKENDS = ["auto", "reference"]


def _layer(name: str, backend: str = "auto", **kwargs) -> lstmkit.LSTM:
    torch.manual_seed(0)
    layer = lstmkit.LSTM(3, 4, variant=name, backend=backend, **kwargs)
    with torch.no_grad():
        for p in layer.parameters():
            p.uniform_(-0.8, 0.8)
    return layer


def test_the_gate_carrying_presets():
    assert set(GATED) == {"fgr", "lstm1997"}


@pytest.mark.parametrize("name", GATED)
def test_a_two_tuple_initial_state_is_refused(name):
    layer = _layer(name, num_layers=2)
    x = torch.randn(5, 2, 3)
    _, state = layer(x)
    assert len(state) == 3
    with pytest.raises(ValueError, match=r"hx: expected 3 tensors \(h_0, c_0, a_0\), got 2; "
                                         r"this cell carries its previous gate activations"):
        layer(x, state[:2])
    with pytest.raises(ValueError, match="got 2"):  # unbatched, too
        layer(x[:, 0], tuple(s[:, 0] for s in state[:2]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", GATED)
def test_carrying_all_three_states_continues_the_sequence(name, backend):
    """Two chunks with the returned (h, c, a) give the whole sequence's outputs and states;
    restarting a from zero (what a 2-tuple would have meant) does not."""
    layer = _layer(name, backend, bidirectional=False, num_layers=2)
    x = torch.randn(8, 3, 3)
    whole, whole_state = layer(x)
    first, state = layer(x[:5])
    second, end_state = layer(x[5:], state)
    torch.testing.assert_close(torch.cat([first, second]), whole, atol=1e-6, rtol=1e-6)
    for got, want in zip(end_state, whole_state):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    restarted, _ = layer(x[5:], (state[0], state[1], torch.zeros_like(state[2])))
    assert (restarted - whole[5:]).abs().max() > 1e-3


def test_other_cells_keep_torchs_state_shapes():
    x = torch.randn(5, 2, 3)
    lstm = _layer("peephole")
    _, (h, c) = lstm(x)
    lstm(x, (h, c))
    with pytest.raises(ValueError, match=r"hx: expected 2 tensors \(h_0, c_0\), got 3$"):
        lstm(x, (h, c, c))
    gru = lstmkit.GRU(3, 4)
    _, h = gru(x)
    gru(x, h)
    gru(x, (h,))
