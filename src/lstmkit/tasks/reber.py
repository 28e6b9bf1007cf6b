"""The embedded Reber grammar: H&S 1997 Exp. 1 and its continual version (Gers et al. 2000).

The grammar is a small automaton (:data:`SYMBOLS`, transition tables below). Strings are random
walks that take each branch with probability 0.5; the same walk, looping from the final E back to
the start, gives the continual stream.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import Tensor

from .base import (
    Batch,
    Criterion,
    PaperReference,
    PaperSetting,
    Task,
    choice_param,
    int_param,
    next_symbol_batch,
)

#: Input/output unit order.
SYMBOLS = "BTPSXVE"
_S = {c: i for i, c in enumerate(SYMBOLS)}
#: The (inner) Reber graph of Cleeremans et al. 1989 / Fahlman 1991: node -> [(symbol, next)];
#: node 5 is the end, where the inner string's E follows.
_REBER = {0: "T1P2", 1: "S1X3", 2: "T2V4", 3: "X2S5", 4: "P3V5"}
_DONE = 19


def _tables() -> tuple[np.ndarray, np.ndarray]:
    """Embedded-grammar automaton: node 0 emits B, node 1 chooses T/P, nodes 2-9 (10-17) are
    the B, the inner graph, the inner E and the closing T (P) of the T (P) branch, node 18 emits
    the final E and node 19 is done. ``sym[node, coin]``, ``nxt[node, coin]``."""
    edges: dict[int, list[tuple[str, int]]] = {0: [("B", 1)], 1: [("T", 2), ("P", 10)]}
    for o, c in ((2, "T"), (10, "P")):
        edges[o] = [("B", o + 1)]
        for node, out in _REBER.items():
            edges[o + 1 + node] = [(out[i], o + 1 + int(out[i + 1])) for i in (0, 2)]
        edges[o + 6] = [("E", o + 7)]
        edges[o + 7] = [(c, 18)]
    edges[18] = [("E", _DONE)]
    sym = np.full((_DONE + 1, 2), -1)
    nxt = np.full((_DONE + 1, 2), _DONE)
    for node, out in edges.items():
        for coin in (0, 1):
            s, n = out[coin % len(out)]
            sym[node, coin], nxt[node, coin] = _S[s], n
    return sym, nxt


_SYM, _NEXT = _tables()
_NEXT_CYCLIC = _NEXT.copy()
_NEXT_CYCLIC[18] = 0  # continual stream: the next string starts right after the final E
#: POSSIBLE[node]: the symbols that may be emitted from node (bool [nodes, 7]).
POSSIBLE = np.zeros((_DONE + 1, len(SYMBOLS)), dtype=bool)
for _n in range(_DONE):
    POSSIBLE[_n, _SYM[_n]] = True
_BY_SYMBOL = np.full((_DONE + 1, len(SYMBOLS)), -1)
for _n in range(_DONE):
    _BY_SYMBOL[_n, _SYM[_n]] = _NEXT[_n]


def _walk(coins: np.ndarray, node: np.ndarray, nxt: np.ndarray) -> tuple[np.ndarray, ...]:
    """Run the automaton over ``coins`` ``[L, B]`` from ``node``: symbols (-1 once done) and the
    node reached after each symbol."""
    syms = np.empty(coins.shape, dtype=np.int64)
    nodes = np.empty(coins.shape, dtype=np.int64)
    for t in range(coins.shape[0]):
        syms[t] = _SYM[node, coins[t]]
        node = nodes[t] = nxt[node, coins[t]]
    return syms, nodes


def embedded_reber_strings(n: int, generator: torch.Generator) -> list[str]:
    """``n`` random embedded Reber strings (each branch with probability 0.5)."""
    node = np.zeros(n, dtype=np.int64)
    chunks = []
    while (node != _DONE).any():
        coins = torch.randint(0, 2, (64, n), generator=generator).numpy()
        syms, nodes = _walk(coins, node, _NEXT)
        chunks.append(syms)
        node = nodes[-1]
    syms = np.concatenate(chunks).T
    return ["".join(SYMBOLS[s] for s in row if s >= 0) for row in syms]


def encode(strings: list[str] | tuple[str, ...]) -> Batch:
    """Next-symbol batch of embedded Reber strings: targets one-hot next symbol,
    ``info["possible"]`` (bool ``[T, B, 7]``) the grammatical next symbols at each step."""
    width = max(len(s) for s in strings)
    symbols = np.full((width, len(strings)), -1)
    for b, s in enumerate(strings):
        symbols[: len(s), b] = [_S[c] for c in s]
    node = np.zeros(len(strings), dtype=np.int64)
    possible = np.zeros((width, len(strings), len(SYMBOLS)), dtype=bool)
    for t in range(width):
        valid = symbols[t] >= 0
        node = np.where(valid, _BY_SYMBOL[node, symbols[t].clip(0)], node)
        if (node < 0).any():
            raise ValueError(f"encode: string {strings[int(np.argmax(node < 0))]!r} is not "
                             "in the embedded Reber grammar")
        possible[t] = POSSIBLE[node] & valid[:, None]
    batch = next_symbol_batch(torch.from_numpy(symbols), len(SYMBOLS))
    batch.info["possible"] = torch.from_numpy(possible[: batch.steps])
    batch.time_info = ("possible",)
    return batch


def _setting_1(row: str, blocks: int, lr: float) -> PaperSetting:
    return PaperSetting(
        source="H&S 1997 §5.1, Tables 10-11", row=row, blocks=blocks,
        cells_per_block=1 if blocks == 4 else 2, input_size=7, output_size=7,
        weights=264 if blocks == 4 else 276, connectivity="F", learning_rate=lr,
        init_range=0.2, output_gate_bias=tuple(-float(i) for i in range(1, blocks + 1)),
        input_gate_bias="random", biased="gates",
        stopping=(Criterion("ALL_CORRECT", {"splits": ("train", "test")}),),
        success=Criterion("ALL_CORRECT", {"splits": ("train", "test")},
                          "every symbol of every training and test string predicted "
                          "correctly: the possible next symbols are the most active outputs"),
        test_set_size=256, selection="t1", trials=30,
        notes="3 random training/test set pairs x 10 trials each",
    )


class _ReberTask(Task):
    """Shared by the Reber tasks: 7 one-hot symbols in and out, sigmoid output activations,
    squared-error loss against the one-hot *actual* next symbol at every step (as the paper
    trained), correctness by the *possible* next symbols in ``info["possible"]``."""

    input_size = output_size = len(SYMBOLS)
    time_info = ("possible",)
    one_hot_targets = True

    def _step_correct(self, outputs: Tensor, batch: Batch) -> Tensor:
        """bool ``[T, B]``: the units of all possible next symbols are more active than every
        other unit (ties count as wrong)."""
        possible = batch.info["possible"].to(outputs.device)
        low = outputs.masked_fill(~possible, float("inf")).amin(-1)
        high = outputs.masked_fill(possible, float("-inf")).amax(-1)
        return low > high

    def evaluate(self, outputs: Tensor, batch: Batch) -> Tensor:
        """bool ``[B]``: every step of the sequence is correct (see :meth:`_step_correct`)."""
        outputs = self._check_outputs(outputs, batch).detach()
        return (self._step_correct(outputs, batch) | ~batch.mask.to(outputs.device)).all(0)


class Reber(_ReberTask):
    """``reber``: H&S 1997 Exp. 1 (§5.1), the embedded Reber grammar.

    Strings B (T|P) <Reber string> (same T|P) E over B, T, P, S, X, V, E (:data:`SYMBOLS`), one
    symbol per step; the net reads every symbol but the last and predicts the next one. The
    graph is the standard one of Cleeremans et al. 1989 / Fahlman 1991 (the paper's figure).
    Shortest string: 9 symbols; mean length 12.

    Data: ``train_size`` (256) training strings and ``test_size`` (256) test strings, a fixed
    split drawn from ``seed``. ``sample`` draws uniformly from the training set ("exemplars
    picked randomly from the training set"); ``sample(..., split="test")`` from the test set;
    :meth:`test_batch` / :meth:`train_batch` give a whole split in order.

    Choices: both sets are i.i.d. random walks (duplicates allowed, as "generated randomly"
    reads); test strings that occur in the training set are rejected and redrawn, so the sets
    are disjoint.

    Targets: ``targets`` is the one-hot actual next symbol, which the paper trained with and
    ``loss`` uses (squared error summed over units and steps). ``info["possible"]`` is the
    multi-hot set of possible next symbols, which ``evaluate`` uses: a string is correct when at
    every step the output units of the possible next symbols are the most active ones.
    ``outputs`` are sigmoid activations. Compare with Table 1: LSTM 3 blocks of 2, lr 0.5: 100%
    of 30 trials, 8,440 sequences (:attr:`setting` is that row); RCC 50%, 182,000.
    """

    name = "reber"

    def __init__(self, seed: int = 0, train_size: int = 256, test_size: int = 256) -> None:
        seed = int_param(self.name, "seed", seed, 0)
        train_size = int_param(self.name, "train_size", train_size, 1)
        test_size = int_param(self.name, "test_size", test_size, 1)
        self._set_params(seed=seed, train_size=train_size, test_size=test_size)
        gen = torch.Generator().manual_seed(seed)
        self.train_strings = tuple(embedded_reber_strings(train_size, gen))
        seen = set(self.train_strings)
        test: list[str] = []
        while len(test) < test_size:
            test += [s for s in embedded_reber_strings(test_size, gen) if s not in seen]
        self.test_strings = tuple(test[:test_size])
        self._splits = {"train": encode(self.train_strings), "test": encode(self.test_strings)}

    def sample(
        self, batch_size: int, generator: torch.Generator | None = None, split: str = "train"
    ) -> Batch:
        """``batch_size`` strings drawn uniformly, with replacement, from ``split``."""
        batch_size = int_param(self.name, "batch_size", batch_size, 1)
        choice_param(self.name, "split", split, ("train", "test"))
        full = self._splits[split]
        gen = self._generator(generator)
        pick = torch.randint(0, full.batch_size, (batch_size,), generator=gen)
        steps = int(full.lengths[pick].max())
        return Batch(
            full.inputs[:steps, pick], full.targets[:steps, pick], full.mask[:steps, pick],
            full.lengths[pick], {k: v[:steps, pick] for k, v in full.info.items()},
            full.time_info,
        )

    def train_batch(self) -> Batch:
        """The whole training set, in order, as one batch."""
        return self._splits["train"].clone()

    def test_batch(self) -> Batch:
        """The whole test set, in order, as one batch."""
        return self._splits["test"].clone()

    @property
    def setting(self) -> PaperSetting:
        """Table 10 row 1-5 (3 blocks of 2 cells, lr 0.5), Table 1's best LSTM row."""
        return next(r.setting for r in self.REFERENCES if r.setting and r.setting.row == "1-5")

    REFERENCES = tuple(
        [
            PaperReference("H&S 1997 Table 1", method=m, sequences=seq, success_rate=rate,
                           trials=30 if m == "LSTM" else None, weights=w,
                           metrics={"learning_rate": lr} if lr else {},
                           setting=_setting_1(row, blocks, lr) if m == "LSTM" else None,
                           notes=note)
            for m, row, blocks, lr, w, rate, seq, note in [
                ("RTRL", "", 0, 0.05, 170, None, 173_000, "3 hidden units, ~170 weights "
                 "(estimate); 'some fraction' of trials; Smith & Zipser 1989, easier data"),
                ("RTRL", "", 0, 0.1, 494, None, 25_000, "12 hidden units, ~494 weights "
                 "(estimate); 'some fraction' of trials; Smith & Zipser 1989, easier data"),
                ("ELM", "", 0, None, 435, 0.0, None, "15 hidden units, ~435 weights; no "
                 "success within 200,000 (Cleeremans et al. 1989)"),
                ("RCC", "", 0, None, None, 0.5, 182_000, "7-9 hidden units, ~119-198 weights "
                 "(Fahlman 1991)"),
                ("LSTM", "1-1", 4, 0.1, 264, 1.0, 39_740, "4 blocks of 1 cell"),
                ("LSTM", "1-2", 3, 0.1, 276, 1.0, 21_730, "3 blocks of 2 cells"),
                ("LSTM", "1-3", 3, 0.2, 276, 0.97, 14_060, "3 blocks of 2 cells"),
                ("LSTM", "1-4", 4, 0.5, 264, 0.97, 9_500, "4 blocks of 1 cell"),
                ("LSTM", "1-5", 3, 0.5, 276, 1.0, 8_440, "3 blocks of 2 cells; varies between "
                 "3,800 and 24,100"),
            ]
        ]
    )


_GERS_FG = PaperSetting(
    source="Gers et al. 2000 §3-4, Table 2", row="CERG, forget gates", blocks=4,
    cells_per_block=2, input_size=7, output_size=7, weights=424, connectivity="C",
    learning_rate=0.5, init_range=0.2, output_gate_bias=(-0.5, -1.0, -1.5, -2.0),
    input_gate_bias=(-0.5, -1.0, -1.5, -2.0), forget_gate=True,
    forget_gate_bias=(0.5, 1.0, 1.5, 2.0), biased="gates+output", output_from_cells_only=False,
    input_shortcut=True, reset=False,
    stopping=(Criterion("STREAM", {"limit": 100_000}, "a training stream ends at the first "
                        "wrong prediction or after 10^5 symbols (one secondary source: 10^6)"),
              Criterion("MAX_SEQUENCES", {"limit": 30_000}, "at most 30,000 training streams")),
    success=Criterion("PERFECT_STREAMS", {"streams": 10, "length": 100_000}),
    test_set_size=10, selection="stream", trials=100, evidence="S",
    notes="on-line RTRL-style updates at every step; 10 test streams after each training "
          "stream; h and g are not in the reference notes and are assumed as in H&S 1997",
)


class ContinualReber(_ReberTask):
    """``continual_reber``: Gers, Schmidhuber & Cummins 2000 §4 (CERG), no resets.

    One continual stream per batch column: embedded Reber strings generated as in ``reber`` and
    concatenated without any marker or reset, ``length`` steps long (the net reads ``length``
    symbols and predicts each next one; after a final E the next symbol is the B of the next
    string). ``targets`` one-hot actual next symbol (loss: squared error summed over units and
    steps, sigmoid output activations), ``info["possible"]`` the possible next symbols.

    ``criterion`` picks what a correct step is: ``"possible"`` (default, the H&S 1997 Exp. 1
    criterion: the possible next symbols are the most active outputs) or ``"threshold"`` (the
    reading of Gers et al.'s criterion in secondary notes: the squared error of every output
    unit against the actual next symbol below 0.49). The paper's PDF was not available to pin
    this down. ``evaluate`` says whether a whole stream is correct; :meth:`error_free_length`
    gives the number of symbols predicted before the first error, the quantity of Table 2.
    Default ``length`` 100,000: the paper's test streams (10 streams of 10^5 symbols make a
    "perfect solution"; training streams end at the first error or after 10^5 symbols).
    Compare with Table 2 (100 networks): forget gates 18% perfect (18,889 streams), with
    alpha decay 62% (14,087), standard LSTM 0%, standard LSTM with external resets 74% (7,441).

    ``info``: ``possible`` bool ``[T, B, 7]``, ``string_start`` bool ``[T, B]`` (the B that
    begins each string).
    """

    name = "continual_reber"
    time_info = ("possible", "string_start")

    def __init__(self, length: int = 100_000, criterion: str = "possible") -> None:
        self.length = int_param(self.name, "length", length, 1)
        self.criterion = choice_param(self.name, "criterion", criterion,
                                      ("possible", "threshold"))
        self._set_params(length=self.length, criterion=self.criterion)

    def _sample(self, batch_size: int, gen: torch.Generator) -> Batch:
        coins = torch.randint(0, 2, (self.length + 1, batch_size), generator=gen).numpy()
        syms, nodes = _walk(coins, np.zeros(batch_size, dtype=np.int64), _NEXT_CYCLIC)
        symbols = torch.from_numpy(syms)
        batch = next_symbol_batch(symbols, len(SYMBOLS))
        batch.info["possible"] = torch.from_numpy(POSSIBLE[nodes[:-1]])
        batch.info["string_start"] = torch.from_numpy(nodes[:-1] == 1)
        return batch

    def _step_correct(self, outputs: Tensor, batch: Batch) -> Tensor:
        if self.criterion == "possible":
            return super()._step_correct(outputs, batch)
        return ((outputs - batch.targets.to(outputs)).pow(2) < 0.49).all(-1)

    def error_free_length(self, outputs: Tensor, batch: Batch) -> Tensor:
        """long ``[B]``: steps predicted correctly before the first error (the whole length if
        none)."""
        outputs = self._check_outputs(outputs, batch).detach()
        wrong = ~self._step_correct(outputs, batch) & batch.mask.to(outputs.device)
        first = torch.where(wrong.any(0), wrong.float().argmax(0), batch.lengths.to(wrong.device))
        return first.long()

    REFERENCES = tuple(
        PaperReference(
            "Gers et al. 2000 Table 2", method=m, sequences=seq, success_rate=rate, trials=100,
            weights=424 if "forget" in m else None, criterion="PERFECT_STREAMS",
            metrics={"good_solutions": good, "good_mean_length": good_len, "rest": rest,
                     "rest_mean_length": rest_len},
            setting=dataclasses.replace(_GERS_FG, row=m, **changes), evidence="Q",
            notes="sequences counts training streams; good: mean stream length > 1000; "
                  "rest: <= 1000; lengths are mean error-free stream lengths",
        )
        for m, rate, seq, good, good_len, rest, rest_len, changes in [
            ("LSTM with external reset", 0.74, 7441, 0.0, float("nan"), 0.26, 31,
             {"forget_gate": False, "forget_gate_bias": "none", "reset": True, "weights": None}),
            ("standard LSTM", 0.0, None, 0.01, 1166, 0.99, 37,
             {"forget_gate": False, "forget_gate_bias": "none", "weights": None}),
            ("LSTM with state decay (0.9)", 0.0, None, 0.0, float("nan"), 1.0, 56,
             {"forget_gate": False, "forget_gate_bias": "none", "weights": None}),
            ("LSTM with forget gates", 0.18, 18_889, 0.29, 39_171, 0.53, 145, {}),
            ("LSTM with forget gates and sequential alpha decay", 0.62, 14_087, 0.06, 68_464,
             0.32, 30, {"learning_rate_decay": 0.99}),
        ]
    )

    @property
    def setting(self) -> PaperSetting:
        """The forget-gate LSTM of Gers et al. 2000 (Table 2, 'LSTM with forget gates')."""
        return self.REFERENCES[3].setting

