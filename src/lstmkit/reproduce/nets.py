"""The networks and training settings that ``lstmkit reproduce`` compares.

* ``paper``: the ``lstm1997`` cell configured from the task's :class:`PaperSetting` (blocks,
  squashing, connectivity, biased units, initial gate biases, weight range), trained by
  on-line gradient descent (batch 1) at the paper's learning rate, no gradient clipping. The
  paper's error E = sum_k (t_k - y_k)^2 is differentiated as in its appendix, whose error signal
  is f'(net_k) (t_k - y_k) without the factor 2; with the task's SSE loss that is learning rate
  α / 2. Where errors occur at every time step (Exps. 1, 2a, 2b: :data:`EVERY_STEP_ROWS`) the
  paper's weights change after every step, which the once-per-sequence update does not
  reproduce, so those rows' ``lstm1997`` nets train by the paper's own rule
  (:class:`lstmkit.train.online.OnlineTrainer` at α, ``Recipe.online``). Where errors occur at
  sequence ends only, the two are the same update.
* ``modern``: what a practitioner would train today: the default ``lstm`` cell with the hidden
  size of :data:`MODERN_HIDDEN` for the row (the smallest of 16, 32, 64 that solved the row in a
  short pilot run), chrono initialisation for dependencies as long as the row's longest
  sequence (``chrono_init``, see :class:`lstmkit.LSTM`), Adam at 1e-2, minibatches of 16,
  gradient clipping at norm 1. Where the task's target at each step is one-hot (a one-of-N
  choice: Exps. 1, 2a-2c, 6), a softmax readout trained by cross-entropy
  (:meth:`~lstmkit.tasks.base.Task.with_softmax_readout`); the paper's success criteria read
  its probabilities. Elsewhere the task's own readout and loss.
* ``modern-fb1``: the ``modern`` net and training with the older default initialisation, a
  forget-gate bias of 1 (Gers et al. 2000; Jozefowicz et al. 2015), so that a comparison of the
  two shows what the initialisation alone does.
* Any other ``--cell`` (``rnn`` for the plain-RNN baseline) uses the same setting's optimiser
  and budget with a layer of that cell sized to the weight count of the setting's own net (the
  paper's net; under the modern settings the modern LSTM). Cells with a forget gate (GRU: the
  update gate) get the setting's initialisation; the others torch's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..cells.spec import CellSpec, get_spec, lstm1997
from ..layers import GRU, LSTM, RNN
from ..models import SequenceModel
from ..tasks.base import PaperSetting, Task
from ..train.trainer import TrainConfig

SETTINGS = ("paper", "modern", "modern-fb1")
#: Table 10 rows whose error signals occur at every time step (§5: "Except for Experiments 1,
#: 2a, and 2b, ... error signals are generated only at sequence ends").
EVERY_STEP_ROWS = ("1-1", "1-2", "1-3", "1-4", "1-5", "2a", "2b")
#: The settings that train :func:`modern_hidden`'s net with Adam, minibatches and clipping.
MODERN_SETTINGS = ("modern", "modern-fb1")

#: The modern LSTM's hidden size per Table 10 row: the smallest of 16, 32, 64 whose pilot run
#: solved every trial (docs/modern-setting-notes.md has the runs). Each pilot, per size H, was
#: ``run(EXP, setting="modern", trials=K, seed=S, workers=1, max_sequences=N, progress=False)``
#: on one thread with this table's entry set to H. Rows without a pilot get
#: :data:`DEFAULT_MODERN_HIDDEN`, the middle of the sweep.
MODERN_HIDDEN: dict[str, int] = {
    # exp1, one by one (group=False): K=4, S=100 and K=8, S=200, N=20,000. 16: 2 of 4;
    # 32: 12 of 12, mean 10,400; 64: 10 of 12, mean 7,200.
    "1-5": 32,
    # exp3a: K=4, S=100, N=40,000. 16: 4 of 4, mean 4,000.
    "3a": 16,
    # exp4-T100: K=4, S=100, N=40,000, and K=10, S=1000, N=148,000 (the default budget).
    # 16: 4 of 4, mean 32,000; 10 of 10, mean 30,300.
    "4-1": 16,
    # exp6a: K=4, S=100, N=40,000. 16: 4 of 4, mean 8,900.
    "6a": 16,
}
DEFAULT_MODERN_HIDDEN = 32


@dataclass(frozen=True)
class Recipe:
    """How to train one trial: the network, the optimiser, the batch size.

    ``init`` is how the forget gates start beyond the layer's default: ``"paper"`` (the
    paper's per-row weights and gate biases, ``init_range``), ``"chrono"`` (chrono
    initialisation for the row's longest sequence), ``"forget_bias_1"`` or ``None`` (torch's).
    ``online``: train by the paper's per-time-step rule (:mod:`lstmkit.train.online`) at
    learning rate ``2 * lr`` (the paper's α) instead of ``optimizer``.
    ``softmax_one_hot``: train tasks whose targets are one-hot through a softmax readout with
    cross-entropy (:func:`task_for`); other tasks, and every task without it, keep the task's
    own readout and loss.
    """

    setting: str
    cell: str
    optimizer: str
    lr: float
    batch_size: int
    clip_norm: float | None
    init_range: float | None
    init: str | None = None
    online: bool = False
    softmax_one_hot: bool = False


def task_for(task: Task, recipe: Recipe) -> Task:
    """``task`` as ``recipe`` trains it: with a softmax readout and cross-entropy where the
    recipe asks for one and the task's targets are one-hot, else unchanged."""
    if recipe.softmax_one_hot and task.one_hot_targets:
        return task.with_softmax_readout()
    return task


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
           gate_init: dict[str, Any] | None = None) -> LSTM | GRU | RNN:
    kwargs = gate_init if gate_init and has_forget_gate(spec) else {}
    if spec.family == "lstm":
        return LSTM(input_size, hidden, variant=spec, **kwargs)
    return {"gru": GRU, "rnn": RNN}[spec.family](input_size, hidden, variant=spec, **kwargs)


