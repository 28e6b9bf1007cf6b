"""Many independent trials as one computation: K networks of one structure trained side by side.

A trial of the paper's experiments is a tiny net (93 weights for the adding problem) trained on
one sequence at a time; per sequence, nearly all the time of an ordinary training step is
overhead (Python, autograd, dispatch, the optimiser), not arithmetic. Here the K networks of a
group become one network whose weight matrices are block-diagonal: trial k owns its own rows
and columns of every matrix and nothing else, so one forward and one backward through the fused
engine serve all K at the cost of one. Each trial keeps its own weights, optimiser state, data
stream, stopping rules and checkpoint; its gradient is exactly its own loss's (the off-diagonal
blocks are constant zeros, not parameters), so what a trial does does not depend on which
trials train beside it, up to float rounding.

The weights of a group live in one matrix ``[K, N]`` (N the trial's weight count, in its
``parameters()`` order); every trial's model holds views of its row, so its
:class:`~lstmkit.train.Trainer` tests, checkpoints and callbacks see the group's current weights
without copies. :class:`BlockDiagonal` is the layout (where each trial's weights sit in the
merged network), :class:`TrialGroup` the computation (forward, gradient, per-trial clipping,
SGD or Adam), :func:`train_trials` the schedule: it draws each trial's sequences in chunks of
``chunk`` from the trial's own generator, steps the group, hands each trial's results to its
trainer, and refills the slot of a trial that has finished with the next one waiting.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import engine
from ..cells.layout import layout
from ..engine import _build
from ..engine import _function as kernels
from ..models import SequenceModel, apply_readout, log_probs_of, with_log_probs
from ..tasks.protocol import Batch
from .config import TrainResult
from .trainer import Trainer

__all__ = ["BlockDiagonal", "StepResult", "Trial", "TrialGroup", "chunk_for", "group_size",
           "mergeable", "train_trials"]

#: Batches each trial draws from its generator at a time (a trial's data depends on it).
CHUNK = 50
#: The most input numbers one trial's chunk may hold (2 GiB as float32); rows whose batches
#: are larger draw fewer batches at a time (:func:`chunk_for`).
CHUNK_ELEMENTS = 1 << 29
#: The most arithmetic a group step may do, as dense merged weights times sequences per trial
#: (K^2 N B): the block-diagonal matrices hold K^2 N numbers for K N useful ones, so beyond this
#: the wasted arithmetic costs more than the per-step overhead that one computation for all
#: trials saves. The paper's nets (N about 100, B = 1) group by 32; a modern net of 32 units
#: trained on batches of 16 (N about 4,500) is cheaper trained alone.
MAX_GROUP_WORK = 1 << 18
MAX_SLOTS = 32

_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8


def mergeable(model: Any) -> str | None:
    """Why ``model`` cannot train in a group (None when it can)."""
    if not isinstance(model, SequenceModel):
        return f"expected a lstmkit.models.SequenceModel, got {type(model).__name__}"
    if type(model).forward is not SequenceModel.forward:
        return "a model that changes SequenceModel.forward computes what a group cannot know"
    layer = model.layer
    if layer.num_layers != 1 or layer.bidirectional:
        return "only single-layer, unidirectional nets train in groups"
    if layer.spec.layer_norm:
        # One block-diagonal net would normalise over every trial's cells at once.
        return "layer normalisation mixes the statistics of trials merged into one net"
    reason = engine.unsupported(layer.spec, None)
    if reason is not None:
        return reason
    if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in model.parameters()):
        return "groups train float32 networks on the CPU"
    return None


def chunk_for(batch_elements: int) -> int:
    """Batches per draw for batches of ``batch_elements`` input numbers: :data:`CHUNK`, or
    fewer where :data:`CHUNK` of them would exceed :data:`CHUNK_ELEMENTS` (only rows with
    thousand-step, thousand-wide inputs, such as Exp. 2c at q = p = 1000)."""
    if batch_elements < 1:
        raise ValueError(f"batch_elements: expected a positive int, got {batch_elements!r}")
    return max(1, min(CHUNK, CHUNK_ELEMENTS // batch_elements))


def group_size(model: SequenceModel, trials: int, batch_size: int = 1) -> int:
    """How many trials of ``model``'s structure, trained on batches of ``batch_size``, to train
    as one group (see :data:`MAX_GROUP_WORK`)."""
    work = max(1, model.num_weights()) * max(1, batch_size)
    fit = int(math.isqrt(MAX_GROUP_WORK // work)) if work <= MAX_GROUP_WORK else 1
    return max(1, min(trials, MAX_SLOTS, fit))


def _segments(model: SequenceModel) -> dict[str, tuple[tuple[int, ...], ...]]:
    """For every parameter, the blocks along each dimension: a merged dimension stacks, block
    by block, the K trials' copies of each block (trial k's rows of gate i, then of gate f...)."""
    layer = model.layer
    spec, hidden = layer.spec, layer.hidden_size
    lay = layout(spec, hidden, layer.proj_size)

    def widths(names: tuple[str, ...]) -> tuple[int, ...]:
        return tuple(w for n, w in lay.widths.items() if n in names)

    every = tuple(lay.widths.values())
    dims = {
        "weight_ih": (every, (layer.input_size,)),
        "weight_hh": (every, (lay.out_size,)),
        "bias_ih": (widths(spec.biased_blocks()),),
        "bias_hh": (widths(spec.biased_blocks()),),
        "weight_hr": ((lay.out_size,), (hidden,)),
        "weight_gh": (widths(spec.gate_recurrent_blocks()),
                      tuple(lay.widths[g] for g in spec.gate_names)),
    }
    out: dict[str, tuple[tuple[int, ...], ...]] = {}
    for name, _ in layer.named_parameters():
        short = name.removesuffix("_l0")
        if short.startswith("weight_c") and short not in dims:
            out[f"layer.{name}"] = ((hidden,),)
        elif short in dims:
            out[f"layer.{name}"] = dims[short]
        else:
            raise ValueError(f"model: the parameter {name} has no block layout")
    features = (lay.out_size,) + ((layer.input_size,) if model.input_shortcut else ())
    out["readout.weight"] = ((model.readout.out_features,), features)
    if model.readout.bias is not None:
        out["readout.bias"] = ((model.readout.out_features,),)
    return out


def _merged_index(segments: tuple[int, ...], slots: int) -> tuple[Tensor, int]:
    """Along one dimension: ``[slots, solo]`` merged positions of each trial's entries."""
    rows, start = [], 0
    for width in segments:
        base = slots * start + torch.arange(slots).unsqueeze(1) * width
        rows.append(base + torch.arange(width))
        start += width
    return torch.cat(rows, 1), slots * start


