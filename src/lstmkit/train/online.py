"""On-line learning as H&S (1997) did it: the truncated RTRL rule of Appendix A.1, with the
weights changed after every time step.

The paper's nets (the ``lstm1997`` cell without forget gate) are trained by "a variant of RTRL":
errors reach earlier time steps only through the memory cells' states, so each cell keeps the
partial derivatives ds/dw of its state with respect to the weights of its cell input and its
block's input gate (eqs. 25, 27), summed forward along the sequence; every time step's error
then changes every weight at once (eqs. 19-28, "we always use on-line learning"). The
:class:`~lstmkit.train.trainer.Trainer` instead sums a whole sequence's gradient and changes the
weights once per sequence; for the paper's Exp. 1 net that matters (see
docs/paper-setting-notes.md). :class:`OnlineTrainer` is the trainer with its per-batch step
replaced by :func:`online_step`; everything else (sampling, stopping rules, checkpoints) is the
trainer's.

Learning rate: the paper's error signal is f'(net_k)(t_k - y_k) for E = sum_k (t_k - y_k)^2
(no factor 2), with updates alpha e_l y_m; :func:`online_step` takes that alpha.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..cells.layout import layout
from ..models import SequenceModel
from ..tasks.protocol import Batch, TrainingTask
from .config import TrainConfig
from .trainer import Trainer

__all__ = ["OnlineTrainer", "check_online", "online_step"]

_SIGMOID_SCALE = {"sigmoid": (1.0, 0.0), "sigmoid_pm1": (2.0, -1.0), "sigmoid_pm2": (4.0, -2.0)}


def _act(name: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Value and derivative of the activation called ``name`` at ``x``."""
    if name in _SIGMOID_SCALE:
        scale, shift = _SIGMOID_SCALE[name]
        s = 1.0 / (1.0 + np.exp(-x))
        return scale * s + shift, scale * s * (1 - s)
    if name == "tanh":
        t = np.tanh(x)
        return t, 1 - t * t
    if name == "identity":
        return x, np.ones_like(x)
    raise ValueError(f"activation: expected one of {sorted(_SIGMOID_SCALE)}, tanh, identity, "
                     f"got {name!r}")


def check_online(model: Any) -> None:
    """Raise ``ValueError``/``TypeError`` unless :func:`online_step` can train ``model``: a
    :class:`SequenceModel` over one unidirectional layer of an LSTM-family cell without forget
    gate, peepholes or layer norm, with the truncated gradient, no projection, gates shared by
    blocks, and gate recurrence from all gates or none."""
    if not isinstance(model, SequenceModel):
        raise TypeError(f"model: expected a SequenceModel, got {type(model).__name__}")
    layer = model.layer
    spec = layer.spec
    problems = []
    if spec.family != "lstm":
        problems.append(f"family {spec.family!r}")
    for flag in ("forget_gate", "coupled", "peephole", "layer_norm", "double_bias"):
        if getattr(spec, flag):
            problems.append(flag)
    if not spec.truncated_gradient:
        problems.append("no truncated gradient")
    if spec.gate_recurrence not in ("all", "none"):
        problems.append(f"gate recurrence {spec.gate_recurrence!r}")
    if spec.gate_activation != "sigmoid":
        problems.append(f"gate activation {spec.gate_activation!r}")
    if layer.num_layers != 1 or layer.bidirectional or layer.proj_size:
        problems.append("more than one unidirectional layer without projection")
    if problems:
        raise ValueError("model: expected an lstm1997-style cell for on-line RTRL, got "
                         + ", ".join(problems))
    for name in (spec.input_activation, spec.output_activation, model.output_activation):
        _act(name, np.zeros(1))