def _model(task: Task, spec: CellSpec, hidden: int, setting: PaperSetting | None,
           gate_init: dict[str, Any] | None = None) -> SequenceModel:
    output_bias = setting.output_bias if setting is not None else True
    shortcut = setting.input_shortcut if setting is not None else False
    return SequenceModel(_layer(spec, task.input_size, hidden, gate_init), task.output_size,
                         output_bias=output_bias, input_shortcut=shortcut,
                         output_activation=task.output_activation)


def has_forget_gate(spec: CellSpec) -> bool:
    """Whether the layer's ``forget_bias``/``chrono_init`` apply to ``spec``: an LSTM-family
    cell with a forget gate (or one coupled to its input gate) and a bias on it, or a GRU (its
    update gate)."""
    if spec.family == "gru":
        return spec.bias_units != "none"
    if spec.family != "lstm" or not (spec.forget_gate or spec.coupled):
        return False
    return ("i" if spec.coupled else "f") in spec.biased_blocks()


_LONGEST: dict[tuple[str, str], int] = {}


def longest_sequence(task: Task, sample: int = 128) -> int:
    """The longest of ``sample`` sequences of ``task`` drawn from a fixed generator (seed 0):
    the row's longest sequence for tasks whose lengths lie in a short range (the paper's tasks:
    T to T + T/10, 100 to 110), a typical long one for the open-ended Reber strings. Drawn in
    small batches, since some rows have thousand-step, thousand-wide inputs."""
    key = (type(task).__qualname__, repr(sorted(task.params.items())))
    if key not in _LONGEST:
        gen = torch.Generator().manual_seed(0)
        _LONGEST[key] = max(int(task.sample(8, generator=gen).lengths.max())
                            for _ in range(max(1, sample // 8)))
    return _LONGEST[key]


def modern_hidden(setting: PaperSetting) -> int:
    """The modern LSTM's hidden size for ``setting``'s row (:data:`MODERN_HIDDEN`)."""
    return MODERN_HIDDEN.get(setting.row, DEFAULT_MODERN_HIDDEN)


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
    """Weights uniform in [-r, r]; Table 10's per-block input/output gate biases; the input
    gates' input weights shifted by ``setting.input_gate_shift``."""
    r = setting.init_range
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-r, r)
        layer = model.layer
        if setting.input_gate_shift:
            layer.weight_ih_l0[layer.layout.blocks["i"]] += setting.input_gate_shift
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
    """A freshly initialised network for ``recipe`` (seed torch first); its readout is that of
    :func:`task_for`, which gives the task to train it on."""
    task = task_for(task, recipe)
    if recipe.setting == "paper" and recipe.cell == "lstm1997":
        if setting.output_activation != task.output_activation:
            # The net's output units are the task's (its loss and criteria read them); a row
            # asking for others would otherwise be built without them.
            raise ValueError(f"setting {setting.row}: output_activation "
                             f"{setting.output_activation!r} differs from the task's "
                             f"{task.output_activation!r}")
        spec = paper_spec(setting)
        model = _model(task, spec, setting.blocks * setting.cells_per_block, setting)
        if setting.weights is not None and model.num_weights() != setting.weights:
            raise ValueError(f"setting {setting.row}: built {model.num_weights()} weights, the "
                             f"paper has {setting.weights}")
        _init_paper(model, setting)
        return model
    spec = get_spec(recipe.cell)
    if recipe.setting in MODERN_SETTINGS:
        gate_init: dict[str, Any] | None = None
        if recipe.init == "chrono" and has_forget_gate(spec):
            gate_init = {"chrono_init": max(2, longest_sequence(task))}
        elif recipe.init == "forget_bias_1":
            gate_init = {"forget_bias": 1.0}
        hidden = modern_hidden(setting)
        if recipe.cell != "lstm":
            # Another cell gets the modern LSTM net's weight count.
            target = _model(task, get_spec("lstm"), hidden, None).num_weights()
            hidden = matched_hidden(task, spec, target)
        return _model(task, spec, hidden, None, gate_init)
    target = setting.weights or 100
    hidden = matched_hidden(task, spec, target, setting)
    model = _model(task, spec, hidden, setting)
    if recipe.init_range is not None:
        with torch.no_grad():
            for p in model.parameters():
                p.uniform_(-recipe.init_range, recipe.init_range)
    return model


def recipe_for(setting_name: str, cell: str | None, setting: PaperSetting) -> Recipe:
    """The training recipe of ``setting_name`` (one of :data:`SETTINGS`) for ``cell``."""
    if setting_name not in SETTINGS:
        raise ValueError(f"setting: expected one of {SETTINGS}, got {setting_name!r}")
    if setting_name == "paper":
        cell = cell or "lstm1997"
        get_spec(cell)  # unknown names fail here, listing the valid ones
        return Recipe("paper", cell, "sgd", setting.learning_rate / 2, 1, None,
                      setting.init_range, "paper",
                      online=cell == "lstm1997" and setting.row in EVERY_STEP_ROWS)
    cell = cell or "lstm"
    get_spec(cell)
    init = "chrono" if setting_name == "modern" else "forget_bias_1"
    return Recipe(setting_name, cell, "adam", 1e-2, 16, 1.0, None, init, softmax_one_hot=True)


def train_config(recipe: Recipe, *, max_sequences: int, seed: int, test_size: int,
                 check_every: int, checkpoint_every: int = 0) -> TrainConfig:
    return TrainConfig(
        optimizer=recipe.optimizer, lr=recipe.lr, batch_size=recipe.batch_size,
        max_sequences=max_sequences, clip_norm=recipe.clip_norm, check_every=check_every,
        checkpoint_every=checkpoint_every, test_size=test_size, seed=seed,
        log_every=max(recipe.batch_size, max_sequences // 100),
    )
