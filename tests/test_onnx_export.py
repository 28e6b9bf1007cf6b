"""ONNX export: every preset through ``torch.onnx.export`` and onnxruntime, against lstmkit itself.

Exports are slow (seconds each), so the layers are exported together: one model holds a layer of
every preset, another the layer options (both directions, stacks, ``lengths``, ``batch_first``,
``hx``, unbatched input, per-step cell states). Each export has a dynamic batch size and sequence
length, and runs in onnxruntime on the example shape and on another batch size and length; every
output must equal the eager layer's to 1e-5. The graph must use ONNX's own operator for the cells
it has one for, and a ``Scan`` for the rest.
"""

from __future__ import annotations

import ast
import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from lstmkit import GRU, LSTM, PRESETS, RNN, get_spec, onnx_export

FAMILY = {"lstm": LSTM, "gru": GRU, "rnn": RNN}
TOL = 1e-5

#: Extra cells beyond the presets: the 1997 squashings without gate recurrence (ONNX's
#: ScaledTanh), a single bias vector over the gates only, and a layer without biases.
EXTRA = {
    "squash_1997": dict(variant=PRESETS["lstm"].replace(
        name="squash_1997", input_activation="sigmoid_pm2", output_activation="sigmoid_pm1",
        bias_units="gates", double_bias=False)),
    "cifg_peephole_nobias": dict(variant="cifg_peephole", bias=False),
}

#: The ONNX operator each layer must export to, and attributes and inputs it must have.
#: Input 7 of an ONNX LSTM is P, the peepholes.
NATIVE = {
    "lstm": ("LSTM", {"input_forget": 0, "activations": ["Sigmoid", "Tanh", "Tanh"]}, False),
    "np": ("LSTM", {"input_forget": 0}, False),
    "peephole": ("LSTM", {"input_forget": 0}, True),
    "vanilla": ("LSTM", {"input_forget": 0}, True),
    "cifg": ("LSTM", {"input_forget": 1}, False),
    "cifg_peephole": ("LSTM", {"input_forget": 1}, True),
    "niaf": ("LSTM", {"activations": ["Sigmoid", "Affine", "Tanh"]}, True),
    "noaf": ("LSTM", {"activations": ["Sigmoid", "Tanh", "Affine"]}, True),
    "gru": ("GRU", {"linear_before_reset": 1}, None),
    "gru_cho": ("GRU", {"linear_before_reset": 0}, None),
    "rnn": ("RNN", {"activations": ["Tanh"]}, None),
    "rnn_relu": ("RNN", {"activations": ["Relu"]}, None),
    "squash_1997": ("LSTM", {"activations": ["Sigmoid", "ScaledTanh", "ScaledTanh"],
                             "activation_alpha": [2.0, 1.0], "activation_beta": [0.5, 0.5]},
                    False),
    "cifg_peephole_nobias": ("LSTM", {"input_forget": 1}, True),
}
SCAN = ("nig", "nfg", "nog", "fgr", "lstm1997", "layernorm", "layernorm_gru")


def _outputs(result: object) -> list[torch.Tensor]:
    """A layer's results as a flat list of tensors (the export's outputs, in order)."""
    if isinstance(result, torch.Tensor):
        return [result]
    return [t for part in result for t in _outputs(part)]


class Bundle(nn.Module):
    """Several layers behind one forward, so that one export covers them all. ``calls[name]``
    maps the forward's inputs to one layer's call."""

    def __init__(self, layers: dict[str, nn.Module], calls: dict[str, object]) -> None:
        super().__init__()
        self.layers = nn.ModuleDict(layers)
        self.calls = calls

    def run_one(self, name: str, *inputs: torch.Tensor) -> list[torch.Tensor]:
        return _outputs(self.calls[name](self.layers[name], *inputs))

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(t for name in self.layers for t in self.run_one(name, *inputs))