class BlockDiagonal:
    """Where each of ``slots`` copies of ``model``'s weights sits in one merged network.

    ``index`` ``[slots, N]`` holds, for trial k's i-th weight (in ``model.parameters()`` order,
    flattened), its position in the merged network's flat weight vector of ``size`` entries.
    """

    def __init__(self, model: SequenceModel, slots: int) -> None:
        reason = mergeable(model)
        if reason is not None:
            raise ValueError(f"model: {reason}")
        if not isinstance(slots, int) or slots < 1:
            raise ValueError(f"slots: expected a positive int, got {slots!r}")
        self.slots = slots
        layer = model.layer
        self.spec = layer.spec
        self.hidden_size = slots * layer.hidden_size
        self.input_size = slots * layer.input_size
        self.output_size = slots * model.readout.out_features
        self.solo_outputs = model.readout.out_features
        self.input_shortcut = model.input_shortcut
        self.output_activation = model.output_activation
        proj = layer.proj_size
        self.layout = layout(self.spec, self.hidden_size, slots * proj)
        segments = _segments(model)
        self.names: list[str] = []
        self.shapes: list[tuple[int, ...]] = []
        self.solo_shapes: list[tuple[int, ...]] = []
        pieces, offset = [], 0
        for name, p in model.named_parameters():
            dims = segments[name]
            index, shape = None, []
            for d, seg in enumerate(dims):
                pos, size = _merged_index(seg, slots)
                shape.append(size)
                if index is None:
                    index = pos
                else:
                    index = index.unsqueeze(-1) * size + pos.view(slots, *([1] * d), -1)
            shape_t = tuple(shape)
            pieces.append(offset + index.reshape(slots, -1))
            offset += math.prod(shape_t)
            self.names.append(name)
            self.shapes.append(shape_t)
            self.solo_shapes.append(tuple(p.shape))
        self.index = torch.cat(pieces, 1)
        self.size = offset
        self.numels = [math.prod(s) for s in self.shapes]
        self.weights = self.index.shape[1]
        self.flat_index = self.index.reshape(-1)

    def merge(self, packed: Tensor) -> dict[str, Tensor]:
        """The merged network's parameters from ``packed`` ``[slots, N]`` (differentiable)."""
        if self.slots == 1:  # one trial's weights are the network's, in the same order
            flat = packed.reshape(-1)
        else:
            flat = packed.new_zeros(self.size).index_copy(0, self.flat_index, packed.reshape(-1))
        return {name: part.view(shape) for name, part, shape in
                zip(self.names, flat.split(self.numels), self.shapes)}

    def forward(self, packed: Tensor, x: Tensor) -> Tensor:
        """Outputs ``[T, B, slots * outputs]`` of the merged network on ``x``
        ``[T, B, slots * inputs]`` (trial k's features are the k-th block)."""
        p = self.merge(packed)
        layer = {n.removeprefix("layer.").removesuffix("_l0"): t for n, t in p.items()
                 if n.startswith("layer.")}
        batch = x.shape[1]
        carry = tuple(x.new_zeros(batch, s) for s in self.layout.state_sizes)
        hidden, _, _ = engine.scan(self.spec, layer, x, carry, hidden_size=self.hidden_size)
        if self.input_shortcut:
            hidden = torch.cat([hidden, x], -1)
        y = F.linear(hidden, p["readout.weight"], p.get("readout.bias"))
        return apply_readout(self.output_activation, y, self.solo_outputs)

    def to_merged_inputs(self, x: Tensor) -> Tensor:
        """``[T, slots * B, in]`` (trial-major columns) as the merged net reads it."""
        steps, columns, width = x.shape
        batch = columns // self.slots
        return x.view(steps, self.slots, batch, width).transpose(1, 2).reshape(
            steps, batch, self.slots * width)

    def to_merged_outputs(self, y: Tensor) -> Tensor:
        """The inverse of :meth:`to_columns`."""
        steps, columns, width = y.shape
        batch = columns // self.slots
        return y.view(steps, self.slots, batch, width).transpose(1, 2).reshape(
            steps, batch, self.slots * width)

    def to_columns(self, y: Tensor) -> Tensor:
        """The merged outputs ``[T, B, slots * out]`` as ``[T, slots * B, out]`` (with their
        log-probabilities rearranged alike where a softmax readout attached them)."""
        steps, batch, _ = y.shape
        columns = y.view(steps, batch, self.slots, self.solo_outputs).transpose(1, 2).reshape(
            steps, self.slots * batch, self.solo_outputs)
        log_y = log_probs_of(y)
        return columns if log_y is None else with_log_probs(columns, self.to_columns(log_y))


