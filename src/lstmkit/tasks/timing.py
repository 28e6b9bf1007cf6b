"""Measuring spike delays (MSD), the timing task of the peephole papers.

Gers & Schmidhuber 2000 (IJCNN, "Recurrent nets that time and count") and Gers, Schraudolph &
Schmidhuber 2002 (JMLR 3:115-143, §4.1). Only the abstracts, a few quotations and secondary notes
were available (see the task's docstring for what they pin down).
"""

from __future__ import annotations

import dataclasses
import numbers

import torch

from .base import Batch, Criterion, PaperReference, PaperSetting, Task, int_param


def _setting(continual: bool, sigmoid: bool) -> PaperSetting:
    return PaperSetting(
        source="Gers, Schraudolph & Schmidhuber 2002 §4 (setup from secondary notes)",
        row="MSD" if continual else "NMSD", blocks=1, cells_per_block=1, input_size=1,
        output_size=1, weights=17, connectivity="C", learning_rate=1e-5,
        momentum=0.9999 if continual else 0.99, init_range=0.1, output_gate_bias=(2.0,),
        input_gate_bias=(0.0,), forget_gate=True, forget_gate_bias=(-2.0,), peephole=True,
        biased="all", g="identity", output_activation="sigmoid" if sigmoid else "identity",
        reset=not continual,
        stopping=(Criterion("STREAM", {"spikes": 100}, "a training stream ends at the first "
                            "error or after 100 spikes"),
                  Criterion("MAX_SEQUENCES", {"limit": 100_000_000})),
        success=Criterion("ABS", {"beta": 0.49, "where": "spikes", "spikes": 1000},
                          "a test stream ends at the first error or after 1000 spikes"),
        test_set_size=1, selection="t3", trials=10, evidence="S",
        notes="h is not given by the notes available (sigmoid_pm1 assumed); one test stream "
              "after every training stream",
    )


class SpikeTiming(Task):
    """``spike_timing``: measuring spike delays (MSD), Gers et al. 2002 §4.1 / IJCNN 2000.

    One binary input line, a spike being a 1. Spike n comes at time T(n) = T(n-1) + F + I(n),
    with F the fixed period and I(n) a small random delay; the target at T(n) is I(n). With
    ``spikes=1`` this is the non-continual NMSD (one interval per sequence, reset after it);
    with more spikes it is the continual MSD stream (the paper trained on streams of 100 and
    tested on streams of 1000, ending a stream at its first error).

    What the sources pin down: the spike recurrence, the target I(n) at spike times, I(n) in
    {0, 1} or {0, 1, 2} (and wider sets {0, i}, {0..i} with an identity output), F = 10 and the
    49-vs-50 distinction (F = 49, I in {0, 1}), the error tolerance 0.49, the 17-weight net.
    What they do not: the distribution of I(n) (taken uniform over ``delays``); whether targets
    exist between spikes (here: no, the mask holds only the spike steps); the time origin (here:
    T(0) = 0 is the start of the sequence and step j is time j + 1, so the first spike comes
    after F + I(1) - 1 zeros, exactly like every later one); the error function (squared error
    assumed).

    ``outputs``: sigmoid activations when every delay is 0 or 1, else identity outputs
    (``output_activation`` says which), as the source switched to an identity output for wider
    delay sets. Loss: squared error at the spike steps, summed per sequence. Correct: absolute
    error below 0.49 at every spike. The published numbers (JMLR Table 1) were not extracted;
    the references carry only the qualitative statements.

    ``info``: ``delays`` long ``[spikes, B]`` (I(n)), ``spike_steps`` long ``[spikes, B]``.
    """

    name = "spike_timing"
    input_size = output_size = 1
    tolerance = 0.49

    def __init__(self, F: int = 10, delays: tuple[int, ...] = (0, 1), spikes: int = 100) -> None:
        self.F = int_param(self.name, "F", F, 1)
        if not isinstance(delays, (tuple, list)) or len(delays) < 2 or len(set(delays)) != len(
            delays
        ) or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and d >= 0
                     for d in delays):
            raise ValueError(f"{self.name}: delays: expected a tuple of at least two distinct "
                             f"non-negative ints, got {delays!r}")
        self.delays = tuple(int(d) for d in delays)
        self.spikes = int_param(self.name, "spikes", spikes, 1)
        self.output_activation = "sigmoid" if max(self.delays) <= 1 else "identity"
        self._set_params(F=self.F, delays=self.delays, spikes=self.spikes)

    @property
    def setting(self) -> PaperSetting:
        return _setting(self.spikes > 1, self.output_activation == "sigmoid")

    def _sample(self, batch_size: int, gen: torch.Generator) -> Batch:
        choices = torch.tensor(self.delays)
        delays = choices[torch.randint(0, len(choices), (self.spikes, batch_size), generator=gen)]
        spike_steps = torch.cumsum(self.F + delays, 0) - 1
        lengths = spike_steps[-1] + 1
        steps = int(lengths.max())
        inputs = torch.zeros(steps, batch_size).scatter_(0, spike_steps, 1.0)
        targets = torch.zeros(steps, batch_size).scatter_(0, spike_steps, delays.float())
        mask = torch.zeros(steps, batch_size, dtype=torch.bool).scatter_(0, spike_steps, True)
        info = {"delays": delays, "spike_steps": spike_steps}
        return Batch(inputs.unsqueeze(-1), targets.unsqueeze(-1), mask, lengths, info)

    REFERENCES = (
        PaperReference("Gers & Schmidhuber 2000 (IJCNN) abstract", method="LSTM with peepholes",
                       params={"F": 49, "delays": (0, 1)}, evidence="V",
                       notes="learns the distinction between spikes 50 or 49 steps apart "
                             "without short training exemplars; no numbers in the abstract"),
        *(PaperReference("Gers et al. 2002 §4.2", method=m, params={"F": 10, "delays": d},
                         evidence="Q", setting=dataclasses.replace(
                             _setting(True, max(d) <= 1), peephole=peep,
                             weights=17 if peep else 14),
                         notes="continual MSD solved with or without peephole connections; "
                               "Table 1 numbers not extracted")
          for d in ((0, 1), (0, 1, 2))
          for m, peep in (("LSTM with peepholes", True), ("LSTM", False))),
    )