def online_step(model: SequenceModel, batch: Batch, alpha: float,
                held: Tensor | None = None) -> tuple[Tensor, float]:
    """Train ``model`` on each sequence of ``batch`` in turn, changing the weights after every
    time step by the truncated RTRL rule; returns the outputs computed on the way ``[T, B, out]``
    (each before that step's change) and the summed squared error per sequence (mean over the
    batch).

    ``held``: bool ``[outputs, k]`` over the readout's first ``k <= hidden`` columns, True
    where a readout weight from a cell is held at zero and not trained (a memory cell not yet
    added by sequential construction, or not connected to that output).
    """
    check_online(model)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ValueError(f"alpha: expected a positive number, got {alpha!r}")
    layer, spec = model.layer, model.layer.spec
    hidden = layer.hidden_size
    held_np = None
    if held is not None:
        n_out = model.readout.weight.shape[0]
        if (not isinstance(held, Tensor) or held.dtype != torch.bool or held.dim() != 2
                or held.shape[0] != n_out or not 0 < held.shape[1] <= hidden):
            raise ValueError(f"held: expected a bool tensor of shape ({n_out}, 1..{hidden}), got "
                             f"{getattr(held, 'dtype', type(held).__name__)} "
                             f"{tuple(getattr(held, 'shape', ()))}")
        held_np = held.cpu().numpy()
    lay = layout(spec, hidden)
    size = spec.block_size
    # The per-step loop runs on float64 NumPy copies of the weights (a step is a few dozen
    # operations on vectors of a few dozen numbers, where torch's per-call cost would dominate);
    # they are written back once the batch is done.
    named = dict(layer.named_parameters())
    torch_params = {"w_ih": named["weight_ih_l0"], "w_hh": named.get("weight_hh_l0"),
                    "w_gh": named.get("weight_gh_l0"), "bias": named.get("bias_ih_l0"),
                    "r_w": model.readout.weight, "r_b": model.readout.bias}
    w = {k: v.detach().cpu().double().numpy().copy() for k, v in torch_params.items()
         if v is not None}
    w_ih, w_hh, w_gh, bias = w["w_ih"], w.get("w_hh"), w.get("w_gh"), w.get("bias")
    r_w, r_b = w["r_w"], w.get("r_b")
    rows, n_in, n_gates = lay.rows, w_ih.shape[1], lay.carried_size
    # The bias, spread over every pre-activation row (zero and untrained where unbiased).
    biased = np.zeros(rows, dtype=bool)
    bias_rows = np.zeros(rows, dtype=np.int64)
    if bias is not None:
        for name in spec.biased_blocks():
            block, at = lay.blocks[name], lay.bias_slice(name)
            biased[block] = True
            bias_rows[block] = np.arange(at.start, at.stop)
    g_rows, i_rows, o_rows = lay.blocks["g"], lay.blocks.get("i"), lay.blocks.get("o")
    n_src = n_in + (hidden if w_hh is not None else 0) + (n_gates if w_gh is not None else 0) + 1
    inputs = batch.inputs.detach().cpu().double().numpy()
    targets = batch.targets.detach().cpu().double().numpy()
    mask = batch.mask.detach().cpu().numpy()
    outputs = np.zeros((inputs.shape[0], batch.batch_size, r_w.shape[0]))
    total = 0.0
    for b in range(batch.batch_size):
        h = np.zeros(hidden)
        c = np.zeros(hidden)
        gates_prev = np.zeros(n_gates)
        part_g = np.zeros((hidden, n_src))  # ds_j / dW[g row of j]: eq. 27 summed forward
        part_i = np.zeros((hidden, n_src))  # ds_j / dW[i row of j's block]: eq. 25
        for t in range(int(batch.lengths[b])):
            x = inputs[t, b]
            src = np.concatenate([x] + ([h] if w_hh is not None else [])
                                 + ([gates_prev] if w_gh is not None else []) + [np.ones(1)])
            pre = w_ih @ x
            if w_hh is not None:
                pre += w_hh @ h
            if w_gh is not None:
                pre += w_gh @ gates_prev
            if bias is not None:
                pre += np.where(biased, bias[bias_rows], 0.0)
            g, g_d = _act(spec.input_activation, pre[g_rows])
            i_b = o_b = None
            i = np.ones(hidden)
            if i_rows is not None:
                i_b = 1.0 / (1.0 + np.exp(-pre[i_rows]))
                i = np.repeat(i_b, size)
                part_i += np.outer(g * i * (1 - i), src)
            part_g += np.outer(g_d * i, src)
            c = c + i * g
            hc, hc_d = _act(spec.output_activation, c)
            o = np.ones(hidden)
            if o_rows is not None:
                o_b = 1.0 / (1.0 + np.exp(-pre[o_rows]))
                o = np.repeat(o_b, size)
            h = o * hc
            feats = np.concatenate([h, x]) if model.input_shortcut else h
            net = r_w @ feats + (r_b if r_b is not None else 0.0)
            y, y_d = _act(model.output_activation, net)
            outputs[t, b] = y
            err = (targets[t, b] - y) * float(mask[t, b])
            total += float(err @ err)
            e_k = y_d * err                                               # eq. 19
            back = r_w[:, :hidden].T @ e_k                                # sum_k w_kc e_k
            e_s = o * hc_d * back                                         # eq. 23
            delta = np.zeros((rows, n_src))
            delta[g_rows] = e_s[:, None] * part_g                         # eq. 28
            if i_rows is not None:                                        # eq. 26
                delta[i_rows] = (e_s[:, None] * part_i).reshape(-1, size, n_src).sum(1)
            if o_rows is not None:                                        # eqs. 21, 22
                e_o = o_b * (1 - o_b) * (hc * back).reshape(-1, size).sum(1)
                delta[o_rows] = np.outer(e_o, src)
            delta *= alpha
            step_readout = alpha * np.outer(e_k, feats)
            if held_np is not None:
                step_readout[:, :held_np.shape[1]][held_np] = 0.0
            # Every weight changes now, after this time step (on-line learning).
            w_ih += delta[:, :n_in]
            at = n_in
            if w_hh is not None:
                w_hh += delta[:, at:at + hidden]
                at += hidden
            if w_gh is not None:
                w_gh += delta[:, at:at + n_gates]
                at += n_gates
            if bias is not None:
                np.add.at(bias, bias_rows[biased], delta[biased, at])
            r_w += step_readout
            if r_b is not None:
                r_b += alpha * e_k
            if n_gates:
                gates_prev = np.concatenate([gate for gate in (i_b, o_b) if gate is not None])
    with torch.no_grad():
        for key, param in torch_params.items():
            if param is not None:
                param.copy_(torch.from_numpy(w[key]))
    return (torch.from_numpy(outputs).to(batch.inputs.dtype if batch.inputs.is_floating_point()
                                         else torch.float32),
            total / batch.batch_size)


