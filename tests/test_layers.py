"""Layer behaviour beyond torch parity: argument errors, lengths, cell states, forget_bias,
dropout, and a property test of the engine and native paths against the reference."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import lstmkit
from lstmkit import engine
from lstmkit.cells import PRESETS, lstm1997

TOL = dict(atol=1e-5, rtol=1e-5)
GRAD_TOL = dict(atol=1e-5, rtol=1e-4)  # sums over steps and batch round a little more
CLASSES = {"lstm": lstmkit.LSTM, "gru": lstmkit.GRU, "rnn": lstmkit.RNN}
LENGTH_PRESETS = ["lstm", "peephole", "cifg", "lstm1997", "gru_cho", "rnn"]


def _layer(variant, input_size=3, hidden_size=4, seed=0, **kwargs):
    spec = PRESETS[variant] if isinstance(variant, str) else variant
    torch.manual_seed(seed)
    return CLASSES[spec.family](input_size, hidden_size, variant=spec, **kwargs)


def _states(hidden):
    """Final states as a tuple, whatever the family returns."""
    return hidden if isinstance(hidden, tuple) else (hidden,)


@pytest.fixture(scope="module")
def built_engine():
    if not engine.available():
        pytest.skip(f"the fused engine did not build: {engine.build_error()}")


# -------------------------------------------------------------------------------------------
# 1. Bad input: a ValueError/TypeError naming the argument, before any kernel runs.

def _lstm(**kwargs):
    return lstmkit.LSTM(3, 4, **kwargs)


X = torch.randn(5, 2, 3)
H2 = (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4))

CALL_ERRORS = [
    ("rank 1", lambda: _lstm()(torch.randn(3)), ValueError, r"input: expected a 3-D .* got 1-D"),
    ("rank 4", lambda: _lstm()(torch.randn(2, 5, 2, 3)), ValueError, "input: .*got 4-D"),
    ("features", lambda: _lstm()(torch.randn(5, 2, 7)), ValueError,
     r"input: expected 3 features \(input_size\), got 7"),
    ("not a tensor", lambda: _lstm()(X.numpy()), TypeError, "input: expected a torch.Tensor"),
    ("integer input", lambda: _lstm()(torch.ones(5, 2, 3, dtype=torch.long)), TypeError,
     "input: expected a floating-point tensor .* got torch.int64"),
    ("float64 input", lambda: _lstm()(X.double()), TypeError,
     "input: expected dtype torch.float32 .* got torch.float64"),
    ("hx dtype", lambda: _lstm()(X, (H2[0].double(), H2[1])), TypeError,
     r"hx \(h_0\): expected dtype torch.float32 .* got torch.float64"),
    ("hx c dtype", lambda: _lstm()(X, (H2[0], H2[1].half())), TypeError, r"hx \(c_0\)"),
    ("hx size", lambda: _lstm()(X, (torch.zeros(1, 2, 5), H2[1])), ValueError,
     r"hx \(h_0\): expected shape \(1, 2, 4\), got \(1, 2, 5\)"),
    ("hx layers", lambda: _lstm(num_layers=2)(X, H2), ValueError,
     r"hx \(h_0\): expected shape \(2, 2, 4\), got \(1, 2, 4\)"),
    ("hx directions", lambda: _lstm(bidirectional=True)(X, H2), ValueError,
     r"hx \(h_0\): expected shape \(2, 2, 4\)"),
    ("hx batch", lambda: _lstm()(torch.randn(5, 3, 3), H2), ValueError,
     r"hx \(h_0\): expected shape \(1, 3, 4\), got \(1, 2, 4\)"),
    ("c batch", lambda: _lstm()(X, (H2[0], torch.zeros(1, 3, 4))), ValueError,
     r"hx \(c_0\): expected shape \(1, 2, 4\), got \(1, 3, 4\)"),
    ("hx 3-D for unbatched", lambda: _lstm()(torch.randn(5, 3), H2), ValueError,
     r"hx \(h_0\): expected shape \(1, 4\)"),
    ("lstm single hx", lambda: _lstm()(X, H2[0]), TypeError,
     r"hx: expected a tuple \(h_0, c_0\) for an LSTM, got a single tensor"),
    ("lstm three hx", lambda: _lstm()(X, (*H2, H2[0])), ValueError,
     r"hx: expected 2 tensors \(h_0, c_0\), got 3"),
    ("gru two hx", lambda: lstmkit.GRU(3, 4)(X, H2), ValueError, r"hx: expected 1 tensors"),
    ("hx not tensors", lambda: _lstm()(X, 3), TypeError, "hx: expected a tensor or a tuple"),
    ("hx element", lambda: _lstm()(X, (H2[0], 0.0)), TypeError,
     r"hx \(c_0\): expected a torch.Tensor, got float"),
    ("lengths zero", lambda: _lstm()(X, lengths=[5, 0]), ValueError,
     "lengths: expected every length >= 1, got 0"),
    ("lengths negative", lambda: _lstm()(X, lengths=torch.tensor([-1, 3])), ValueError,
     "lengths: expected every length >= 1, got -1"),
    ("lengths too long", lambda: _lstm()(X, lengths=[6, 2]), ValueError,
     "lengths: expected every length <= the input's 5 time steps, got 6"),
    ("lengths count", lambda: _lstm()(X, lengths=[5, 2, 1]), ValueError,
     r"lengths: expected 2 lengths .* got shape \(3,\)"),
    ("lengths 2-D", lambda: _lstm()(X, lengths=torch.tensor([[5, 2]])), ValueError,
     r"lengths: expected 2 lengths .* got shape \(1, 2\)"),
    ("lengths float tensor", lambda: _lstm()(X, lengths=torch.tensor([5.0, 2.0])), TypeError,
     "lengths: expected an integer tensor, got dtype torch.float32"),
    ("lengths float list", lambda: _lstm()(X, lengths=[5.0, 2]), TypeError,
     "lengths: expected a list of ints, got an element of type float"),
    ("lengths bool list", lambda: _lstm()(X, lengths=[True, True]), TypeError,
     "lengths: expected a list of ints"),
    ("lengths with packed", lambda: _lstm()(
        pack_padded_sequence(X, [5, 2]), lengths=[5, 2]), ValueError,
     "lengths: a PackedSequence carries its own lengths"),
    ("return_cell_states on gru", lambda: lstmkit.GRU(3, 4)(X, return_cell_states=True),
     ValueError, "return_cell_states: only LSTM-family cells have a cell state, got 'gru'"),
    ("return_cell_states not bool", lambda: _lstm()(X, return_cell_states=1), TypeError,
     "return_cell_states: expected a bool, got int"),
    ("check_finite not bool", lambda: _lstm()(X, check_finite="yes"), TypeError,
     "check_finite: expected a bool, got str"),
    ("native cell states", lambda: _lstm(backend="native")(X, return_cell_states=True),
     ValueError, "backend: 'native' .* cell states"),
]


@pytest.mark.parametrize("call,exc,match", [c[1:] for c in CALL_ERRORS],
                         ids=[c[0] for c in CALL_ERRORS])
def test_bad_call_names_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


CONSTRUCTION_ERRORS = [
    ("unknown variant", dict(variant="peepole"), ValueError,
     r"variant: expected one of \['lstm', 'peephole', .*'cifg'.*got 'peepole'"),
    ("variant type", dict(variant=3), TypeError, "variant: expected a preset name"),
    ("input_size 0", dict(input_size=0), ValueError, "input_size: expected an int >= 1, got 0"),
    ("hidden_size -1", dict(hidden_size=-1), ValueError, "hidden_size: expected an int >= 1"),
    ("hidden_size float", dict(hidden_size=4.0), TypeError, "hidden_size: expected an int"),
    ("num_layers 0", dict(num_layers=0), ValueError, "num_layers: expected an int >= 1, got 0"),
    ("num_layers bool", dict(num_layers=True), TypeError, "num_layers: expected an int"),
    ("proj_size -1", dict(proj_size=-1), ValueError, "proj_size: expected an int >= 0"),
    ("proj_size = hidden", dict(proj_size=4), ValueError,
     r"proj_size: expected proj_size < hidden_size \(4\), got 4"),
    ("proj_size > hidden", dict(proj_size=9), ValueError, "proj_size: .* got 9"),
    ("block size", dict(hidden_size=5, variant=lstm1997(2)), ValueError,
     "hidden_size: expected a multiple of the spec's block_size 2, got 5"),
    ("native peephole", dict(variant="peephole", backend="native"), ValueError,
     "backend: 'native' .* 'peephole'"),
    ("unknown backend", dict(backend="fast"), ValueError,
     r"backend: expected one of \('auto', 'native', 'engine', 'reference'\), got 'fast'"),
    ("forget_bias nfg", dict(variant="nfg", forget_bias=1.0), ValueError,
     "forget_bias: the 'nfg' cell has no forget gate"),
    ("forget_bias lstm1997", dict(variant="lstm1997", forget_bias=1.0), ValueError,
     "forget_bias: the 'lstm1997' cell has no forget gate"),
    ("forget_bias no bias", dict(bias=False, forget_bias=1.0), ValueError,
     "forget_bias: the layer has no bias"),
    ("forget_bias str", dict(forget_bias="1"), TypeError, "forget_bias: expected a float, got str"),
    ("forget_bias nan", dict(forget_bias=float("nan")), ValueError,
     "forget_bias: expected a finite float, got nan"),
    ("dropout > 1", dict(dropout=1.5), ValueError, r"dropout: expected a float in \[0, 1\]"),
    ("dropout < 0", dict(dropout=-0.1), ValueError, r"dropout: .* got -0.1"),
    ("dropout str", dict(dropout="0.5"), TypeError, "dropout: expected a float"),
    ("bias int", dict(bias=1), TypeError, "bias: expected a bool, got int"),
    ("batch_first None", dict(batch_first=None), TypeError, "batch_first: expected a bool"),
    ("bidirectional str", dict(bidirectional="yes"), TypeError, "bidirectional: expected a bool"),
]


@pytest.mark.parametrize("kwargs,exc,match", [c[1:] for c in CONSTRUCTION_ERRORS],
                         ids=[c[0] for c in CONSTRUCTION_ERRORS])
def test_bad_construction_names_the_argument(kwargs, exc, match):
    kwargs = {"input_size": 3, "hidden_size": 4, **kwargs}
    with pytest.raises(exc, match=match):
        lstmkit.LSTM(**kwargs)


def test_family_specific_arguments():
    with pytest.raises(ValueError, match=r"variant: this layer takes the 'gru' family .*"
                                         r"got 'peephole' of family 'lstm'"):
        lstmkit.GRU(3, 4, variant="peephole")
    with pytest.raises(ValueError, match="variant: this layer takes the 'lstm' family"):
        lstmkit.LSTM(3, 4, variant="gru")
    # torch's GRU refuses proj_size with a ValueError too.
    with pytest.raises(ValueError, match="proj_size: supported by LSTM only"):
        lstmkit.GRU(3, 4, proj_size=2)
    with pytest.raises(ValueError, match="forget_bias: the 'rnn' cell has no forget gate"):
        lstmkit.RNN(3, 4, forget_bias=1.0)
    with pytest.raises(ValueError, match="nonlinearity: expected 'tanh' or 'relu', got 'gelu'"):
        lstmkit.RNN(3, 4, nonlinearity="gelu")
    with pytest.raises(ValueError, match="nonlinearity: variant 'rnn' uses 'tanh'"):
        lstmkit.RNN(3, 4, nonlinearity="relu", variant="rnn")
    assert lstmkit.RNN(3, 4, variant="rnn_relu").nonlinearity == "relu"
    with pytest.raises(ValueError, match="backend: 'native' .* 'gru_cho'"):
        lstmkit.GRU(3, 4, variant="gru_cho", backend="native")


def test_bad_backend_environment_variable(monkeypatch):
    layer = _lstm()
    monkeypatch.setenv("LSTMKIT_BACKEND", "turbo")
    with pytest.raises(ValueError, match=r"LSTMKIT_BACKEND: expected one of .* got 'turbo'"):
        layer(X)
    monkeypatch.setenv("LSTMKIT_BACKEND", "native")
    with pytest.raises(ValueError, match="backend: 'native' .* 'peephole'"):
        _lstm(variant="peephole")(X)
    # An explicit backend= wins over the environment.
    monkeypatch.setenv("LSTMKIT_BACKEND", "turbo")
    assert _lstm(backend="reference")(X)[0].shape == (5, 2, 4)


def test_mixed_devices_are_refused():
    # "meta" stands in for a second device: no data, but tensors carry it like any other.
    meta = lstmkit.LSTM(3, 4, device="meta")
    with pytest.raises(ValueError, match="input: expected a tensor on meta .* got cpu"):
        meta(X)
    with pytest.raises(ValueError, match=r"hx \(h_0\): expected a tensor on cpu .* got meta"):
        _lstm()(X, (H2[0].to("meta"), H2[1]))
    with pytest.raises(ValueError, match=r"hx \(c_0\): expected a tensor on cpu"):
        _lstm()(X, (H2[0], H2[1].to("meta")))


@pytest.mark.parametrize("backend", ["auto", "reference", "engine"])
def test_check_finite_is_opt_in(backend):
    layer = _lstm(variant="peephole" if backend == "engine" else "lstm", backend=backend)
    x = torch.randn(5, 2, 3)
    x[1, 0, 2] = float("nan")
    assert torch.isnan(layer(x)[0]).any()  # off by default: NaN flows through
    with pytest.raises(ValueError, match="input: expected finite values, got NaN or Inf"):
        layer(x, check_finite=True)
    x[1, 0, 2] = float("inf")
    with pytest.raises(ValueError, match="input: expected finite values"):
        layer(x, check_finite=True)
    h = torch.zeros(1, 2, 4)
    c = torch.zeros(1, 2, 4)
    c[0, 1, 1] = float("-inf")
    with pytest.raises(ValueError, match=r"hx \(c_0\): expected finite values"):
        layer(torch.randn(5, 2, 3), (h, c), check_finite=True)
    # Padding beyond lengths is not input, so NaN there passes the check.
    x = torch.randn(5, 2, 3)
    x[3:, 1] = float("nan")
    out, _ = layer(x, lengths=[5, 3], check_finite=True)
    assert torch.isfinite(out).all()


# -------------------------------------------------------------------------------------------
# 2. lengths: each sequence as if run alone, truncated to its length.

def _check_lengths_semantics(layer, x, hx, lengths):
    out, hidden = layer(x, hx, lengths=torch.tensor(lengths))
    finals = _states(hidden)
    for b, n in enumerate(lengths):
        alone_hx = tuple(s[:, b : b + 1] for s in hx)
        alone_out, alone_hidden = layer(x[:n, b : b + 1], alone_hx if len(hx) > 1 else alone_hx[0])
        torch.testing.assert_close(out[:n, b], alone_out[:, 0], **TOL)
        assert torch.equal(out[n:, b], torch.zeros_like(out[n:, b])), "padded outputs not zero"
        for got, want in zip(finals, _states(alone_hidden)):
            torch.testing.assert_close(got[:, b], want[:, 0], **TOL)


def _initial(layer, batch, generator, dtype=torch.float32, gates=True):
    """Random (h_0, c_0) or (h_0,), and a_0 for cells that carry gates (unless ``gates`` is
    False: then only the first two)."""
    sizes = layer.state_sizes if gates else layer.state_sizes[:2]
    rows = layer.num_layers * (2 if layer.bidirectional else 1)
    return tuple(torch.randn(rows, batch, n, generator=generator, dtype=dtype) for n in sizes)


@pytest.mark.parametrize("backend", ["reference", "engine"])
@pytest.mark.parametrize("variant", LENGTH_PRESETS)
def test_lengths_equal_each_sequence_alone(backend, variant, built_engine):
    kwargs = {"proj_size": 3} if variant in ("lstm", "peephole") else {}
    layer = _layer(variant, hidden_size=4, num_layers=2, bidirectional=True, backend=backend,
                   **kwargs)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 4, 3, generator=g)
    _check_lengths_semantics(layer, x, _initial(layer, 4, g), [6, 2, 1, 4])


@pytest.mark.parametrize("backend", ["reference", "engine", "auto"])
@pytest.mark.parametrize("variant", ["lstm", "peephole", "gru_cho"])
def test_padding_content_does_not_matter(backend, variant, built_engine):
    """NaN in the padding changes neither outputs, states nor any gradient."""
    layer = _layer(variant, num_layers=2, bidirectional=True, backend=backend)
    lengths = [5, 3, 1]
    clean = torch.randn(5, 3, 3)
    dirty = clean.clone()
    for b, n in enumerate(lengths):
        dirty[n:, b] = float("nan")
    results = []
    for x in (clean, dirty):
        layer.zero_grad()
        x = x.clone().requires_grad_()
        out, hidden = layer(x, lengths=lengths)
        (out.sum() + sum(s.sum() for s in _states(hidden))).backward()
        grads = [p.grad.clone() for p in layer.parameters()]
        results.append((out, _states(hidden), grads, x.grad))
    (out_c, fin_c, grads_c, xg_c), (out_d, fin_d, grads_d, xg_d) = results
    assert torch.equal(out_d, out_c)
    for a, b in zip(fin_d, fin_c):
        assert torch.equal(a, b)
    for a, b in zip(grads_d, grads_c):
        torch.testing.assert_close(a, b, **TOL)
    for b, n in enumerate(lengths):
        torch.testing.assert_close(xg_d[:n, b], xg_c[:n, b], **TOL)
        assert torch.equal(xg_d[n:, b], torch.zeros_like(xg_d[n:, b]))


def test_reverse_direction_starts_at_each_sequences_end():
    """Reverse outputs of a short sequence do not see its padding, whatever the padding holds."""
    layer = _layer("lstm", bidirectional=True, backend="reference")
    x = torch.randn(6, 2, 3)
    out, _ = layer(x, lengths=[6, 2])
    alone, _ = layer(x[:2, 1:])
    torch.testing.assert_close(out[:2, 1, 4:], alone[:, 0, 4:], **TOL)
    # The reverse output at step 0 differs from the one a run over the padded 6 steps gives.
    padded, _ = layer(x[:, 1:])
    assert not torch.allclose(out[0, 1, 4:], padded[0, 0, 4:])


@pytest.mark.parametrize("backend", ["native", "auto"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_lengths_match_torch_packed(batch_first, backend):
    """torch's kernel with lengths (a packed sequence inside), and whatever auto takes."""
    torch.manual_seed(0)
    ref = torch.nn.LSTM(3, 5, 2, bidirectional=True, batch_first=batch_first, proj_size=2)
    kit = lstmkit.LSTM(3, 5, 2, bidirectional=True, batch_first=batch_first, proj_size=2,
                       backend=backend)
    kit.load_state_dict(ref.state_dict())
    lengths = torch.tensor([4, 7, 1, 6])
    x = torch.randn(4, 7, 3) if batch_first else torch.randn(7, 4, 3)
    hx = (torch.randn(4, 4, 2), torch.randn(4, 4, 5))
    packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
    want_packed, (want_h, want_c) = ref(packed, hx)
    want, _ = pad_packed_sequence(want_packed, batch_first=batch_first, total_length=7)
    got, (got_h, got_c) = kit(x, hx, lengths=lengths)
    torch.testing.assert_close(got, want, **TOL)
    torch.testing.assert_close(got_h, want_h, **TOL)
    torch.testing.assert_close(got_c, want_c, **TOL)