def _readout_backward(name: str, y: Tensor, d_y: Tensor, width: int) -> Tensor:
    """The gradient with respect to the readout's pre-activations, from its outputs ``y`` and
    their gradient ``d_y``. A softmax over each trial's ``width`` units mixes them (its
    Jacobian is diag(y) - y y^T per trial); the other activations act unit by unit."""
    if name == "softmax":
        y3, d3 = y.unflatten(-1, (-1, width)), d_y.unflatten(-1, (-1, width))
        return (y3 * (d3 - (d3 * y3).sum(-1, keepdim=True))).flatten(-2)
    return d_y * _activation_slope(name, y)


def _activation_slope(name: str, y: Tensor) -> Tensor | float:
    """d act / d z of the readout's elementwise activation, from its output ``y``."""
    if name == "sigmoid":
        return y * (1.0 - y)
    if name == "tanh":
        return 1.0 - y * y
    if name == "identity":
        return 1.0
    raise ValueError(f"output_activation: expected identity, sigmoid or tanh, got {name!r}")


class CompiledChunk:
    """A chunk's sequences as :meth:`TrialGroup.run_steps` reads them (per step, the merged
    network's inputs, targets, loss mask and loss scale) and the buffers it fills (outputs,
    losses, and the weights after every step)."""

    def __init__(self, group: TrialGroup, merged: Batch, chunk: int, batch_size: int) -> None:
        slots, steps = group.slots, merged.steps
        width = slots * batch_size

        def per_step(t: Tensor) -> Tensor:  # [T, chunk * width, F] -> [chunk, T, B, slots * F]
            f = t.shape[-1]
            return t.view(steps, chunk, slots, batch_size, f).permute(1, 0, 3, 2, 4).reshape(
                chunk, steps, batch_size, slots * f)

        task_mask = merged.mask.view(steps, chunk, slots, batch_size)
        self.x = per_step(merged.inputs.to(torch.float32)).contiguous()
        self.targets = per_step(merged.targets.to(torch.float32)).contiguous()
        self.mask = task_mask.permute(1, 0, 3, 2).to(torch.float32).contiguous()
        self.steps = merged.lengths.view(chunk, width).max(1).values.clamp(min=1).to(
            torch.int64).contiguous()
        self.outputs = torch.zeros(chunk, steps, batch_size, slots * group.blocks.solo_outputs)
        self.losses = torch.zeros(chunk, slots)
        self.history = torch.empty(chunk, slots, group.blocks.weights)
        if group.optimizer == "adam":
            self.hist_avg = torch.empty_like(self.history)
            self.hist_avg_sq = torch.empty_like(self.history)
            self.hist_steps = torch.empty(chunk, slots, 1, dtype=torch.float64)
        self.chunk, self.slots, self.batch_size = chunk, slots, batch_size

    def set_scale(self, loss_kind: str, mask: Tensor) -> None:
        """Each trial's loss scale per step, as :meth:`Task.group_loss_grad` computes it."""
        if loss_kind == "sse":
            self.scale = torch.full((self.chunk, self.slots), 1.0 / self.batch_size)
        else:
            counts = mask.sum(0).view(self.chunk, self.slots, self.batch_size).sum(2)
            self.scale = (1.0 / counts.to(torch.float32)).contiguous()

    def columns(self, first: int, last: int) -> Tensor:
        """The outputs of steps ``[first, last)`` as ``[T, columns, out]`` in the chunk's
        column order (step-major, then trial-major)."""
        n = last - first
        out = self.outputs[first:last]
        steps, solo = out.shape[1], out.shape[-1] // self.slots
        return out.view(n, steps, self.batch_size, self.slots, solo).permute(
            1, 0, 3, 2, 4).reshape(steps, n * self.slots * self.batch_size, solo)


@dataclass
class StepResult:
    """One group step: the outputs (``[T, slots * B, out]``, trial-major), each trial's loss
    and gradient norm (before clipping), and whether both were finite."""

    outputs: Tensor
    losses: list[float]
    finite: list[bool]
    norms: list[float]

    def what_diverged(self, slot: int) -> str:
        """Which of the slot's loss and gradient norm stopped being finite, with its value."""
        if math.isfinite(self.losses[slot]):
            return f"gradient norm became {self.norms[slot]}"
        return f"loss became {self.losses[slot]}"


