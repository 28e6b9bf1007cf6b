"""Experiments on the paper setting's Exp. 4 (adding, T = 100) and Exp. 2c (q = p = 50) rows.

The commands behind sections E11-E17 of docs/paper-setting-notes.md. Every trial is built and
trained exactly as ``lstmkit reproduce ROW --setting paper`` does (``_make_trainer``, then
``train_trials``: trials side by side, the compiled step loop); options change one thing each.
Run from the repository root with ``PYTHONPATH=src``, one thread::

    python docs/paper-setting/endtasks.py update ROW
    python docs/paper-setting/endtasks.py train ROW SEEDS BUDGET OUT [lr=X] [swap=1] [both=1]
        [streak=1] [igb=B1,B2] [linout=1]
    python docs/paper-setting/endtasks.py errors4 OUT SEEDS N
    python docs/paper-setting/endtasks.py inside4 OUT SEED
    python docs/paper-setting/endtasks.py errors2c ROW OUT SEEDS N
    python docs/paper-setting/endtasks.py init2c ROW SEEDS N

``update``: one training step of three fresh nets against the Appendix A.1 rule
(:func:`lstmkit.train.online.online_step`). ``train``: SEEDS (comma-separated) to BUDGET
sequences, each net saved to ``OUT_SEED.pt`` with its curve in ``OUT_SEED.curve.json``; the
options: ``lr`` the SGD rate on the squared error (the paper setting's is alpha / 2), ``swap``
h in [-2, 2] and g in [-1, 1], ``both`` Exp. 2c's rule as a training window and as a frozen
test, ``streak`` the longest run of correct training sequences, ``igb`` the initial input-gate
biases, ``linout`` a linear output unit.
``errors4`` / ``errors2c``: which of N fresh test sequences a saved net gets wrong, by kind of
sequence. ``inside4``: a saved Exp. 4 net's output net input and cell outputs at the sequence
end against X1 + X2. ``init2c``: the untrained nets' cell states at the end of N fresh Exp. 2c
sequences, and how many of their cells are saturated there.
"""

from __future__ import annotations

import copy
import json
import sys
import time

import torch

from lstmkit.reproduce import experiments, nets
from lstmkit.reproduce.runner import _make_trainer
from lstmkit.train.criteria import RecentSequences, TestSet
from lstmkit.train.online import online_step
from lstmkit.train.trials import CHUNK, CompiledChunk, TrialGroup, train_trials

TEST_SEED = 12345


class Streak(RecentSequences):
    """A training-stream rule that also keeps the longest run of correct training sequences."""

    run = best = 0

    def update(self, correct: list[bool], errors: list[float]) -> bool:
        for ok in correct:
            self.run = self.run + 1 if ok else 0
            self.best = max(self.best, self.run)
        return super().update(correct, errors)


def _trainer(row: str, seed: int, budget: int = 10):
    trainer, _ = _make_trainer(row, "paper", None, seed, budget, task_params=None,
                               checkpoint_dir=None, checkpoint_every=0, progress=False,
                               position=0, chunk=CHUNK)
    return trainer


def update(row: str) -> None:
    """The compiled group step against the paper's rule, on one sequence per seed."""
    for seed in (100, 101, 102):
        tr = _trainer(row, seed)
        model, task = tr.model, tr.task
        batch = task.sample(1, generator=torch.Generator().manual_seed(seed))
        ref, init = copy.deepcopy(model), copy.deepcopy(model)
        online_step(ref, batch, 2 * tr.config.lr)  # Appendix A.1 at the paper's alpha
        group = TrialGroup(model, 1, optimizer="sgd", lr=tr.config.lr, clip_norm=None)
        group.attach(0, model, None)
        chunk = CompiledChunk(group, batch, 1, 1)
        chunk.set_scale(task.loss_kind, batch.mask)
        group.run_steps(chunk, 0, 1)
        group.detach(0, model)
        gap = max((a - b).abs().max().item() for a, b in zip(model.parameters(),
                                                              ref.parameters()))
        change = max((a - b).abs().max().item() for a, b in zip(ref.parameters(),
                                                                 init.parameters()))
        print(f"{row} seed {seed} lr {tr.config.lr}: largest weight change {change:.2e}, "
              f"largest |compiled step - Appendix A.1| {gap:.2e}")