class OnlineTrainer(Trainer):
    """:class:`~lstmkit.train.trainer.Trainer` whose update is the paper's: :func:`online_step`
    with learning rate ``alpha`` (the paper's, not halved), weights changed after every time
    step. The optimiser the config names is built but never steps; gradient clipping and
    truncated BPTT do not apply and are refused."""

    def __init__(self, model: SequenceModel, task: TrainingTask, config: TrainConfig,
                 criterion: Any = None, *, alpha: float, **kwargs: Any) -> None:
        check_online(model)
        if config.clip_norm is not None or config.tbptt is not None:
            raise ValueError("config: expected no clip_norm and no tbptt for on-line RTRL, got "
                             f"clip_norm={config.clip_norm!r}, tbptt={config.tbptt!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
            raise ValueError(f"alpha: expected a positive number, got {alpha!r}")
        super().__init__(model, task, config, criterion, **kwargs)
        self.alpha = float(alpha)

    def _step(self, batch: Batch) -> tuple[Tensor, float]:
        masks = [m for m in (getattr(cb, "held_mask", None) for cb in self.callbacks)
                 if m is not None]
        held = masks[0] if len(masks) == 1 else None
        if len(masks) > 1:  # rare: several callbacks hold weights; widen and join their masks
            held = torch.zeros(masks[0].shape[0], self.model.layer.hidden_size, dtype=torch.bool)
            for mask in masks:
                held[:, :mask.shape[1]] |= mask
        outputs, loss = online_step(self.model, batch, self.alpha, held)
        if loss != loss or loss in (float("inf"), float("-inf")):
            raise self._diverged(f"loss became {loss}")
        return outputs, loss