class TrialGroup:
    """``slots`` networks of one structure, their weights in one ``[slots, N]`` matrix, trained
    by one computation per step (see the module docstring).

    ``optimizer`` is ``"sgd"`` (plain gradient descent) or ``"adam"`` (torch's defaults, each
    trial with its own step count), ``clip_norm`` clips each trial's gradient norm by itself.
    """

    def __init__(self, model: SequenceModel, slots: int, *, optimizer: str, lr: float,
                 clip_norm: float | None) -> None:
        self.blocks = BlockDiagonal(model, slots)
        self.slots = slots
        self._call = kernels.Call(self.blocks.spec, self.blocks.layout, False)
        self._zero_carry: dict[int, dict[str, Tensor | None]] = {}
        self.optimizer, self.lr, self.clip_norm = optimizer, float(lr), clip_norm
        n = self.blocks.weights
        self.packed = torch.zeros(slots, n)
        self.live = [False] * slots
        self._index: tuple[Tensor, list[int]] | None = None
        if optimizer == "adam":
            self.exp_avg = torch.zeros(slots, n)
            self.exp_avg_sq = torch.zeros(slots, n)
            self.steps = torch.zeros(slots, 1, dtype=torch.float64)

    # -- slots ---------------------------------------------------------------------------------

    def attach(self, slot: int, model: SequenceModel, adam_state: dict[str, Tensor] | None
               = None) -> None:
        """Put ``model``'s weights (and Adam state) into ``slot``; from now on the model's
        parameters are views of the group's weights."""
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        if flat.numel() != self.blocks.weights:
            raise ValueError(f"model: expected {self.blocks.weights} weights, got {flat.numel()}")
        self.packed[slot] = flat
        offset = 0
        for p in model.parameters():
            p.data = self.packed[slot, offset:offset + p.numel()].view(p.shape)
            offset += p.numel()
        if self.optimizer == "adam":
            state = adam_state or {}
            zeros = torch.zeros(self.blocks.weights)
            self.exp_avg[slot] = state.get("exp_avg", zeros)
            self.exp_avg_sq[slot] = state.get("exp_avg_sq", zeros)
            self.steps[slot] = float(state.get("step", 0.0))
        self.live[slot] = True

    def detach(self, slot: int, model: SequenceModel) -> None:
        """Give ``model`` its own copy of its weights back and empty ``slot`` (zero weights,
        which contribute nothing to the other trials)."""
        for p in model.parameters():
            p.data = p.data.clone()
        self.packed[slot] = 0.0
        self.live[slot] = False

    def adam_state(self, slot: int) -> dict[str, Tensor]:
        """``slot``'s Adam state as flat tensors."""
        return {"exp_avg": self.exp_avg[slot].clone(), "exp_avg_sq": self.exp_avg_sq[slot].clone(),
                "step": self.steps[slot, 0].clone().float()}

    # -- many steps in compiled code -----------------------------------------------------------

    def compiled_for(self, task: Any) -> bool:
        """Whether :meth:`run_steps` can train this group on ``task``: an LSTM-family net with
        an identity, sigmoid or tanh readout, and the squared-error loss of
        :class:`~lstmkit.tasks.base.Task` (not one a task defines itself). A softmax readout
        with cross-entropy takes the Python step loop (:meth:`step`)."""
        from ..tasks.base import Task  # the tasks import the trainer's package

        kind = type(task)
        return (self.blocks.spec.family == "lstm"
                and self.blocks.output_activation in ("identity", "sigmoid", "tanh")
                and isinstance(task, Task) and task.loss_kind in ("sse", "mse")
                and kind.loss is Task.loss and kind.group_loss is Task.group_loss
                and kind.group_loss_grad is Task.group_loss_grad)

    def _operand_index(self) -> tuple[Tensor, list[int]]:
        """Where every entry of the engine's operands sits in ``packed`` flattened (``slots *
        N`` for a constant zero): the operands are built, exactly as :meth:`_kernel_gradient`
        builds them, from weights that are their own 1-based positions."""
        if self._index is not None:
            return self._index
        blocks, call = self.blocks, self._call
        total = self.slots * blocks.weights
        probe = torch.arange(1, total + 1, dtype=torch.float64).view(self.slots, -1)
        p = blocks.merge(probe)
        params: dict[str, Tensor | None] = {n: None for n in kernels.LSTM_PARAMS}
        params.update({n.removeprefix("layer.").removesuffix("_l0"): t for n, t in p.items()
                       if n.startswith("layer.")})
        rows = params["weight_ih"].shape[0]
        biased = blocks.spec.biased_blocks()
        none = probe.new_zeros(0)
        biases = [blocks.layout.expand(params[n], biased) if params[n] is not None
                  else probe.new_zeros(rows) for n in ("bias_ih", "bias_hh")]
        wcat, peep = kernels.lstm_recurrent(call, params, probe)
        parts = [params["weight_ih"], *biases, wcat, peep, params["weight_hr"],
                 p["readout.weight"], p.get("readout.bias")]
        ids = [none if t is None else t.reshape(-1) for t in parts]
        flat = torch.cat(ids)
        index = torch.where(flat > 0, flat - 1, float(total)).to(torch.int64)
        self._index = (index, [t.numel() for t in ids])
        return self._index

    def run_steps(self, chunk: CompiledChunk, first: int, last: int) -> int:
        """Train steps ``[first, last)`` of ``chunk`` in one call of the engine (the same
        arithmetic as :meth:`step` with ``loss_grad``), recording after each step the weights
        (and Adam state) in ``chunk``. Returns the first step not taken: ``last``, or a step
        where a live trial's loss or gradient is not finite (nothing of it applied)."""
        ext = _build.load()
        index, sizes = self._operand_index()
        adam = self.optimizer == "adam"
        none = self.packed.new_zeros(0)
        return ext.lstm_train_steps(
            cfg=self._call.config(ext), packed=self.packed,
            exp_avg=self.exp_avg if adam else none, exp_avg_sq=self.exp_avg_sq if adam else none,
            adam_steps=self.steps if adam else none, live=torch.tensor(self.live), index=index,
            sizes=sizes, x=chunk.x, targets=chunk.targets, mask=chunk.mask, scale=chunk.scale,
            steps=chunk.steps, activation=self.blocks.output_activation,
            shortcut=self.blocks.input_shortcut, optimizer=self.optimizer, lr=self.lr,
            clip=-1.0 if self.clip_norm is None else float(self.clip_norm),
            history=chunk.history, hist_avg=chunk.hist_avg if adam else none,
            hist_avg_sq=chunk.hist_avg_sq if adam else none,
            hist_steps=chunk.hist_steps if adam else none, outputs=chunk.outputs,
            losses=chunk.losses, first=first, last=last)

    def restore(self, slot: int, chunk: CompiledChunk, step: int) -> None:
        """Put ``slot``'s weights (and Adam state) back to what they were after ``step`` of
        ``chunk``."""
        self.packed[slot] = chunk.history[step, slot]
        if self.optimizer == "adam":
            self.exp_avg[slot] = chunk.hist_avg[step, slot]
            self.exp_avg_sq[slot] = chunk.hist_avg_sq[step, slot]
            self.steps[slot] = chunk.hist_steps[step, slot]

    # -- one step ------------------------------------------------------------------------------

    def step(self, x: Tensor, batch: Batch, loss_fn: Callable[[Tensor, Batch, int], Tensor],
             update: bool = True,
             loss_grad: Callable[[Tensor, Batch, int], tuple[Tensor, Tensor]] | None = None,
             logit_grad: Callable[[Tensor, Batch, int], tuple[Tensor, Tensor]] | None = None
             ) -> StepResult:
        """Forward ``x`` (``[T, slots * B, in]``, trial-major) and ``batch`` (the same columns)
        through every slot, and update each live slot whose loss and gradient are finite.

        ``loss_fn`` gives each trial's loss (:meth:`TrainingTask.group_loss`); with
        ``loss_grad`` (:meth:`TrainingTask.group_loss_grad`) an LSTM-family group runs without
        autograd; a softmax readout then takes its gradient from ``logit_grad``
        (:meth:`Task.group_loss_logit_grad`) where given."""
        ext = _build.load() if self.blocks.spec.family == "lstm" else None
        if ext is not None and loss_grad is not None:
            outputs, losses, grad = self._kernel_gradient(ext, x, batch, loss_grad, logit_grad)
        else:
            outputs, losses, grad = self._autograd_gradient(x, batch, loss_fn)
        norms = grad.norm(dim=1)
        finite = torch.isfinite(losses + norms).tolist()
        if update:
            live = [a and b for a, b in zip(self.live, finite)]
            if any(live):
                self._update(grad, norms, None if all(live) else torch.tensor(live))
        return StepResult(outputs, losses.tolist(), finite, norms.tolist())

    def _autograd_gradient(self, x: Tensor, batch: Batch, loss_fn: Callable[..., Tensor]
                           ) -> tuple[Tensor, Tensor, Tensor]:
        """Outputs, per-trial losses and ``[slots, N]`` gradient, by autograd end to end."""
        packed = self.packed.detach().requires_grad_(True)
        with torch.enable_grad():
            y = self.blocks.forward(packed, self.blocks.to_merged_inputs(x))
            outputs = self.blocks.to_columns(y)
            losses = loss_fn(outputs, batch, self.slots)
            (grad,) = torch.autograd.grad(losses.sum(), packed)
        return outputs.detach(), losses.detach(), grad

    def _kernel_gradient(self, ext: Any, x: Tensor, batch: Batch,
                         loss_grad: Callable[..., tuple[Tensor, Tensor]],
                         logit_grad: Callable[..., tuple[Tensor, Tensor]] | None = None
                         ) -> tuple[Tensor, Tensor, Tensor]:
        """The same as :meth:`_autograd_gradient` for the LSTM family, with the engine's
        kernels called directly and the readout differentiated by hand (``loss_grad`` gives the
        losses and their gradient with respect to the outputs; ``logit_grad``, for a softmax
        readout, with respect to its pre-activations): no autograd graph at all. Per step this
        saves most of the fixed cost that dominates a small net's training step."""
        blocks = self.blocks
        p = blocks.merge(self.packed)
        params = {n: None for n in kernels.LSTM_PARAMS}
        params.update({n.removeprefix("layer.").removesuffix("_l0"): t for n, t in p.items()
                       if n.startswith("layer.")})
        xm = blocks.to_merged_inputs(x)
        batch_size = xm.shape[1]
        carry = self._zero_carry.get(batch_size)
        if carry is None:  # read only by the kernels, so one set per batch size serves
            sizes = blocks.layout.state_sizes
            carry = self._zero_carry[batch_size] = {
                name: (xm.new_zeros(batch_size, size) if k < len(sizes) else None)
                for k, (name, size) in enumerate(zip(kernels.LSTM_CARRY, (*sizes, 0, 0)))}
        call = self._call
        res = kernels.lstm_forward(ext, call, xm, carry, params, None, True)
        hidden = res["y"]
        weight, bias = p["readout.weight"], p.get("readout.bias")
        feats = torch.cat([hidden, xm], -1) if blocks.input_shortcut else hidden
        y = apply_readout(blocks.output_activation, F.linear(feats, weight, bias),
                          blocks.solo_outputs)
        outputs = blocks.to_columns(y)
        # Back through the readout by hand: its activation, then the linear map.
        if blocks.output_activation == "softmax" and logit_grad is not None:
            losses, d_logits = logit_grad(outputs, batch, self.slots)
            d_y = blocks.to_merged_outputs(d_logits)
        else:
            losses, d_outputs = loss_grad(outputs, batch, self.slots)
            d_y = _readout_backward(blocks.output_activation, y,
                                    blocks.to_merged_outputs(d_outputs), blocks.solo_outputs)
        d_y2 = d_y.reshape(-1, d_y.shape[-1])
        found_out = [torch.mm(d_y2, weight[:, : hidden.shape[-1]]).view_as(hidden),
                     torch.mm(d_y2.t(), feats.reshape(-1, feats.shape[-1]))]
        if bias is not None:
            found_out.append(d_y2.sum(0))
        wcat, peep = kernels.lstm_recurrent(call, params, xm)
        kernel = kernels.lstm_backward(
            ext, call, res, wcat, peep, params["weight_hr"], None,
            {"y": found_out[0], "h": None, "c": None, "a": None, "cells": None})
        names = ("x", *kernels.LSTM_CARRY, *kernels.LSTM_PARAMS)
        values = (xm, *(carry[n] for n in kernels.LSTM_CARRY),
                  *(params[n] for n in kernels.LSTM_PARAMS))
        needs = (False,) * (1 + len(kernels.LSTM_CARRY)) + tuple(
            params[n] is not None for n in kernels.LSTM_PARAMS)
        found = kernels.lstm_grads(call, kernels.Inputs(names, values, needs), res, kernel)
        found["readout.weight"] = found_out[1]
        if bias is not None:
            found["readout.bias"] = found_out[2]
        flat = torch.cat([found[n.removeprefix("layer.").removesuffix("_l0")
                                if n.startswith("layer.") else n].reshape(-1)
                          for n in blocks.names])
        if self.slots > 1:
            flat = flat.index_select(0, blocks.flat_index)
        grad = flat.view(self.slots, -1)
        return outputs.detach(), losses.detach(), grad

    def _update(self, grad: Tensor, norms: Tensor, live: Tensor | None) -> None:
        """One optimiser step of the slots ``live`` (bool ``[slots]``; None: every slot)."""
        if live is not None:
            grad = torch.where(live.unsqueeze(1), grad, 0.0)
        if self.clip_norm is not None:
            # As torch.nn.utils.clip_grad_norm_, but each trial by its own norm.
            coef = (self.clip_norm / (norms + 1e-6)).clamp(max=1.0)
            grad = grad * coef.unsqueeze(1)
        with torch.no_grad():
            if self.optimizer == "sgd":
                self.packed.sub_(grad, alpha=self.lr)
                return
            b1, b2 = _ADAM_BETAS
            keep = (live if live is not None else torch.ones(self.slots, dtype=torch.bool)
                    ).unsqueeze(1)
            self.steps += keep.to(self.steps.dtype)
            self.exp_avg.copy_(torch.where(keep, self.exp_avg * b1 + grad * (1 - b1),
                                           self.exp_avg))
            self.exp_avg_sq.copy_(torch.where(keep, self.exp_avg_sq * b2 + grad * grad * (1 - b2),
                                              self.exp_avg_sq))
            steps = self.steps.clamp(min=1.0)
            bc1 = (1 - b1 ** steps).float()
            bc2_sqrt = (1 - b2 ** steps).sqrt().float()
            denom = self.exp_avg_sq.sqrt() / bc2_sqrt + _ADAM_EPS
            delta = self.exp_avg / denom * (self.lr / bc1)
            self.packed.sub_(torch.where(keep, delta, 0.0))


