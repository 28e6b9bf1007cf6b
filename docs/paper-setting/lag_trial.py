"""One paper-setting trial of Exp. 2a or 2b in lstmkit, with the row's setting changed by flags.

Usage: python docs/paper-setting/lag_trial.py ROW P SEED BUDGET [shift=X] [tol=X|none] [end=1]

ROW: exp2a or exp2b; P: the lag; ``shift``: the input gate's initial shift
(``PaperSetting.input_gate_shift``); ``tol``: the construction tolerance
(``PaperSetting.construction_tolerance``, ``none`` joins the cell to every output); ``end=1``:
error signals at the sequence end only (a departure: the paper gives them at every step).
Prints when the cell joined and which outputs it joined, when the success rule held (``{}``:
not within the budget), and on 200 fresh sequences the largest absolute error at the sequence
end: its maximum, its mean and how many sequences it puts above 0.25.
"""

import dataclasses
import sys
import time

import torch

import lstmkit.tasks.lag as lag
from lstmkit.reproduce.runner import _make_trainer

ROW, P, SEED, BUDGET = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
FLAGS = dict(flag.split("=") for flag in sys.argv[5:])
_setting = lag._setting_2ab


def changed(p: int, b: bool):
    fields = {}
    if "shift" in FLAGS:
        fields["input_gate_shift"] = float(FLAGS["shift"])
    if "tol" in FLAGS:
        fields["construction_tolerance"] = None if FLAGS["tol"] == "none" else float(FLAGS["tol"])
    return dataclasses.replace(_setting(p, b), **fields)


lag._setting_2ab = changed
if FLAGS.get("end") == "1":
    _symbols = lag.NoiselessLag._symbols

    def _end_only(self, label, gen):
        batch = _symbols(self, label, gen)
        return dataclasses.replace(batch, mask=lag.end_mask(batch.lengths, batch.steps))

    lag.NoiselessLag._symbols = _end_only
trainer, (construction,) = _make_trainer(ROW, "paper", None, SEED, BUDGET, task_params={"p": P},
                                         checkpoint_dir=None, checkpoint_every=0, progress=False,
                                         position=0)
start = time.time()
trainer.run()
batch = trainer.task.sample(200, generator=torch.Generator().manual_seed(5))
with torch.no_grad():
    out = trainer.model(batch.inputs, batch.lengths)
last, rows = batch.lengths - 1, torch.arange(200)
err = (out[last, rows] - batch.targets[last, rows]).abs().amax(-1)
joined = (~construction.held).any(1).nonzero().flatten().tolist()
print(ROW, f"p={P}", FLAGS, f"seed {SEED}", f"{time.time() - start:.0f} s",
      f"cell joined at {construction.added_at} to outputs {joined}",
      f"success {trainer.milestones}",
      f"end error max {err.max():.2f} mean {err.mean():.2f} above 0.25 {int((err > 0.25).sum())}")