def train(row: str, seeds: str, budget: str, out: str, *opts: str) -> None:
    """Train SEEDS side by side as the runner does, with the options' one change each."""
    params = dict(o.split("=", 1) for o in opts)
    if params.get("linout"):
        # A linear output unit instead of the logistic one.
        type(experiments.get(row).make_task()).output_activation = "identity"
    if params.get("swap"):
        # Table 10's caption reading: h in [-2, 2], g in [-1, 1] (the text says the reverse).
        plain = nets.paper_spec
        nets.paper_spec = lambda setting: plain(setting).replace(
            input_activation="sigmoid_pm1", output_activation="sigmoid_pm2")
    trainers = []
    for seed in (int(s) for s in seeds.split(",")):
        tr = _trainer(row, seed, int(budget))
        if params.get("both"):
            # Both readings of Exp. 2c's success rule on one run: a window over the training
            # stream and a 10,000-sequence test of the frozen net every 1,000 sequences.
            tr.criteria = {"WINDOW": RecentSequences(window=10_000, max_wrong=0),
                           "TEST": TestSet(size=10_000, max_wrong=0)}
        if params.get("streak"):
            for name, rule in list(tr.criteria.items()):
                if isinstance(rule, RecentSequences):
                    tr.criteria[name] = Streak(rule.window, rule.max_wrong, rule.max_mean_error)
        if "lr" in params:
            tr.config.lr = float(params["lr"])
        if "igb" in params:
            # Other initial input-gate biases, one per block (Table 10: -3, -6 for Exp. 4).
            layer = tr.model.layer
            with torch.no_grad():
                layer.bias_ih_l0[layer.layout.bias_slice("i")] = torch.tensor(
                    [float(v) for v in params["igb"].split(",")])
        trainers.append(tr)
    start = time.time()
    trials = train_trials(trainers, chunk=CHUNK)
    for tr, trial in zip(trainers, trials):
        seed, res = tr.config.seed, trial.result
        streaks = [c.best for c in tr.criteria.values() if isinstance(c, Streak)]
        print(f"seed {seed} success {res.success} sequences {res.sequences} milestones "
              f"{dict(tr.milestones)} longest correct run {streaks} test wrong "
              f"{res.test['wrong']:g} of {res.test['size']:g}, mean |err| "
              f"{res.test['mean_abs_error']:.4f}", flush=True)
        torch.save(tr.model.state_dict(), f"{out}_{seed}.pt")
        with open(f"{out}_{seed}.curve.json", "w") as f:
            json.dump(list(tr.curve), f)
    print("wall", round(time.time() - start))


def _saved(row: str, out: str, seed: int):
    tr = _trainer(row, seed)
    tr.model.load_state_dict(torch.load(f"{out}_{seed}.pt"))
    return tr.model, tr.task


def errors4(out: str, seeds: str, n: str) -> None:
    """Exp. 4: the wrong test sequences by kind."""
    for seed in (int(s) for s in seeds.split(",")):
        model, task = _saved("exp4-T100", out, seed)
        b = task.sample(int(n), generator=torch.Generator().manual_seed(TEST_SEED))
        with torch.no_grad():
            y = model(b.inputs, b.lengths)
        idx = torch.arange(b.batch_size)
        err = y[b.lengths - 1, idx, 0] - b.targets[b.lengths - 1, idx, 0]
        tgt = b.targets[b.lengths - 1, idx, 0]
        wrong = err.abs() >= 0.04
        p1, p2 = b.info["positions"]
        x1, x2 = b.info["operands"]
        first = (p1 == 0) | (p2 == 0)
        print(f"seed {seed}: wrong {int(wrong.sum())} of {b.batch_size} "
              f"({100 * wrong.float().mean():.2f} %), mean |err| {err.abs().mean():.4f}")

        def share(name: str, sel: torch.Tensor, wrong=wrong, err=err) -> None:
            k, w = int(sel.sum()), int((wrong & sel).sum())
            print(f"  {name:30s} {k:6d} seqs, {w:4d} wrong ({100 * w / max(k, 1):5.2f} %), "
                  f"mean err {err[sel].mean():+.4f}, mean |err| {err[sel].abs().mean():.4f}")

        share("first pair marked (X1 there)", p1 == 0)
        share("first pair marked (X2 there)", p2 == 0)
        share("first pair not marked", ~first)
        for lo, hi in ((0.0, 0.1), (0.1, 0.2), (0.2, 0.8), (0.8, 0.9), (0.9, 1.01)):
            share(f"target in [{lo}, {hi})", ~first & (tgt >= lo) & (tgt < hi))
        for lo, hi in ((1, 10), (10, 30), (30, 50)):
            share(f"X2 at step [{lo}, {hi})", ~first & (p2 >= lo) & (p2 < hi))
        for lo, hi in ((100, 104), (104, 108), (108, 111)):
            share(f"length [{lo}, {hi})", ~first & (b.lengths >= lo) & (b.lengths < hi))


