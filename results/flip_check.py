"""Whether a trained Exp. 2c net answers from its memory of the second symbol.

Usage: python results/flip_check.py ROW SETTING CELL SEED CHECKPOINT [N]

Loads a trial's checkpoint (``results/.../checkpoints/trial-SEED.pt``, kept by ``lstmkit
reproduce`` beside its results), draws N fresh sequences (default 500), swaps x and y at the
second position only, and prints how many of the net's answers at the sequence end follow the
swap. A net that remembers the second symbol flips every answer; one that guesses from anything
else does not.
"""

from __future__ import annotations

import sys

import torch

from lstmkit.reproduce.runner import _make_trainer
from lstmkit.train.checkpoint import load_checkpoint


def main(row: str, setting: str, cell: str, seed: str, path: str, n: str = "500") -> None:
    trainer, _ = _make_trainer(row, setting, None if cell == "-" else cell, int(seed), 1,
                               task_params=None, checkpoint_dir=None, checkpoint_every=0,
                               progress=False, position=0)
    trainer.model.load_state_dict(load_checkpoint(path)["model"])
    batch = trainer.task.sample(int(n), generator=torch.Generator().manual_seed(777))
    swapped = batch.inputs.clone()
    x, y = batch.inputs.shape[-1] - 2, batch.inputs.shape[-1] - 1  # the last two symbols
    swapped[1, :, x], swapped[1, :, y] = batch.inputs[1, :, y], batch.inputs[1, :, x]
    last, rows = batch.lengths - 1, torch.arange(batch.batch_size)
    with torch.no_grad():
        before = trainer.model(batch.inputs, batch.lengths)[last, rows].argmax(-1)
        after = trainer.model(swapped, batch.lengths)[last, rows].argmax(-1)
    right = int((before == batch.targets[last, rows].argmax(-1)).sum())
    print(f"{row} {setting} {cell} seed {seed}: {right} of {n} answers right; swapping x and y "
          f"at the second position flips {int((before != after).sum())} of {n}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(*sys.argv[1:])