class Exported:
    """A bundle, its ONNX model and an onnxruntime session on it."""

    def __init__(self, bundle: Bundle, example: tuple[torch.Tensor, ...],
                 dynamic_shapes: tuple[dict[int, str], ...]) -> None:
        self.bundle = bundle.eval()
        with torch.no_grad():
            self.counts = {name: len(bundle.run_one(name, *example)) for name in bundle.layers}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # The forward takes *inputs: their dynamic shapes come as one tuple.
            program = torch.onnx.export(self.bundle, example, dynamic_shapes=(dynamic_shapes,),
                                        verbose=False)
        self.model = program.model_proto
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(self.model.SerializeToString(), options,
                                            providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def compare(self, name: str, inputs: tuple[torch.Tensor, ...]) -> None:
        """Layer ``name``'s outputs from onnxruntime equal the eager layer's to ``TOL``."""
        got = self.session.run(None, {n: t.numpy() for n, t in zip(self.input_names, inputs)})
        with torch.no_grad():
            want = self.bundle.run_one(name, *inputs)
        start = 0
        for other, count in self.counts.items():
            if other == name:
                break
            start += count
        assert len(got) == sum(self.counts.values())
        for k, expected in enumerate(want):
            have = got[start + k]
            assert have.shape == tuple(expected.shape), (name, k)
            err = float(np.abs(have - expected.numpy()).max()) if expected.numel() else 0.0
            assert err <= TOL, f"{name}: output {k} differs from lstmkit's by {err}"

    def nodes(self, name: str) -> list[onnx.NodeProto]:
        """The top-level graph nodes that layer ``name`` produced."""
        out = []
        for node in self.model.graph.node:
            meta = {p.key: p.value for p in node.metadata_props}
            scopes = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))
            if len(scopes) > 1 and scopes[1] == f"layers.{name}":
                out.append(node)
        return out


# -- every preset --------------------------------------------------------------------------------

PRESET_NAMES = list(PRESETS) + list(EXTRA)


@pytest.fixture(scope="module")
def presets() -> Exported:
    torch.manual_seed(0)
    layers = {}
    for name in PRESET_NAMES:
        kwargs = EXTRA.get(name, dict(variant=name))
        layers[name] = FAMILY[get_spec(kwargs["variant"]).family](3, 4, **kwargs)
    bundle = Bundle(layers, {name: (lambda layer, x: layer(x)) for name in layers})
    return Exported(bundle, (torch.randn(5, 2, 3),), ({0: "T", 1: "B"},))


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_every_preset_runs_in_onnxruntime_like_lstmkit(presets: Exported, name: str) -> None:
    torch.manual_seed(1)
    presets.compare(name, (torch.randn(5, 2, 3),))
    presets.compare(name, (torch.randn(9, 4, 3),))  # another length and batch size
    presets.compare(name, (torch.randn(1, 1, 3),))


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_cells_onnx_has_an_operator_for_use_it(presets: Exported, name: str) -> None:
    ops = [n.op_type for n in presets.nodes(name)]
    recurrent = [op for op in ops if op in ("LSTM", "GRU", "RNN", "Scan", "Loop")]
    if name in SCAN:
        assert recurrent == ["Scan"], (name, ops)
        return
    op, attrs, peephole = NATIVE[name]
    assert recurrent == [op], (name, ops)
    node = next(n for n in presets.nodes(name) if n.op_type == op)
    got = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    for key, value in attrs.items():
        if isinstance(value, list):
            have = [v.decode() if isinstance(v, bytes) else v for v in got[key]]
            assert have == value, (name, key, have)
        else:
            assert got[key] == value, (name, key, got[key])
    if peephole is not None:
        assert (len(node.input) > 7 and node.input[7] != "") == peephole, (name, node.input)


def test_onnx_operator_names_the_operator_of_each_cell() -> None:
    for name in SCAN:
        assert onnx_export.onnx_operator(PRESETS[name]) == "Scan"
    for name, (op, _, _) in NATIVE.items():
        if name in PRESETS:
            assert onnx_export.onnx_operator(PRESETS[name]) == op
    assert onnx_export.onnx_operator(PRESETS["lstm"], proj_size=2) == "Scan"


# -- layer options -------------------------------------------------------------------------------


