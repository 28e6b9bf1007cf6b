"""Cell specs: presets, validation, and the 1997 paper's weight counts."""

import pytest

import lstmkit
from lstmkit.cells import PRESETS, CellSpec, get_spec, lstm1997, names


def _paper_net(spec, inputs, cells, outputs, *, output_bias, shortcut=False):
    layer = lstmkit.LSTM(inputs, cells, variant=spec)
    return lstmkit.SequenceModel(
        layer, outputs, output_bias=output_bias, input_shortcut=shortcut,
        output_activation="sigmoid",
    )


# (experiment, spec, inputs, cells, outputs, output bias, input shortcut, paper's "# weights")
PAPER_NETS = [
    ("1, 4 blocks of 1", lstm1997(1, bias_units="gates"), 7, 4, 7, False, False, 264),
    ("1, 3 blocks of 2", lstm1997(2, bias_units="gates"), 7, 6, 7, False, False, 276),
    ("2a", lstm1997(1, output_gate=False, input_activation="sigmoid",
                    output_activation="identity", bias_units="none", gate_recurrence="none",
                    hidden_recurrence=False), 101, 1, 101, False, True, 10504),
    *[(f"2c p={p}", lstm1997(1, bias_units="none"), p + 4, 2, 2, False, False, w)
      for p, w in [(50, 364), (100, 664), (200, 1264), (500, 3064), (1000, 6064)]],
    ("3", lstm1997(1), 1, 3, 1, False, False, 102),
    ("4", lstm1997(2), 2, 4, 1, True, False, 93),
    ("5", lstm1997(2), 2, 4, 1, True, False, 93),
    ("6a", lstm1997(2), 8, 4, 4, True, False, 156),
    ("6b", lstm1997(2), 8, 6, 8, True, False, 308),
]


@pytest.mark.parametrize(
    "spec,inputs,cells,outputs,obias,shortcut,expected",
    [row[1:] for row in PAPER_NETS], ids=[row[0] for row in PAPER_NETS],
)
def test_paper_weight_counts(spec, inputs, cells, outputs, obias, shortcut, expected):
    net = _paper_net(spec, inputs, cells, outputs, output_bias=obias, shortcut=shortcut)
    assert net.num_weights() == expected


def test_every_required_preset_exists():
    required = {"lstm", "peephole", "cifg", "vanilla", "nig", "nfg", "nog", "niaf", "noaf", "np",
                "cifg_peephole", "fgr", "lstm1997", "gru", "gru_cho", "rnn"}
    assert required <= set(PRESETS)
    assert set(names("gru")) == {"gru", "gru_cho", "layernorm_gru"}


def test_greff_ablations_differ_from_vanilla_in_one_flag():
    vanilla = PRESETS["vanilla"]
    for name in ("nig", "nfg", "nog", "niaf", "noaf", "np", "fgr"):
        spec = PRESETS[name]
        changed = [f for f in vanilla.__dataclass_fields__
                   if f not in ("name", "doc") and getattr(spec, f) != getattr(vanilla, f)]
        assert len(changed) == 1, (name, changed)
    cifg = PRESETS["cifg_peephole"]
    assert cifg.coupled and not cifg.forget_gate and cifg.peephole


def test_torch_native_flags():
    native = {n for n, s in PRESETS.items() if s.torch_native}
    # Greff's NP (vanilla without peepholes) is exactly the modern LSTM.
    assert native == {"lstm", "np", "gru", "rnn", "rnn_relu"}


def test_layouts():
    assert PRESETS["lstm"].block_names == ("i", "f", "g", "o")
    assert PRESETS["cifg"].block_names == ("i", "g", "o")
    assert lstm1997(2).block_widths(6) == {"i": 3, "g": 6, "o": 3}
    assert PRESETS["fgr"].gate_recurrent_blocks() == ("i", "f", "o")


def test_unknown_variant_lists_valid_names():
    with pytest.raises(ValueError, match="variant: expected one of .*'peephole'.*got 'peepole'"):
        get_spec("peepole")
    with pytest.raises(ValueError, match="variant"):
        lstmkit.LSTM(3, 4, variant="nope")
    with pytest.raises(TypeError, match="variant"):
        get_spec(3)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"coupled": True}, "coupled"),
        ({"family": "gru", "peephole": True}, "lstm' family only"),
        ({"input_activation": "swish"}, "input_activation"),
        ({"block_size": 0}, "block_size"),
        ({"gate_recurrence": "some"}, "gate_recurrence"),
        ({"bias_units": "cells"}, "bias_units"),
        ({"family": "lstmx"}, "family"),
    ],
)
def test_bad_specs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CellSpec(name="bad", **kwargs)


def test_block_size_must_divide_hidden_size():
    with pytest.raises(ValueError, match="hidden_size: expected a multiple"):
        lstmkit.LSTM(3, 5, variant=lstm1997(2))


def test_layer_norm_cells_and_their_parameters():
    """Layer norm is LSTM and GRU (torch's reset placement) only; a GRU has no cell-state norm."""
    from lstmkit.cells import CellSpec
    from lstmkit.cells.reference import param_shapes

    with pytest.raises(ValueError, match="'lstm' and 'gru' families, got family='rnn'"):
        CellSpec(name="x", family="rnn", layer_norm=True)
    with pytest.raises(ValueError, match="expected reset_after=True"):
        PRESETS["gru_cho"].replace(layer_norm=True)
    shapes = param_shapes(PRESETS["layernorm_gru"], 3, 4)
    assert {n: s for n, s in shapes.items() if n.startswith("ln_")} == {
        "ln_ih_weight": (12,), "ln_hh_weight": (12,)}