def test_empty_sequence_gives_the_initial_state_on_every_backend():
    hx = (torch.randn(2, 3, 4), torch.randn(2, 3, 4))
    for backend in ("auto", "native", "reference", "engine"):
        out, (h, c) = _lstm(num_layers=2, backend=backend)(torch.randn(0, 3, 3), hx)
        assert out.shape == (0, 3, 4)
        assert torch.equal(h, hx[0]) and torch.equal(c, hx[1])


# -------------------------------------------------------------------------------------------
# 3. return_cell_states

@pytest.mark.parametrize("backend", ["reference", "engine", "auto"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_cell_states_layout_and_last_step(backend, batch_first, built_engine):
    layer = _layer("peephole", batch_first=batch_first, backend=backend)
    x = torch.randn(2, 5, 3) if batch_first else torch.randn(5, 2, 3)
    out, (h_n, c_n), cells = layer(x, return_cell_states=True)
    assert cells.shape == out.shape
    last = cells[:, -1] if batch_first else cells[-1]
    torch.testing.assert_close(last, c_n[0], **TOL)
    # The outputs are those of a call without cell states.
    torch.testing.assert_close(out, layer(x)[0], **TOL)

    lengths = [5, 3]
    out, (h_n, c_n), cells = layer(x, lengths=lengths, return_cell_states=True)
    seq = cells if batch_first else cells.transpose(0, 1)
    for b, n in enumerate(lengths):
        torch.testing.assert_close(seq[b, n - 1], c_n[0, b], **TOL)
        assert torch.equal(seq[b, n:], torch.zeros_like(seq[b, n:]))


@pytest.mark.parametrize("backend", ["reference", "engine"])
def test_cell_states_bidirectional_projected_unbatched_packed(backend, built_engine):
    layer = _layer("lstm", hidden_size=5, num_layers=2, bidirectional=True, proj_size=2,
                   backend=backend)
    x = torch.randn(6, 3, 3)
    out, (h_n, c_n), cells = layer(x, return_cell_states=True)
    assert out.shape == (6, 3, 4) and cells.shape == (6, 3, 10)
    # Last layer: forward ends at step T-1, reverse at step 0.
    torch.testing.assert_close(cells[-1, :, :5], c_n[2], **TOL)
    torch.testing.assert_close(cells[0, :, 5:], c_n[3], **TOL)

    out_u, _, cells_u = layer(x[:, 0], return_cell_states=True)
    torch.testing.assert_close(cells_u, cells[:, 0], **TOL)

    lengths = torch.tensor([6, 2, 4])
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    out_p, _, cells_p = layer(packed, return_cell_states=True)
    assert isinstance(cells_p, torch.nn.utils.rnn.PackedSequence)
    assert torch.equal(cells_p.batch_sizes, out_p.batch_sizes)
    assert torch.equal(cells_p.sorted_indices, out_p.sorted_indices)
    padded_cells, _ = pad_packed_sequence(cells_p)
    _, _, cells_l = layer(x, lengths=lengths, return_cell_states=True)
    torch.testing.assert_close(padded_cells, cells_l, **TOL)


# -------------------------------------------------------------------------------------------
# 4. forget_bias

def test_forget_bias_rows():
    lstm = lstmkit.LSTM(3, 4, num_layers=2, bidirectional=True, forget_bias=2.5)
    for name, p in lstm.named_parameters():
        if name.startswith("bias_ih"):
            assert torch.equal(p[4:8], torch.full((4,), 2.5)), name
            assert not torch.equal(p[:4], torch.full((4,), 2.5)), name
        if name.startswith("bias_hh"):
            assert torch.equal(p[4:8], torch.zeros(4)), name
            assert p[:4].abs().sum() > 0, name

    gru = lstmkit.GRU(3, 4, forget_bias=1.5)
    assert torch.equal(gru.bias_ih_l0[4:8], torch.full((4,), 1.5))  # z is the second block
    assert torch.equal(gru.bias_hh_l0[4:8], torch.zeros(4))

    cifg = lstmkit.LSTM(3, 4, variant="cifg", forget_bias=1.0)
    assert cifg.bias_ih_l0.shape == (12,)  # i, g, o
    assert torch.equal(cifg.bias_ih_l0[:4], torch.full((4,), -1.0))
    assert torch.equal(cifg.bias_hh_l0[:4], torch.zeros(4))

    # Memory blocks: one gate row per block; lstm1997 has no forget gate, peephole cells do.
    peep = lstmkit.LSTM(3, 6, variant=PRESETS["peephole"].replace(block_size=3), forget_bias=3.0)
    assert torch.equal(peep.bias_ih_l0[2:4], torch.full((2,), 3.0))

    # Survives re-initialisation.
    lstm.reset_parameters()
    assert torch.equal(lstm.bias_ih_l0[4:8], torch.full((4,), 2.5))


def test_forget_bias_opens_or_closes_the_gate():
    """With the input gate shut, a large forget bias keeps c(0); a large negative one drops it."""
    x = torch.randn(6, 2, 3)
    c0 = torch.randn(1, 2, 4)
    kept = []
    for value in (50.0, -50.0):
        layer = lstmkit.LSTM(3, 4, forget_bias=value, backend="reference")
        with torch.no_grad():
            layer.bias_ih_l0[:4] = -50.0
        kept.append(layer(x, (torch.zeros(1, 2, 4), c0))[1][1])
    torch.testing.assert_close(kept[0], c0, **TOL)
    torch.testing.assert_close(kept[1], torch.zeros_like(c0), **TOL)


# -------------------------------------------------------------------------------------------
# 5. dropout between layers

@pytest.mark.parametrize("variant,backend", [("lstm", "auto"), ("peephole", "engine"),
                                             ("gru_cho", "reference")])
def test_dropout_between_layers(variant, backend):
    layer = _layer(variant, num_layers=2, dropout=0.5, backend=backend)
    x = torch.randn(5, 3, 3)
    layer.eval()
    first, second = layer(x)[0], layer(x)[0]
    assert torch.equal(first, second)
    layer.train()
    torch.manual_seed(0)
    train_a = layer(x)[0]
    torch.manual_seed(0)
    train_b = layer(x)[0]
    assert not torch.allclose(train_a, first)
    assert torch.equal(train_a, train_b)  # the seed makes the mask reproducible
    # Without dropout the train/eval difference vanishes.
    layer.dropout = 0.0
    torch.testing.assert_close(layer(x)[0], first, **TOL)


def test_dropout_with_one_layer_warns_like_torch():
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        torch.nn.LSTM(3, 4, dropout=0.5)
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        lstmkit.LSTM(3, 4, dropout=0.5)
    with pytest.warns(UserWarning, match="dropout=0.5 and num_layers=1"):
        lstmkit.GRU(3, 4, dropout=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lstmkit.LSTM(3, 4, num_layers=2, dropout=0.5)
        lstmkit.LSTM(3, 4, dropout=0.0)


# -------------------------------------------------------------------------------------------
# 6. Property: the engine and native paths agree with the reference or refuse the call.

PROPERTY_PRESETS = ["lstm", "peephole", "cifg", "fgr", "lstm1997", "nog", "gru", "gru_cho",
                    "rnn", "rnn_relu"]


@st.composite
def _draws(draw):
    variant = draw(st.sampled_from(PROPERTY_PRESETS))
    family = PRESETS[variant].family
    d = {
        "variant": variant,
        "backend": draw(st.sampled_from(["auto", "engine"])),
        "input_size": draw(st.integers(1, 4)),
        "hidden_size": draw(st.integers(1, 5)),
        "num_layers": draw(st.integers(1, 2)),
        "bidirectional": draw(st.booleans()),
        "batch_first": draw(st.booleans()),
        "dtype": draw(st.sampled_from([torch.float32, torch.float64])),
        "batched": draw(st.booleans()),
        "steps": draw(st.integers(1, 5)),
        "with_hx": draw(st.booleans()),
        "with_gates": draw(st.booleans()),
        "grad": draw(st.booleans()),
    }
    d["batch"] = draw(st.integers(1, 3)) if d["batched"] else 1
    proj_kind = draw(st.sampled_from(["none", "none", "valid", "valid", "too_big"]))
    d["proj_size"] = 0
    if family == "lstm" and proj_kind == "valid" and d["hidden_size"] > 1:
        d["proj_size"] = draw(st.integers(1, d["hidden_size"] - 1))
    elif family == "lstm" and proj_kind == "too_big":
        d["proj_size"] = d["hidden_size"] + draw(st.integers(0, 1))
    d["hx_error"] = d["with_hx"] and draw(st.integers(0, 9)) == 0
    d["feature_error"] = draw(st.integers(0, 9)) == 0
    lengths_kind = draw(st.sampled_from(["none"] * 3 + ["valid"] * 3 + ["zero", "long"]))
    lengths = None
    if lengths_kind != "none":
        lengths = draw(st.lists(st.integers(1, d["steps"]), min_size=d["batch"],
                                max_size=d["batch"]))
        if lengths_kind == "zero":
            lengths[draw(st.integers(0, d["batch"] - 1))] = 0
        if lengths_kind == "long":
            lengths[draw(st.integers(0, d["batch"] - 1))] = d["steps"] + 1
    d["lengths"] = lengths
    d["invalid"] = (d["feature_error"] or d["hx_error"] or lengths_kind in ("zero", "long")
                    or d["proj_size"] >= d["hidden_size"])
    d["seed"] = draw(st.integers(0, 2**16))
    return d


def _run(d, backend):
    """One forward (and backward) pass; returns every output tensor and every gradient."""
    spec = PRESETS[d["variant"]]
    kwargs = dict(num_layers=d["num_layers"], bidirectional=d["bidirectional"],
                  batch_first=d["batch_first"], backend=backend)
    if spec.family == "lstm":
        kwargs["proj_size"] = d["proj_size"]
    layer = _layer(spec, d["input_size"], d["hidden_size"], seed=d["seed"], dtype=d["dtype"],
                   **kwargs)
    g = torch.Generator().manual_seed(d["seed"])
    features = d["input_size"] + (1 if d["feature_error"] else 0)
    shape = [d["steps"], d["batch"], features]
    if d["batch_first"]:
        shape[:2] = shape[1], shape[0]
    if not d["batched"]:
        shape.pop(1 if not d["batch_first"] else 0)
    x = torch.randn(*shape, generator=g, dtype=d["dtype"]).requires_grad_(d["grad"])
    hx = None
    if d["with_hx"]:
        hx = _initial(layer, d["batch"] + d["hx_error"], g, d["dtype"], d["with_gates"])
        if not d["batched"] and not d["hx_error"]:  # a batched hx is wrong for 2-D input
            hx = tuple(s[:, 0] for s in hx)
        hx = tuple(s.requires_grad_(d["grad"]) for s in hx)
        hx = hx if spec.family == "lstm" else hx[0]
    with torch.set_grad_enabled(d["grad"]):
        out, hidden = layer(x, hx, lengths=d["lengths"])
    results = [out, *_states(hidden)]
    grads = []
    if d["grad"]:
        loss = sum((r * torch.randn(r.shape, generator=g, dtype=r.dtype)).sum()
                   for r in results)
        loss.backward()
        states = [] if hx is None else _states(hx)
        # A path the truncated gradient cuts may give None on one backend and zeros on another.
        grads = [torch.zeros_like(t) if t.grad is None else t.grad
                 for t in (x, *states, *layer.parameters())]
    return results, grads


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_draws())
def test_engine_and_native_agree_with_reference_or_refuse(built_engine, d):
    try:
        got = _run(d, d["backend"])
    except (ValueError, TypeError) as error:
        assert d["invalid"], f"valid call refused: {error}"
        with pytest.raises(type(error), match=None):
            _run(d, "reference")
        return
    assert not d["invalid"], "invalid call accepted"
    want = _run(d, "reference")
    for got_part, want_part, tol in ((got[0], want[0], TOL), (got[1], want[1], GRAD_TOL)):
        assert len(got_part) == len(want_part)
        for a, b in zip(got_part, want_part):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, **tol)