def inside4(out: str, seed: str) -> None:
    """Exp. 4: the output's net input and the cell outputs at the end, by X1 + X2."""
    model, task = _saved("exp4-T100", out, int(seed))
    b = task.sample(25_600, generator=torch.Generator().manual_seed(TEST_SEED))
    with torch.no_grad():
        hidden, _ = model.layer(b.inputs, None, lengths=b.lengths)
        cells = hidden[b.lengths - 1, torch.arange(b.batch_size)]
        net = model.readout(cells)[:, 0]
    total = b.info["operands"].sum(0)
    target = 0.5 + total / 4
    print("readout weights", [round(v, 2) for v in model.readout.weight[0].tolist()],
          "bias", round(model.readout.bias.item(), 2))
    print("X1 + X2        n   net_k  logit(t)  output  target  cell outputs at the end")
    for lo in torch.arange(-2.0, 2.0, 0.4).tolist():
        sel = (total >= lo) & (total < lo + 0.4)
        t = target[sel]
        print(f"[{lo:+.1f},{lo + 0.4:+.1f}) {int(sel.sum()):5d} {net[sel].mean():+7.3f} "
              f"{torch.logit(t.clamp(1e-4, 1 - 1e-4)).mean():+8.3f}  "
              f"{torch.sigmoid(net[sel]).mean():.3f}   {t.mean():.3f}   "
              + " ".join(f"{v:+.3f}" for v in cells[sel].mean(0).tolist()))


def errors2c(row: str, out: str, seeds: str, n: str) -> None:
    """Exp. 2c: the wrong test sequences by suffix length and class."""
    for seed in (int(s) for s in seeds.split(",")):
        model, task = _saved(row, out, seed)
        b = task.sample(int(n), generator=torch.Generator().manual_seed(TEST_SEED))
        with torch.no_grad():
            y = model(b.inputs, b.lengths)
            _, state = model.layer(b.inputs, None, lengths=b.lengths)
        cells, gates = state[1][0], state[2][0]  # cell states, gate activations at the end
        idx = torch.arange(b.batch_size)
        err = (y[b.lengths - 1, idx] - b.targets[b.lengths - 1, idx]).abs().amax(-1)
        wrong = err >= 0.2
        k, label = b.info["suffix"], b.info["label"]
        print(f"seed {seed}: wrong {int(wrong.sum())} of {b.batch_size}, mean max|err| "
              f"{err.mean():.4f}, wrong x/y {int((wrong & (label == 0)).sum())}/"
              f"{int((wrong & (label == 1)).sum())}")
        print("  input gates at the end (mean) " + " ".join(
            f"{v:.2f}" for v in gates[:, :2].mean(0).tolist()))
        for cls in (0, 1):
            ours = label == cls
            for name, sel in (("right", ~wrong & ours), ("wrong", wrong & ours)):
                if sel.any():
                    print(f"  class {'xy'[cls]} {name}: {int(sel.sum()):5d} seqs, cell states at "
                          f"the end, mean " + " ".join(f"{v:+6.1f}" for v in cells[sel].mean(0))
                          + ", std "
                          + " ".join(f"{v:4.1f}" for v in cells[sel].std(0).nan_to_num()))
        for lo, hi in ((0, 5), (5, 10), (10, 20), (20, 30), (30, 1000)):
            sel = (k >= lo) & (k < hi)
            m = max(int(sel.sum()), 1)
            print(f"  suffix k in [{lo}, {hi}): {int(sel.sum()):6d} seqs, "
                  f"{int((wrong & sel).sum()):4d} wrong ({100 * int((wrong & sel).sum()) / m:5.2f} "
                  f"%), mean max|err| {err[sel].mean():.4f}")


def init2c(row: str, seeds: str, n: str) -> None:
    """Exp. 2c: the cell states of the untrained nets at the sequence end."""
    saturated = total = 0
    nets = [0] * 3  # nets with 0, 1, 2 or more saturated cells
    for seed in (int(s) for s in seeds.split(",")):
        tr = _trainer(row, seed)
        b = tr.task.sample(int(n), generator=torch.Generator().manual_seed(TEST_SEED))
        with torch.no_grad():
            _, state = tr.model.layer(b.inputs, None, lengths=b.lengths)
        cells = state[1][0]
        # h(s) = 2 sigmoid(s) - 1, so h'(s) = 2 sigmoid(s) (1 - sigmoid(s)), at most 0.5.
        slope = 2 * torch.sigmoid(cells) * (1 - torch.sigmoid(cells))
        flat = slope.mean(0) < 0.01
        saturated, total = saturated + int(flat.sum()), total + flat.numel()
        nets[min(int(flat.sum()), 2)] += 1
        print(f"seed {seed}: mean |s| at the end per cell "
              + " ".join(f"{v:5.1f}" for v in cells.abs().mean(0).tolist())
              + ", mean h'(s) " + " ".join(f"{v:.3f}" for v in slope.mean(0).tolist()))
    print(f"{row}: {saturated} of {total} cells saturated at the end (mean h'(s) < 0.01); "
          f"nets with 0 / 1 / 2 saturated cells: {nets[0]} / {nets[1]} / {nets[2]}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    commands = {"update": update, "train": train, "errors4": errors4, "inside4": inside4,
                "errors2c": errors2c, "init2c": init2c}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        raise SystemExit(f"command: expected one of {sorted(commands)}, got {sys.argv[1:2]}")
    commands[sys.argv[1]](*sys.argv[2:])