# -------------------------------------------------------------------------------------------
# The schedule

@dataclass
class Trial:
    """One trial in :func:`train_trials`: its trainer and what became of it."""

    trainer: Trainer
    result: TrainResult | None = None
    diverged: str | None = None


def _adam_state_of(trainer: Trainer) -> dict[str, Tensor] | None:
    """A trainer's ``torch.optim.Adam`` state flattened in parameter order (None if empty)."""
    states = [trainer.optimizer.state.get(p) for p in trainer.model.parameters()]
    if not any(states):
        return None
    params = list(trainer.model.parameters())
    out = {}
    for key in ("exp_avg", "exp_avg_sq"):
        out[key] = torch.cat([(s[key] if s else torch.zeros_like(p)).reshape(-1)
                              for s, p in zip(states, params)])
    out["step"] = torch.tensor(float(next(s for s in states if s)["step"]))
    return out


def _store_adam_state(trainer: Trainer, state: dict[str, Tensor]) -> None:
    """Write a group's flat Adam state into ``trainer``'s ``torch.optim.Adam`` (for its
    checkpoint), in the layout ``torch.optim.Adam.state_dict`` has."""
    offset = 0
    for p in trainer.model.parameters():
        n = p.numel()
        trainer.optimizer.state[p] = {
            "step": state["step"].clone(),
            "exp_avg": state["exp_avg"][offset:offset + n].view(p.shape).clone(),
            "exp_avg_sq": state["exp_avg_sq"][offset:offset + n].view(p.shape).clone(),
        }
        offset += n