def _option_layers() -> Bundle:
    torch.manual_seed(2)
    layers = {
        # native operators, both directions in one node per layer
        "lstm_stack_bi_hx": LSTM(3, 4, num_layers=2, bidirectional=True),
        "peephole_batch_first_bi": LSTM(3, 4, batch_first=True, bidirectional=True,
                                        variant="peephole"),
        "gru_cho_stack_bi": GRU(3, 4, num_layers=2, bidirectional=True, variant="gru_cho"),
        "rnn_relu_bi": RNN(3, 4, nonlinearity="relu", bidirectional=True),
        "cifg_unbatched": LSTM(3, 4, variant="cifg"),
        # Scan: a cell without an ONNX operator, a projection, per-step cell states
        "fgr_bi": LSTM(3, 4, bidirectional=True, variant="fgr"),
        "layernorm_stack_hx": LSTM(3, 4, num_layers=2, variant="layernorm"),
        "proj_batch_first_bi": LSTM(3, 4, proj_size=2, batch_first=True, bidirectional=True),
        "lstm_cell_states": LSTM(3, 4),
    }
    calls = {
        "lstm_stack_bi_hx": lambda m, x, n, h, c: m(x, (h, c), lengths=n),
        "peephole_batch_first_bi": lambda m, x, n, h, c: m(x.transpose(0, 1), lengths=n),
        "gru_cho_stack_bi": lambda m, x, n, h, c: m(x, h, lengths=n),
        "rnn_relu_bi": lambda m, x, n, h, c: m(x, lengths=n),
        "cifg_unbatched": lambda m, x, n, h, c: m(x[:, 0]),
        "fgr_bi": lambda m, x, n, h, c: m(x, lengths=n),
        "layernorm_stack_hx": lambda m, x, n, h, c: m(x, (h[:2], c[:2]), lengths=n),
        "proj_batch_first_bi": lambda m, x, n, h, c: m(x.transpose(0, 1), lengths=n),
        "lstm_cell_states": lambda m, x, n, h, c: m(x, lengths=n, return_cell_states=True),
    }
    return Bundle(layers, calls)


def _option_inputs(steps: int, lengths: list[int]) -> tuple[torch.Tensor, ...]:
    batch = len(lengths)
    x = torch.randn(steps, batch, 3)
    n = torch.tensor(lengths)
    # Padding holds NaN: it must reach no output.
    x[torch.arange(steps).unsqueeze(1) >= n] = float("nan")
    return x, n, torch.randn(4, batch, 4), torch.randn(4, batch, 4)


@pytest.fixture(scope="module")
def options() -> Exported:
    example = _option_inputs(5, [5, 2, 4])
    batch = {1: "B"}
    return Exported(_option_layers(), example,
                    ({0: "T", 1: "B"}, {0: "B"}, batch, batch))


OPTION_NAMES = list(_option_layers().layers)


@pytest.mark.parametrize("name", OPTION_NAMES)
def test_layer_options_run_in_onnxruntime_like_lstmkit(options: Exported, name: str) -> None:
    torch.manual_seed(3)
    options.compare(name, _option_inputs(5, [5, 2, 4]))
    options.compare(name, _option_inputs(8, [8, 3, 1, 6]))


def test_layer_options_keep_the_native_operator_or_scan(options: Exported) -> None:
    def recurrent(name: str) -> list[str]:
        return [n.op_type for n in options.nodes(name)
                if n.op_type in ("LSTM", "GRU", "RNN", "Scan")]

    assert recurrent("lstm_stack_bi_hx") == ["LSTM", "LSTM"]
    assert recurrent("gru_cho_stack_bi") == ["GRU", "GRU"]
    for name in ("peephole_batch_first_bi", "rnn_relu_bi", "lstm_stack_bi_hx"):
        for node in options.nodes(name):
            if node.op_type in ("LSTM", "RNN"):
                attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
                assert attrs["direction"] == b"bidirectional"
                assert node.input[4] != "", "lengths must reach the operator as sequence_lens"
    assert recurrent("cifg_unbatched") == ["LSTM"]
    assert recurrent("fgr_bi") == ["Scan"] * 2
    assert recurrent("layernorm_stack_hx") == ["Scan"] * 2
    assert recurrent("proj_batch_first_bi") == ["Scan"] * 2
    assert recurrent("lstm_cell_states") == ["Scan"]


# -- what the graph cannot express ---------------------------------------------------------------


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = LSTM(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]


def test_the_torchscript_exporter_is_refused_with_a_clear_error() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match=r"default exporter \(torch.onnx.export\(\.\.\., "
                           r"dynamo=True\)\); the TorchScript exporter \(dynamo=False\) cannot"):
            torch.onnx.export(_Model(), (torch.randn(5, 2, 3),), io.BytesIO(), dynamo=False)


def test_calls_an_onnx_graph_cannot_express_are_refused() -> None:
    layer = LSTM(3, 4)
    x = torch.randn(5, 2, 3)
    packed = pack_padded_sequence(x, torch.tensor([5, 3]))
    with pytest.raises(TypeError, match="input: ONNX export takes a padded tensor"):
        onnx_export.forward(layer, packed)
    with pytest.raises(ValueError, match="check_finite: an exported graph cannot raise"):
        onnx_export.forward(layer, x, check_finite=True)
    with pytest.raises(TypeError, match="lengths: expected an integer tensor"):
        onnx_export.forward(layer, x, lengths=torch.tensor([5.0, 3.0]))


def test_ordinary_calls_do_not_take_the_export_path() -> None:
    assert not onnx_export.exporting()
