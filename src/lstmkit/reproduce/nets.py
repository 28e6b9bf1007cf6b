"""The networks and training settings that ``lstmkit reproduce`` compares.

* ``paper``: the ``lstm1997`` cell configured from the task's :class:`PaperSetting` (blocks,
  squashing, connectivity, biased units, initial gate biases, weight range), trained by plain
  on-line gradient descent (batch 1) at the paper's learning rate, no gradient clipping. The
  paper's error E = sum_k (t_k - y_k)^2 is differentiated as in its appendix, whose error signal
  is f'(net_k) (t_k - y_k) without the factor 2; with the task's SSE loss that is learning rate
  α / 2, which is what we use.
* ``modern``: the default ``lstm`` cell (forget gate, forget-gate bias 1), Adam, minibatches,
  gradient clipping, the hidden size whose weight count is closest to the paper's net but at
  least the paper's number of memory cells.
* Any other ``--cell`` (``rnn`` for the plain-RNN baseline) uses the same setting's optimiser
  and budget with a layer of that cell sized to the same weight count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..cells.spec import CellSpec, get_spec, lstm1997
from ..layers import GRU, LSTM, RNN
from ..models import SequenceModel
from ..tasks.base import PaperSetting, Task
from ..train.trainer import TrainConfig

SETTINGS = ("paper", "modern")


@dataclass(frozen=True)
class Recipe:
    """How to train one trial: the network, the optimiser, the batch size."""

    setting: str
    cell: str
    optimizer: str
    lr: float
    batch_size: int
    clip_norm: float | None
    init_range: float | None


def paper_spec(setting: PaperSetting) -> CellSpec:
    """The ``lstm1997`` cell of a Table 10 row."""
    layered = setting.connectivity == "B"  # Exp. 2a/2b: no hidden recurrence at all
    return lstm1997(
        setting.cells_per_block,
        output_gate=setting.output_gate,
        input_activation=setting.g,
        output_activation=setting.h,
        bias_units=setting.bias_units,
        gate_recurrence="none" if layered else "all",
        hidden_recurrence=not layered,
    )


def _layer(spec: CellSpec, input_size: int, hidden: int,
           forget_bias: float | None = None) -> LSTM | GRU | RNN:
    if spec.family == "lstm":
        return LSTM(input_size, hidden, variant=spec, forget_bias=forget_bias)
    return {"gru": GRU, "rnn": RNN}[spec.family](input_size, hidden, variant=spec)


def _model(task: Task, spec: CellSpec, hidden: int, setting: PaperSetting | None,
           forget_bias: float | None = None) -> SequenceModel:
    output_bias = setting.output_bias if setting is not None else True
    shortcut = setting.input_shortcut if setting is not None else False
    return SequenceModel(_layer(spec, task.input_size, hidden, forget_bias), task.output_size,
                         output_bias=output_bias, input_shortcut=shortcut,
                         output_activation=task.output_activation)


def matched_hidden(task: Task, spec: CellSpec, weights: int,
                   setting: PaperSetting | None = None) -> int:
    """The hidden size (a multiple of the block size) whose weight count is closest to
    ``weights``."""
    best, best_gap = spec.block_size, None
    for hidden in range(spec.block_size, 4097, spec.block_size):
        count = _model(task, spec, hidden, setting).num_weights()
        gap = abs(count - weights)
        if best_gap is None or gap < best_gap:
            best, best_gap = hidden, gap
        if count > weights:
            break
    return best


def _init_paper(model: SequenceModel, setting: PaperSetting) -> None:
    """Weights uniform in [-r, r]; Table 10's per-block input/output gate biases."""
    r = setting.init_range
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-r, r)
        layer = model.layer
        bias = getattr(layer, "bias_ih_l0", None)
        if bias is None:
            return
        lay = layer.layout
        for name in layer.spec.biased_blocks():
            rows = lay.bias_slice(name)
            width = rows.stop - rows.start
            given = {"i": setting.input_gate_bias, "o": setting.output_gate_bias}.get(name)
            if isinstance(given, tuple):
                if len(given) != width:
                    raise ValueError(f"setting {setting.row}: {len(given)} biases for {width} "
                                     f"blocks of gate {name!r}")
                bias[rows] = torch.tensor(given, dtype=bias.dtype)


def build(task: Task, setting: PaperSetting, recipe: Recipe) -> SequenceModel:
    """A freshly initialised network for ``recipe`` (seed torch first)."""
    if recipe.setting == "paper" and recipe.cell == "lstm1997":
        spec = paper_spec(setting)
        model = _model(task, spec, setting.blocks * setting.cells_per_block, setting)
        if setting.weights is not None and model.num_weights() != setting.weights:
            raise ValueError(f"setting {setting.row}: built {model.num_weights()} weights, the "
                             f"paper has {setting.weights}")
        _init_paper(model, setting)
        return model
    spec = get_spec(recipe.cell)
    target = setting.weights or 100
    paper_like = setting if recipe.setting == "paper" else None
    # The modern recipe's forget-gate bias of 1 (Gers et al. 2000; Jozefowicz et al. 2015).
    forget_bias = 1.0 if recipe.init_range is None and spec.forget_gate else None
    hidden = matched_hidden(task, spec, target, paper_like)
    if recipe.setting == "modern":
        # At least as many units as the paper's net has memory cells: matching the weight
        # count alone gives the adding problem's modern LSTM 3 units, which fails where 4 learn.
        cells = setting.blocks * setting.cells_per_block
        hidden = max(hidden, -(-cells // spec.block_size) * spec.block_size)
    model = _model(task, spec, hidden, paper_like, forget_bias)
    if recipe.init_range is not None:
        with torch.no_grad():
            for p in model.parameters():
                p.uniform_(-recipe.init_range, recipe.init_range)
    return model


def recipe_for(setting_name: str, cell: str | None, setting: PaperSetting) -> Recipe:
    """The training recipe of ``setting_name`` (``paper``/``modern``) for ``cell``."""
    if setting_name not in SETTINGS:
        raise ValueError(f"setting: expected one of {SETTINGS}, got {setting_name!r}")
    if setting_name == "paper":
        cell = cell or "lstm1997"
        get_spec(cell)  # unknown names fail here, listing the valid ones
        return Recipe("paper", cell, "sgd", setting.learning_rate / 2, 1, None,
                      setting.init_range)
    cell = cell or "lstm"
    get_spec(cell)
    return Recipe("modern", cell, "adam", 1e-2, 16, 1.0, None)


def train_config(recipe: Recipe, *, max_sequences: int, seed: int, test_size: int,
                 check_every: int, checkpoint_every: int = 0) -> TrainConfig:
    return TrainConfig(
        optimizer=recipe.optimizer, lr=recipe.lr, batch_size=recipe.batch_size,
        max_sequences=max_sequences, clip_norm=recipe.clip_norm, check_every=check_every,
        checkpoint_every=checkpoint_every, test_size=test_size, seed=seed,
        log_every=max(recipe.batch_size, max_sequences // 100),
    )