def _adam_saver(trainer: Trainer, group: TrialGroup, slot: int) -> Callable[[], None]:
    """What ``trainer`` calls before a checkpoint: fetch its Adam state from the group."""
    return lambda: _store_adam_state(trainer, group.adam_state(slot))


def train_trials(trainers: list[Trainer], *, slots: int | None = None, chunk: int = CHUNK,
                 resume: bool = False,
                 on_finish: Callable[[int, Trial], None] | None = None,
                 on_chunk: Callable[[int], None] | None = None, compiled: bool = True
                 ) -> list[Trial]:
    """Train every trainer's model as :meth:`Trainer.run` would, ``slots`` at a time in one
    :class:`TrialGroup` (default :func:`group_size`).

    Every trainer must train the same structure with the same optimiser, learning rate,
    clipping and batch size, without truncated BPTT. A trial's sequences are drawn ``chunk``
    batches at a time from its own generator, so its data, and with it its result, depend only
    on its seed and ``chunk``. A test-set rule is checked after the batch that reaches each
    ``check_every``; a checkpoint is taken at the first chunk boundary at or after each
    ``checkpoint_every``, so that a resumed trial draws exactly the data it would have drawn.
    A trial whose loss or gradient stops being finite ends as diverged (``Trial.diverged``),
    the others go on.
    ``on_finish(i, trial)`` is called as each trial ends, ``on_chunk(sequences)`` after each
    chunk with the training sequences of all trials so far.

    With ``compiled`` (the default), an LSTM-family group trained on a task with the
    squared-error loss runs each chunk's steps in one call of the engine
    (:meth:`TrialGroup.run_steps`), the same arithmetic as the Python step loop up to float
    rounding; the trainers still see every step in order. A trainer with callbacks (which may
    change its net between steps) always takes the Python loop.
    """
    if not trainers:
        return []
    first = trainers[0]
    cfg0 = first.config
    for i, tr in enumerate(trainers):
        cfg = tr.config
        same = (cfg.optimizer, cfg.lr, cfg.clip_norm, cfg.batch_size) == (
            cfg0.optimizer, cfg0.lr, cfg0.clip_norm, cfg0.batch_size)
        if not same:
            raise ValueError(f"trainers[{i}]: expected the optimiser, lr, clip_norm and "
                             "batch_size of trainers[0]")
        if cfg.tbptt is not None:
            raise ValueError(f"trainers[{i}]: truncated BPTT does not train in groups")
        reason = mergeable(tr.model)
        if reason is not None:
            raise ValueError(f"trainers[{i}].model: {reason}")
    models = [id(tr.model) for tr in trainers]
    if len(set(models)) != len(models):
        first_shared = next(i for i, m in enumerate(models) if models.index(m) != i)
        raise ValueError(f"trainers[{first_shared}]: expected a model of its own, got the "
                         f"model of trainers[{models.index(models[first_shared])}]")
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk: expected a positive int, got {chunk!r}")
    slots = slots or group_size(first.model, len(trainers), cfg0.batch_size)
    slots = max(1, min(slots, len(trainers)))
    group = TrialGroup(first.model, slots, optimizer=cfg0.optimizer, lr=cfg0.lr,
                       clip_norm=cfg0.clip_norm)
    trials = [Trial(tr) for tr in trainers]
    waiting = list(range(len(trials)))[::-1]
    current: list[int | None] = [None] * slots
    batch_size = cfg0.batch_size

    def start(slot: int) -> None:
        while waiting:
            i = waiting.pop()
            trial = trials[i]
            tr = trial.trainer
            tr.begin(resume=resume)
            if tr.finished:  # resumed after its end: only the final test is left
                _end(i, trial)
                continue
            adam = _adam_state_of(tr) if cfg0.optimizer == "adam" else None
            group.attach(slot, tr.model, adam)
            if cfg0.optimizer == "adam":
                tr.before_save = _adam_saver(tr, group, slot)
            current[slot] = i
            return
        current[slot] = None


    def _end(i: int, trial: Trial) -> None:
        if trial.diverged is None:
            trial.result = trial.trainer.finish()
        if on_finish is not None:
            on_finish(i, trial)

    def stop(slot: int) -> None:
        i = current[slot]
        trial = trials[i]
        tr = trial.trainer
        if cfg0.optimizer == "adam":
            _store_adam_state(tr, group.adam_state(slot))
            tr.before_save = None
        group.detach(slot, tr.model)
        current[slot] = None
        _end(i, trial)

    for s in range(slots):
        start(s)
    while any(c is not None for c in current):
        chunks = []
        for i in current:
            tr = trials[i].trainer if i is not None else first
            gen = tr.data_gen if i is not None else torch.Generator().manual_seed(0)
            chunks.append(tr.task.sample(chunk * batch_size, generator=gen))
        steps = max(c.steps for c in chunks)
        width = group.slots * batch_size
        order = _sequence_major(group.slots, chunk, batch_size)
        merged = Batch.cat([c.padded(steps) for c in chunks]).take(order)
        fast = None
        if compiled and group.compiled_for(first.task) and not any(
                trials[i].trainer.callbacks for i in current if i is not None):
            fast = CompiledChunk(group, merged, chunk, batch_size)
            fast.set_scale(first.task.loss_kind, merged.mask)
        j = 0
        while j < chunk:
            if all(c is None or trials[c].trainer.finished or trials[c].diverged
                   for c in current):
                break
            if fast is not None:
                # A trial's budget ends it at a known step: train no further than the first.
                left = [-(-(tr.config.max_sequences - tr.sequences) // batch_size)
                        for tr in (trials[c].trainer for c in current if c is not None)
                        if not tr.finished]
                stop_at = min(chunk, j + max(1, min(left, default=1)))
                end = group.run_steps(fast, j, stop_at)
                if end > j:
                    _record_compiled(group, fast, merged, j, end, first.task, current, trials)
                    j = end
                    continue
            # One step in Python: no compiled path, or a step where a trial's loss or gradient
            # is not finite (redone trial by trial).
            step_batch = merged.columns(j * width, (j + 1) * width)
            longest = int(step_batch.lengths.max())
            if longest < step_batch.steps:
                step_batch = _first_steps(step_batch, longest)
            res = _guarded_step(group, step_batch, first.task, current, trials)
            correct = first.task.evaluate(res.outputs, step_batch).tolist()
            squared = (first.task.sequence_errors(res.outputs, step_batch)[0].tolist()
                       if any(trials[c].trainer.needs_errors for c in current if c is not None)
                       else None)
            for s, i in enumerate(current):
                if i is None:
                    continue
                trial = trials[i]
                tr = trial.trainer
                if trial.diverged or tr.finished:
                    continue
                if not res.finite[s]:
                    trial.diverged = str(tr._diverged(res.what_diverged(s)))
                    group.packed[s] = 0.0  # a dead slot must not feed NaN into the others
                    group.live[s] = False
                    continue
                cols = slice(s * batch_size, (s + 1) * batch_size)
                tr.record(res.losses[s], correct[cols],
                          squared[cols] if squared is not None else None)
                if tr.finished:
                    group.live[s] = False  # its weights stay as they were at its end
            j += 1
        for s, i in enumerate(current):
            if i is None:
                continue
            if trials[i].trainer.finished or trials[i].diverged:
                stop(s)
                start(s)
            else:
                # Between two draws of the trial's generator: a resumed run draws the same.
                trials[i].trainer.checkpoint_if_due()
        if on_chunk is not None:
            on_chunk(sum(t.trainer.sequences for t in trials))
        if not waiting and None in current and any(c is not None for c in current):
            # Nothing left to refill with: a smaller group stops computing empty slots.
            group, current = _compact(group, current, trials)
    return trials


def _record_compiled(group: TrialGroup, chunk: CompiledChunk, merged: Batch, first: int,
                     last: int, task: Any, current: list[int | None], trials: list[Trial]
                     ) -> None:
    """Hand steps ``[first, last)``, trained by :meth:`TrialGroup.run_steps`, to the trainers
    one step at a time, as the Python loop does. A trainer that tests its net while recording a
    step sees the weights of that step; a trial that ends at a step gets the weights (and Adam
    state) it had there back: the steps the group trained after its end never happened for it."""
    width = group.slots * chunk.batch_size
    outputs = chunk.columns(first, last)
    batch = merged.columns(first * width, last * width)
    correct = task.evaluate(outputs, batch).tolist()
    squared = (task.sequence_errors(outputs, batch)[0].tolist()
               if any(trials[c].trainer.needs_errors for c in current if c is not None)
               else None)
    losses = chunk.losses[first:last].tolist()
    size = chunk.batch_size
    for j in range(first, last):
        base = (j - first) * width
        for s, i in enumerate(current):
            if i is None:
                continue
            tr = trials[i].trainer
            if trials[i].diverged or tr.finished:
                continue
            cols = slice(base + s * size, base + (s + 1) * size)
            tests = tr.tests_due(size)
            if tests:  # the trainer may test its net: the net as it was after this step
                now = group.packed[s].clone()
                group.packed[s] = chunk.history[j, s]
            tr.record(losses[j - first][s], correct[cols],
                      squared[cols] if squared is not None else None)
            if tr.finished:
                group.live[s] = False
                group.restore(s, chunk, j)
            elif tests:
                group.packed[s] = now


def _compact(group: TrialGroup, current: list[int | None], trials: list[Trial]
             ) -> tuple[TrialGroup, list[int | None]]:
    """A group of just the slots still training, each trial's weights and state moved over."""
    keep = [(s, i) for s, i in enumerate(current) if i is not None]
    model = trials[keep[0][1]].trainer.model
    adam = group.optimizer == "adam"
    small = TrialGroup(model, len(keep), optimizer=group.optimizer, lr=group.lr,
                       clip_norm=group.clip_norm)
    for new, (old, i) in enumerate(keep):
        tr = trials[i].trainer
        small.attach(new, tr.model, group.adam_state(old) if adam else None)
        if adam:
            tr.before_save = _adam_saver(tr, small, new)
    return small, [i for _, i in keep]


def _logit_grad_of(task: Any) -> Callable[[Tensor, Batch, int], tuple[Tensor, Tensor]] | None:
    """The task's gradient with respect to a softmax readout's pre-activations, where it is
    the base task's cross-entropy of probabilities; None otherwise."""
    from ..tasks.base import Task  # the tasks import the trainer's package

    kind = type(task)
    if (isinstance(task, Task) and task.loss_kind == "xent"
            and kind.loss is Task.loss and kind.group_loss is Task.group_loss):
        return task.group_loss_logit_grad
    return None


def _guarded_step(group: TrialGroup, batch: Batch, task: Any, current: list[int | None],
                  trials: list[Trial]) -> StepResult:
    """One group step. Where some trial's loss is not finite, its overflowing activations may
    have reached the others through the zero blocks (0 * inf is NaN): the step is then redone
    one trial at a time, so a trial is never judged by another's divergence."""
    logit_grad = _logit_grad_of(task)
    res = group.step(batch.inputs, batch, task.group_loss, loss_grad=task.group_loss_grad,
                     logit_grad=logit_grad)
    if all(res.finite[s] for s, i in enumerate(current) if i is not None):
        return res
    # Undo nothing: step() left slots with a non-finite loss or gradient unchanged, but it did
    # update the finite ones, which is right only if none of them was poisoned. Recompute each
    # non-finite slot alone on its own columns to tell a true divergence from a poisoned one.
    size = batch.batch_size // group.slots
    for s, i in enumerate(current):
        if i is None or res.finite[s]:
            continue
        solo = TrialGroup(trials[i].trainer.model, 1, optimizer=group.optimizer, lr=group.lr,
                          clip_norm=group.clip_norm)
        solo.packed[0] = group.packed[s]
        solo.live[0] = True
        if group.optimizer == "adam":
            solo.exp_avg[0], solo.exp_avg_sq[0] = group.exp_avg[s], group.exp_avg_sq[s]
            solo.steps[0] = group.steps[s]
        cols = batch.columns(s * size, (s + 1) * size)
        alone = solo.step(cols.inputs, cols, task.group_loss, loss_grad=task.group_loss_grad,
                          logit_grad=logit_grad)
        if alone.finite[0]:
            group.packed[s] = solo.packed[0]
            if group.optimizer == "adam":
                group.exp_avg[s], group.exp_avg_sq[s] = solo.exp_avg[0], solo.exp_avg_sq[0]
                group.steps[s] = solo.steps[0]
            res.outputs[:, s * size:(s + 1) * size] = alone.outputs
            res.losses[s], res.finite[s] = alone.losses[0], True
            res.norms[s] = alone.norms[0]
    return res


def _sequence_major(slots: int, chunk: int, batch: int) -> Tensor:
    """Column order turning ``slots`` chunks side by side (slot-major) into step-major columns:
    step j's columns are ``[j * slots * batch, (j + 1) * slots * batch)``, trial-major."""
    j = torch.arange(chunk).view(chunk, 1, 1)
    s = torch.arange(slots).view(1, slots, 1)
    b = torch.arange(batch).view(1, 1, batch)
    return (s * chunk * batch + j * batch + b).reshape(-1)


def _first_steps(batch: Batch, steps: int) -> Batch:
    """The first ``steps`` steps of ``batch`` (every sequence ends by then)."""
    info = {k: (v[:steps] if k in batch.time_info else v) for k, v in batch.info.items()}
    return Batch(batch.inputs[:steps], batch.targets[:steps], batch.mask[:steps], batch.lengths,
                 info, batch.time_info)
