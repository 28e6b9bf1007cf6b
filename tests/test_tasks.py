"""Task suite: the batch contract, the statistics of every generator (targets recomputed
independently from the inputs), the paper's criteria and baselines, paper data, and errors."""

import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lstmkit import tasks
from lstmkit.tasks import Batch, PaperReference, PaperSetting
from lstmkit.tasks.base import last_step, one_hot
from lstmkit.tasks.reber import SYMBOLS, embedded_reber_strings


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


#: Small but faithful parameters for the tests that run over every task.
SMALL = {
    "reber": {},
    "noiseless_lag": {"p": 10},
    "noiseless_lag_random": {"p": 10},
    "very_long_lag": {"p": 8, "q": 20},
    "two_sequence": {"T": 30, "N": 3},
    "adding1997": {"T": 40},
    "multiplication1997": {"T": 40},
    "temporal_order": {},
    "continual_reber": {"length": 200},
    "spike_timing": {"F": 5, "spikes": 4},
    "adding": {"T": 30},
    "copy": {"T": 15},
}
EXTRA = [("two_sequence", {"variant": "b", "T": 30, "N": 1}),
         ("two_sequence", {"variant": "c", "T": 30, "N": 3}),
         ("temporal_order", {"positions": 3}),
         ("continual_reber", {"length": 200, "criterion": "threshold"}),
         ("spike_timing", {"F": 5, "delays": (0, 2, 3), "spikes": 3})]
ALL = [(n, p) for n, p in SMALL.items()] + EXTRA
IDS = [f"{n}-{'-'.join(f'{k}{v}' for k, v in p.items())}" for n, p in ALL]


def perfect(task, batch: Batch) -> torch.Tensor:
    """Outputs that meet the paper's criterion on every sequence."""
    if task.name in ("reber", "continual_reber"):
        # the probability of each next symbol: meets both the "most active" and the 0.49 test
        possible = batch.info["possible"].float()
        return possible / possible.sum(-1, keepdim=True).clamp(min=1)
    if task.name == "copy":
        return torch.nn.functional.one_hot(batch.targets, 9).float() * 10
    out = batch.targets.clone()
    if task.name == "two_sequence":
        out[batch.lengths - 1, torch.arange(batch.batch_size), 0] = batch.info["clean_target"]
    return out


def wrong(task, batch: Batch) -> torch.Tensor:
    """Outputs that fail the criterion on every sequence."""
    if task.name in ("reber", "continual_reber"):
        return 1.0 - batch.info["possible"].float()
    if task.name == "copy":
        return torch.nn.functional.one_hot((batch.targets + 1) % 9, 9).float() * 10
    return perfect(task, batch) + 0.5


# ---------------------------------------------------------------------------------------------
# Contract shared by every task


def test_names_and_registry():
    assert tasks.names() == [
        "reber", "noiseless_lag", "noiseless_lag_random", "very_long_lag", "two_sequence",
        "adding1997", "multiplication1997", "temporal_order", "continual_reber",
        "spike_timing", "adding", "copy",
    ]
    for name in tasks.names():
        task = tasks.make(name, **SMALL[name])
        assert task.name == name and task.__doc__ and task.output_activation in (
            "sigmoid", "identity", "logits")


@pytest.mark.parametrize("name,params", ALL, ids=IDS)
def test_batch_contract(name, params):
    task = tasks.make(name, **params)
    b = task.sample(64, gen(1))
    T, B = b.steps, b.batch_size
    assert B == 64 and b.inputs.dtype == torch.float32
    assert b.inputs.shape == (T, B, task.input_size)
    if task.loss_kind == "ce":
        assert b.targets.shape == (T, B) and b.targets.dtype == torch.long
    else:
        assert b.targets.shape == (T, B, task.output_size) and b.targets.dtype == torch.float32
    assert b.mask.shape == (T, B) and b.mask.dtype == torch.bool
    assert b.lengths.shape == (B,) and b.lengths.dtype == torch.long
    assert int(b.lengths.max()) == T and int(b.lengths.min()) >= 1
    valid = torch.arange(T).unsqueeze(1) < b.lengths
    assert not (b.mask & ~valid).any()
    assert (b.mask.sum(0) >= 1).all()
    assert (b.inputs[~valid] == 0).all()
    if task.loss_kind != "ce":
        assert (b.targets[~valid] == 0).all()


@pytest.mark.parametrize("name,params", ALL, ids=IDS)
def test_seeded_generator_is_reproducible(name, params):
    task = tasks.make(name, **params)
    a, b, c = task.sample(16, gen(5)), task.sample(16, gen(5)), task.sample(16, gen(6))
    for x, y in [(a.inputs, b.inputs), (a.targets, b.targets), (a.mask, b.mask),
                 (a.lengths, b.lengths)] + [(a.info[k], b.info[k]) for k in a.info]:
        assert torch.equal(x, y)
    assert not (a.inputs.shape == c.inputs.shape and torch.equal(a.inputs, c.inputs)
                and torch.equal(a.targets, c.targets))
    torch.manual_seed(3)
    d = task.sample(4)
    torch.manual_seed(3)
    assert torch.equal(d.inputs, task.sample(4).inputs)


@pytest.mark.parametrize("name,params", ALL, ids=IDS)
def test_evaluate_agrees_with_hand_built_outputs(name, params):
    task = tasks.make(name, **params)
    b = task.sample(32, gen(2))
    good, bad = perfect(task, b), wrong(task, b)
    assert task.evaluate(good, b).all()
    assert not task.evaluate(bad, b).any()
    mixed = good.clone()
    mixed[:, 3] = bad[:, 3]
    expected = torch.ones(32, dtype=torch.bool)
    expected[3] = False
    assert torch.equal(task.evaluate(mixed, b), expected)


@pytest.mark.parametrize("name,params", ALL, ids=IDS)
def test_loss_is_the_papers_error_function(name, params):
    task = tasks.make(name, **params)
    b = task.sample(8, gen(3))
    out = perfect(task, b).requires_grad_()
    loss = task.loss(out, b)
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    assert out.grad is not None
    if task.loss_kind == "ce":
        return
    shifted = b.targets + 0.1
    per_position = 0.01 * task.output_size
    positions = b.mask.sum().item()
    expected = per_position * (positions / 8 if task.loss_kind == "sse" else 1.0)
    assert task.loss(shifted, b).item() == pytest.approx(expected, rel=1e-4)
    assert task.loss(b.targets, b).item() == 0.0


def test_batch_to_device_moves_everything():
    b = tasks.make("adding1997", T=40).sample(4, gen())
    m = b.to("meta")
    assert all(t.device.type == "meta" for t in (m.inputs, m.targets, m.mask, m.lengths,
                                                  *m.info.values()))
    assert b.inputs.device.type == "cpu"


# ---------------------------------------------------------------------------------------------
# Embedded Reber grammar: an independent regex acceptor and an independent automaton

_N3 = "(?:XT*VP)*(?:S|XT*VV)"  # from Reber node 3 to the end
_INNER = f"B(?:TS*X{_N3}|PT*V(?:V|P{_N3}))E"
EMBEDDED = re.compile(f"B(?:T{_INNER}T|P{_INNER}P)E")
REBER_GRAPH = {0: {"T": 1, "P": 2}, 1: {"S": 1, "X": 3}, 2: {"T": 2, "V": 4},
               3: {"X": 2, "S": "end"}, 4: {"P": 3, "V": "end"}}


def options(state):
    """The symbols allowed next from ``state`` and where each leads (continual: after the final
    E the next string starts)."""
    kind = state[0]
    if kind == "start":
        return {"B": ("choose",)}
    if kind == "choose":
        return {c: ("inner_B", c) for c in "TP"}
    if kind == "inner_B":
        return {"B": ("inner", state[1], 0)}
    if kind == "inner":
        if state[2] == "end":
            return {"E": ("close", state[1])}
        return {c: ("inner", state[1], n) for c, n in REBER_GRAPH[state[2]].items()}
    if kind == "close":
        return {state[1]: ("final",)}
    return {"E": ("start",)}


def decode(batch: Batch, b: int) -> str:
    n = int(batch.lengths[b])
    read = batch.inputs[:n, b].argmax(-1).tolist()
    return "".join(SYMBOLS[i] for i in read) + SYMBOLS[int(batch.targets[n - 1, b].argmax())]


def check_possible(batch: Batch, b: int) -> None:
    """The stream of column b follows the grammar and info["possible"] is the allowed set."""
    state = ("start",)
    for t, c in enumerate(decode(batch, b)):
        allowed = options(state)
        assert c in allowed
        state = allowed[c]
        if t < int(batch.lengths[b]):
            got = {SYMBOLS[i] for i in torch.nonzero(batch.info["possible"][t, b]).flatten()}
            assert got == set(options(state))


def test_reber_strings_follow_the_grammar_with_paper_statistics():
    strings = embedded_reber_strings(4000, gen(7))
    assert all(EMBEDDED.fullmatch(s) for s in strings)
    lengths = torch.tensor([len(s) for s in strings], dtype=torch.float64)
    assert min(lengths) == 9  # "as few as 9 steps"
    assert lengths.mean().item() == pytest.approx(12.0, abs=0.3)  # 4 + (2 + 6) closed form
    assert sum(s[1] == "T" for s in strings) / 4000 == pytest.approx(0.5, abs=0.03)
    assert sum(s[3] == "T" for s in strings) / 4000 == pytest.approx(0.5, abs=0.03)


def test_reber_split_is_fixed_disjoint_and_seeded():
    a, b, c = tasks.make("reber", seed=0), tasks.make("reber", seed=0), tasks.make("reber", seed=1)
    assert len(a.train_strings) == 256 and len(a.test_strings) == 256
    assert a.train_strings == b.train_strings and a.test_strings == b.test_strings
    assert a.train_strings != c.train_strings
    assert not set(a.train_strings) & set(a.test_strings)
    assert all(EMBEDDED.fullmatch(s) for s in a.train_strings + a.test_strings)
    test = a.test_batch()
    assert test.batch_size == 256
    test.inputs.zero_()  # a copy: the task's own split is untouched
    test = a.test_batch()
    assert [decode(test, i) for i in range(256)] == list(a.test_strings)
    assert [decode(a.train_batch(), i) for i in range(256)] == list(a.train_strings)
    for i in range(256):
        check_possible(test, i)
    drawn = a.sample(500, gen())
    assert {decode(drawn, i) for i in range(500)} <= set(a.train_strings)
    drawn = a.sample(100, gen(), split="test")
    assert {decode(drawn, i) for i in range(100)} <= set(a.test_strings)


def test_reber_loss_uses_actual_symbol_evaluate_uses_possible_set():
    task = tasks.make("reber")
    b = task.test_batch()
    assert task.loss(b.targets, b).item() == 0.0
    assert task.loss(b.info["possible"].float(), b).item() > 0
    # the one-hot actual next symbol leaves the other possible symbol at 0: never "most active"
    assert not task.evaluate(b.targets, b).any()
    # forgetting the embedded T/P at the symbol before last breaks just that string
    out = b.info["possible"].float()
    n = int(b.lengths[5])
    out[n - 2, 5] = 1.0 - out[n - 2, 5]
    ok = task.evaluate(out, b)
    assert not ok[5] and ok.sum() == 255


def test_continual_reber_stream():
    task = tasks.make("continual_reber", length=3000)
    b = task.sample(8, gen(4))
    assert (b.lengths == 3000).all() and b.mask.all()
    for i in range(8):
        check_possible(b, i)
        stream = decode(b, i)
        starts = torch.nonzero(b.info["string_start"][:, i]).flatten().tolist()
        assert starts[0] == 0
        pieces = [stream[s:e] for s, e in zip(starts, starts[1:], strict=False)]
        assert all(EMBEDDED.fullmatch(p) for p in pieces)
    assert b.info["string_start"].sum().item() == pytest.approx(8 * 3000 / 12, rel=0.07)


def test_continual_reber_criteria_and_error_free_length():
    b = tasks.make("continual_reber", length=300).sample(4, gen())
    possible = b.info["possible"].float()
    threshold = tasks.make("continual_reber", length=300, criterion="threshold")
    assert threshold.evaluate(0.4 * possible, b).all()  # (1 - 0.4)^2 = 0.36 < 0.49
    assert not threshold.evaluate(0.2 * possible, b).any()
    task = tasks.make("continual_reber", length=300)
    out = possible.clone()
    out[37, 0] = 1.0 - out[37, 0]
    assert task.error_free_length(out, b).tolist() == [37, 300, 300, 300]


# ---------------------------------------------------------------------------------------------
# Exp. 2: long time lags


def symbols_of(batch: Batch) -> torch.Tensor:
    """Symbol indices read at each step (-1 on padding)."""
    valid = torch.arange(batch.steps).unsqueeze(1) < batch.lengths
    return torch.where(valid, batch.inputs.argmax(-1), -1)


def test_noiseless_lag_sequences():
    p = 10
    b = tasks.make("noiseless_lag", p=p).sample(4000, gen())
    assert (b.lengths == p).all() and b.mask.all()
    seq = torch.cat([symbols_of(b), b.targets[-1:].argmax(-1)])  # all p + 1 symbols
    assert torch.equal(seq[1:p], torch.arange(p - 1).unsqueeze(1).expand(p - 1, 4000))
    assert torch.equal(seq[0], seq[-1]) and set(seq[0].tolist()) == {p - 1, p}
    assert (seq[0] == p).float().mean().item() == pytest.approx(0.5, abs=0.03)
    assert torch.equal(b.targets.argmax(-1), seq[1:])


def test_noiseless_lag_random_middle_and_end_criterion():
    p = 10
    task = tasks.make("noiseless_lag_random", p=p)
    b = task.sample(4000, gen())
    seq = torch.cat([symbols_of(b), b.targets[-1:].argmax(-1)])
    assert torch.equal(seq[0], seq[-1]) and set(seq[0].tolist()) == {p - 1, p}
    counts = torch.bincount(seq[1:p].flatten(), minlength=p + 1).float()
    assert counts[p - 1:].sum() == 0
    assert (counts[: p - 1] / counts.sum() - 1 / (p - 1)).abs().max() < 0.01
    out = b.targets.clone()
    out[3] = 1.0 - out[3]  # a wrong middle prediction does not count...
    assert task.evaluate(out, b).all()
    out[-1] = 1.0 - out[-1]  # ...the final one does
    assert not task.evaluate(out, b).any()


def test_very_long_lag_sequences():
    p, q, n = 8, 20, 4000
    b = tasks.make("very_long_lag", p=p, q=q).sample(n, gen())
    e, bb, x = p, p + 1, p + 2
    sym = b.info["symbols"]
    assert torch.equal(sym, symbols_of(b))
    suffix = b.lengths - (q + 3)
    assert (suffix >= 0).all() and torch.equal(suffix, b.info["suffix"])
    assert suffix.double().mean().item() == pytest.approx(9.0, abs=0.5)  # E[k] = 9
    assert (suffix == 0).double().mean().item() == pytest.approx(0.1, abs=0.015)
    assert (sym[0] == bb).all()
    assert ((sym[1] == x) | (sym[1] == x + 1)).all()
    last = b.lengths - 1
    assert (sym[last, torch.arange(n)] == e).all()
    middle = (torch.arange(b.steps).unsqueeze(1) >= 2) & (torch.arange(b.steps).unsqueeze(1)
                                                           < last)
    assert ((sym[middle] >= 0) & (sym[middle] < p)).all()
    counts = torch.bincount(sym[middle], minlength=p).double()
    assert (counts / counts.sum() - 1 / p).abs().max() < 0.01
    assert (counts.sum() / n / p).item() == pytest.approx((q + 9) / p, rel=0.03)
    label = sym[1] - x
    assert torch.equal(b.targets[last, torch.arange(n)].argmax(-1), label)
    assert label.double().mean().item() == pytest.approx(0.5, abs=0.03)
    assert torch.equal(b.mask, torch.arange(b.steps).unsqueeze(1) == last)


# ---------------------------------------------------------------------------------------------
# Exp. 3-6: end-of-sequence targets


def end_values(b: Batch) -> torch.Tensor:
    return b.targets[b.lengths - 1, torch.arange(b.batch_size)]


@pytest.mark.parametrize("variant", ["a", "b", "c"])
def test_two_sequence_statistics(variant):
    T, N, n = 50, 3, 4000
    task = tasks.make("two_sequence", variant=variant, T=T, N=N)
    b = task.sample(n, gen())
    assert b.lengths.min() == T and b.lengths.max() == T + T // 10
    x = b.inputs[..., 0]
    label = b.info["label"]
    sign = 1.0 - 2.0 * label
    first = x[:N] - sign
    if variant == "b":
        assert first.var().item() == pytest.approx(0.2, rel=0.05)
    else:
        assert (first == 0).all()
    valid = (torch.arange(b.steps).unsqueeze(1) < b.lengths) & (torch.arange(b.steps)
                                                                 .unsqueeze(1) >= N)
    assert x[valid].mean().item() == pytest.approx(0.0, abs=0.01)
    assert x[valid].var().item() == pytest.approx(0.2, rel=0.03)
    assert label.double().mean().item() == pytest.approx(0.5, abs=0.03)
    y = end_values(b)[:, 0]
    if variant == "c":
        clean = torch.where(label == 0, 0.2, 0.8)
        assert torch.allclose(b.info["clean_target"], clean)
        assert (y - clean).var().item() == pytest.approx(0.1, rel=0.06)
        assert (y - clean).mean().item() == pytest.approx(0.0, abs=0.02)
        # correctness is against the noise-free target, not the noisy one trained on
        assert task.evaluate(b.targets, b).float().mean().item() == pytest.approx(
            math.erf(0.1 / math.sqrt(0.2)), abs=0.03)
    else:
        assert torch.equal(y, 1.0 - label.float())
        if variant == "a":
            assert torch.equal(y, (x[0] > 0).float())


def test_exp3c_errors_are_measured_against_the_noise_free_target():
    task = tasks.make("two_sequence", variant="c", T=20, N=3)
    b = task.sample(64, gen())
    clean = b.info["clean_target"]
    outputs = torch.zeros(b.steps, b.batch_size, 1)
    outputs[b.lengths - 1, torch.arange(b.batch_size), 0] = clean  # exactly the clean target
    squared, absolute = task.sequence_errors(outputs, b)
    noise = end_values(b)[:, 0] - clean
    assert torch.equal(absolute, torch.zeros(64))  # ST3c's measure, from the task
    torch.testing.assert_close(squared, noise.pow(2))  # the squared error trained on
    # The default measure knows nothing of Exp. 3c's info: it measures against the targets.
    _, default = tasks.TrainingTask.sequence_errors(task, outputs, b)
    torch.testing.assert_close(default, noise.abs())


@pytest.mark.parametrize("variant", ["a", "b"])
def test_exp3ab_errors_are_the_default_measure(variant):
    task = tasks.make("two_sequence", variant=variant, T=20, N=3)
    b = task.sample(16, gen())
    outputs = torch.rand(b.steps, b.batch_size, 1, generator=gen(1))
    ours = task.sequence_errors(outputs, b)
    default = tasks.TrainingTask.sequence_errors(task, outputs, b)
    assert all(torch.equal(x, y) for x, y in zip(ours, default))
    torch.testing.assert_close(ours[1], (end_values(b) - last_step(outputs, b.lengths))[:, 0]
                               .abs())


@pytest.mark.parametrize("name", ["adding1997", "multiplication1997"])
def test_marker_tasks(name):
    T, n = 100, 4000
    b = tasks.make(name, T=T).sample(n, gen())
    assert b.lengths.min() == T and b.lengths.max() == T + T // 10
    values, markers = b.inputs[..., 0], b.inputs[..., 1]
    valid = torch.arange(b.steps).unsqueeze(1) < b.lengths
    marked = markers == 1.0
    assert (marked.sum(0) == 2).all()
    pos = torch.stack([torch.nonzero(marked[:, i]).flatten() for i in range(n)], 1)
    assert (pos < T // 2).all() and (pos[0] < 10).all()
    cols = torch.arange(n)
    assert (markers[b.lengths - 1, cols] == -1).all()
    assert (markers[0][~marked[0]] == -1).all()
    others = valid & ~marked
    others[0] = False
    others[b.lengths - 1, cols] = False
    assert (markers[others] == 0).all()
    # X1 is uniform over the first ten pairs
    x1 = b.info["positions"][0]
    assert (torch.bincount(x1, minlength=10).double() / n - 0.1).abs().max() < 0.02
    first_marked = marked[0].double().mean().item()
    assert first_marked == pytest.approx(0.1 + 0.9 / (T // 2 - 1), abs=0.015)
    x = values[valid & ~(torch.arange(b.steps).unsqueeze(1) == 0)]
    if name == "adding1997":
        assert x.min() >= -1 and x.max() <= 1
        assert x.mean().item() == pytest.approx(0.0, abs=0.01)
        assert x.var().item() == pytest.approx(1 / 3, rel=0.02)
        assert (values[0][marked[0]] == 0).all()
        expected = 0.5 + (values * marked).sum(0) / 4
    else:
        assert x.min() >= 0 and x.max() <= 1
        assert x.mean().item() == pytest.approx(0.5, abs=0.01)
        assert (values[0][marked[0]] == 1).all()
        expected = torch.where(marked, values, torch.ones(())).prod(0)
    assert torch.allclose(end_values(b)[:, 0], expected, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(["adding1997", "multiplication1997"]), T=st.integers(20, 400),
       seed=st.integers(0, 2**31))
def test_marker_invariants_hold_for_any_T(name, T, seed):
    b = tasks.make(name, T=T).sample(16, gen(seed))
    assert (b.lengths >= T).all() and (b.lengths <= T + T // 10).all()
    values, markers = b.inputs[..., 0], b.inputs[..., 1]
    marked = markers == 1.0
    assert (marked.sum(0) == 2).all() and not marked[T // 2 :].any()
    assert (marked[:10].sum(0) >= 1).all()  # X1 is among the first ten pairs
    if name == "adding1997":
        expected = 0.5 + (values * marked).sum(0) / 4
    else:
        expected = torch.where(marked, values, torch.ones(())).prod(0)
    assert torch.allclose(end_values(b)[:, 0], expected, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(variant=st.sampled_from("abc"), T=st.integers(2, 300), seed=st.integers(0, 2**31),
       data=st.data())
def test_two_sequence_lengths_for_any_T(variant, T, seed, data):
    N = data.draw(st.integers(1, T - 1))
    b = tasks.make("two_sequence", variant=variant, T=T, N=N).sample(16, gen(seed))
    assert (b.lengths >= T).all() and (b.lengths <= T + T // 10).all()
    assert torch.equal(b.mask.sum(0), torch.ones(16, dtype=torch.long))


@pytest.mark.parametrize("positions", [2, 3])
def test_temporal_order(positions):
    n = 4000
    task = tasks.make("temporal_order", positions=positions)
    b = task.sample(n, gen())
    names = "EBXYabcd"
    sym = symbols_of(b)
    assert b.lengths.min() == 100 and b.lengths.max() == 110
    cols = torch.arange(n)
    assert (sym[0] == names.index("E")).all()
    assert (sym[b.lengths - 1, cols] == names.index("B")).all()
    windows = [(10, 20), (50, 60)] if positions == 2 else [(10, 20), (33, 43), (66, 76)]
    label = torch.zeros(n, dtype=torch.long)
    for i in range(n):
        seq = "".join(names[s] for s in sym[: int(b.lengths[i]), i])
        assert seq.count("E") == 1 and seq.count("B") == 1
        where = [t + 1 for t, c in enumerate(seq) if c in "XY"]  # 1-based times
        assert len(where) == positions
        assert all(lo <= t <= hi for t, (lo, hi) in zip(where, windows, strict=True))
        for t in where:
            label[i] = 2 * label[i] + (seq[t - 1] == "Y")
    assert torch.equal(end_values(b).argmax(-1), label)
    assert (end_values(b).sum(-1) == 1).all()
    freq = torch.bincount(label, minlength=2**positions).double() / n
    assert (freq - 1 / 2**positions).abs().max() < 0.025


# ---------------------------------------------------------------------------------------------
# Spike timing


@pytest.mark.parametrize("delays", [(0, 1), (0, 1, 2)])
def test_spike_timing(delays):
    F, spikes, n = 10, 20, 2000
    task = tasks.make("spike_timing", F=F, delays=delays, spikes=spikes)
    assert task.output_activation == ("sigmoid" if max(delays) <= 1 else "identity")
    b = task.sample(n, gen())
    x = b.inputs[..., 0]
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(b.mask, x == 1.0)
    assert (b.mask.sum(0) == spikes).all()
    all_delays = []
    for i in range(n):
        times = torch.nonzero(x[:, i]).flatten()
        assert int(times[-1]) + 1 == int(b.lengths[i])
        gaps = torch.diff(times, prepend=torch.tensor([-1])) - F  # virtual spike at time 0
        assert set(gaps.tolist()) <= set(delays)
        assert torch.equal(b.targets[times, i, 0], gaps.float())
        all_delays.append(gaps)
    freq = torch.bincount(torch.cat(all_delays)).double() / (n * spikes)
    assert (freq[list(delays)] - 1 / len(delays)).abs().max() < 0.01


# ---------------------------------------------------------------------------------------------
# Modern benchmarks


def test_adding_statistics_and_baseline():
    T, n = 100, 20000
    task = tasks.make("adding", T=T)
    b = task.sample(n, gen())
    values, markers = b.inputs[..., 0], b.inputs[..., 1]
    assert (b.lengths == T).all()
    assert values.min() >= 0 and values.max() <= 1
    assert (markers[: T // 2].sum(0) == 1).all() and (markers[T // 2 :].sum(0) == 1).all()
    assert torch.allclose(end_values(b)[:, 0], (values * markers).sum(0), atol=1e-6)
    assert task.baseline == pytest.approx(1 / 6)
    ones = torch.ones(T, n, 1)
    assert task.loss(ones, b).item() == pytest.approx(1 / 6, abs=0.005)


def test_copy_structure_and_memoryless_baseline():
    T, n = 50, 1000
    task = tasks.make("copy", T=T)
    b = task.sample(n, gen())
    sym = b.inputs.argmax(-1)
    assert b.steps == T + 20 and (b.inputs.sum(-1) == 1).all()
    data = sym[:10]
    assert (data < 8).all()
    assert (sym[10 : T + 9] == 8).all() and (sym[T + 9] == 9).all() and (sym[T + 10 :] == 8).all()
    assert (b.targets[: T + 10] == 8).all() and torch.equal(b.targets[T + 10 :], data)
    freq = torch.bincount(data.flatten(), minlength=8).double() / data.numel()
    assert (freq - 1 / 8).abs().max() < 0.01
    # blank with certainty, then a uniform guess over a_0..a_7
    memoryless = torch.full((T + 20, n, 9), -1e9)
    memoryless[: T + 10, :, 8] = 0.0
    memoryless[T + 10 :, :, :8] = 0.0
    assert task.baseline == pytest.approx(10 * math.log(8) / (T + 20))
    assert task.loss(memoryless, b).item() == pytest.approx(task.baseline, rel=1e-5)
    assert not task.evaluate(memoryless, b).any()


# ---------------------------------------------------------------------------------------------
# The paper as data


def count_weights(s: PaperSetting) -> int:
    """Weights of the setting's net, counted independently from Table 10's definitions."""
    cells = s.blocks * s.cells_per_block
    gates = s.blocks * (1 + s.output_gate + s.forget_gate)
    if s.connectivity == "B":  # outputs from inputs and cells; cells and gates from inputs
        return s.output_size * (s.input_size + cells) + (cells + gates) * s.input_size
    sources = s.input_size + cells + (gates if s.connectivity == "F" else 0)
    cell_w = cells * (sources + (s.biased in ("all", "hidden")))
    gate_w = gates * (sources + (s.biased != "none") + s.peephole * s.cells_per_block)
    out_in = (cells if s.output_from_cells_only or s.input_shortcut else 0)
    out_w = s.output_size * (out_in + s.input_shortcut * s.input_size
                             + (s.biased in ("all", "gates+output")))
    return cell_w + gate_w + out_w


def all_settings():
    for name in tasks.names():
        cls = tasks.TASKS[name]
        for ref in cls.REFERENCES:
            assert isinstance(ref, PaperReference)
            if ref.setting is not None:
                yield name, ref.setting


def test_settings_reproduce_the_papers_weight_counts():
    seen = 0
    for name, s in all_settings():
        assert isinstance(s, PaperSetting)
        if s.weights is not None:
            assert count_weights(s) == s.weights, (name, s.row)
            seen += 1
    assert seen >= 30
    for p in (50, 1000):
        assert tasks.make("very_long_lag", p=p, q=10).setting.weights == 6 * p + 64


@pytest.mark.parametrize("name", list(SMALL))
def test_default_task_matches_its_setting(name):
    task = tasks.make(name)
    if task.name in ("adding", "copy"):
        assert task.setting is None and task.references
        return
    s = task.setting
    assert isinstance(s, PaperSetting)
    assert (s.input_size, s.output_size) == (task.input_size, task.output_size)
    assert s.output_activation == task.output_activation
    assert task.references and all(r.matches(task.params) for r in task.references)
    assert task.__doc__ and ("1997" in task.__doc__ or "Gers" in task.__doc__)


def test_published_rows():
    (row,) = tasks.make("adding1997", T=100).references
    assert (row.sequences, row.wrong, row.test_size, row.trials) == (74_000, 1, 2560, 10)
    s = row.setting
    assert s.input_gate_bias == (-3.0, -6.0) and s.learning_rate == 0.5 and s.init_range == 0.1
    assert s.stopping[0].name == "ST3" and s.stopping[0].params["beta"] == 0.01
    assert s.success.name == "ABS" and s.success.params["beta"] == 0.04
    reber = tasks.make("reber")
    assert reber.setting.row == "1-5" and reber.setting.weights == 276
    lstm = [r for r in reber.references if r.method == "LSTM"]
    assert [r.sequences for r in lstm] == [39_740, 21_730, 14_060, 9_500, 8_440]
    st = tasks.make("two_sequence", T=100, N=3).references
    assert [(r.criterion, r.sequences) for r in st] == [("ST1", 27_380), ("ST2", 39_850)]
    mult = tasks.make("multiplication1997").references
    assert [(r.metrics["n_seq"], r.mse) for r in mult] == [(140, 0.0223), (13, 0.0139)]
    assert [r.sequences for r in tasks.make("very_long_lag", p=1000, q=1000).references] == [
        49_000]
    assert tasks.make("noiseless_lag").setting.output_gate is False
    assert tasks.make("temporal_order", positions=3).references[0].sequences == 571_100
    cerg = tasks.make("continual_reber").references
    assert [r.success_rate for r in cerg] == [0.74, 0.0, 0.0, 0.18, 0.62]
    assert tasks.make("adding").baseline == pytest.approx(1 / 6)
    assert tasks.make("adding1997").baseline is None


# ---------------------------------------------------------------------------------------------
# Errors


def test_make_rejects_unknown_names_and_parameters():
    with pytest.raises(ValueError, match=r"name: expected one of \[.*'adding1997'.*got 'nope'"):
        tasks.make("nope")
    with pytest.raises(TypeError, match="name"):
        tasks.make(3)
    with pytest.raises(TypeError, match=r"unknown parameter\(s\) \['X'\]; expected some of "
                                        r"\['T', 'tolerance'\]"):
        tasks.make("adding", X=1)


@pytest.mark.parametrize("name,params,exc,pattern", [
    ("adding1997", {"T": 10}, ValueError, r"T: expected an int >= 20, got 10"),
    ("adding1997", {"T": 100.0}, TypeError, r"T: expected an int, got float"),
    ("multiplication1997", {"T": True}, TypeError, r"T: expected an int, got bool"),
    ("two_sequence", {"variant": "d"}, ValueError, r"variant: expected one of \['a', 'b', 'c'\]"),
    ("two_sequence", {"T": 10, "N": 10}, ValueError, r"N: expected an int in \[1, 9\], got 10"),
    ("temporal_order", {"positions": 4}, ValueError, r"positions: expected one of \[2, 3\]"),
    ("temporal_order", {"positions": 2.0}, ValueError, r"positions: expected one of .*got 2.0"),
    ("very_long_lag", {"p": 0}, ValueError, r"p: expected an int >= 1, got 0"),
    ("noiseless_lag", {"p": 1}, ValueError, r"p: expected an int >= 2, got 1"),
    ("spike_timing", {"delays": (1, 1)}, ValueError, r"delays: expected a tuple of at least"),
    ("spike_timing", {"F": 0}, ValueError, r"F: expected an int >= 1, got 0"),
    ("continual_reber", {"criterion": "mse"}, ValueError, r"criterion: expected one of"),
    ("reber", {"seed": -1}, ValueError, r"seed: expected an int >= 0, got -1"),
    ("adding", {"tolerance": 0}, ValueError, r"tolerance: expected a float in \(0.0, 2.0\]"),
    ("copy", {"T": "100"}, TypeError, r"T: expected an int, got str"),
])
def test_bad_parameters_raise_clear_errors(name, params, exc, pattern):
    with pytest.raises(exc, match=f"{name}: {pattern}"):
        tasks.make(name, **params)


def test_bad_calls_raise_clear_errors():
    task = tasks.make("adding1997", T=40)
    with pytest.raises(ValueError, match=r"batch_size: expected an int >= 1, got 0"):
        task.sample(0)
    with pytest.raises(TypeError, match=r"generator: expected a torch.Generator or None, got int"):
        task.sample(2, generator=5)
    with pytest.raises(ValueError, match=r"split: expected one of \['train', 'test'\]"):
        tasks.make("reber").sample(2, split="valid")
    b = task.sample(3, gen())
    with pytest.raises(ValueError, match=rf"outputs: expected shape \({b.steps}, 3, 1\).*got"):
        task.loss(torch.zeros(b.steps, 3, 2), b)
    with pytest.raises(TypeError, match="outputs: expected a torch.Tensor, got list"):
        task.evaluate([0.0], b)
    with pytest.raises(TypeError, match="outputs: expected a floating-point tensor"):
        task.evaluate(torch.zeros(b.steps, 3, 1, dtype=torch.long), b)


def test_one_hot_matches_torch_and_leaves_padding_empty():
    index = torch.tensor([[0, 3, -1], [2, -1, 1]])
    got = one_hot(index, 4)
    assert got.dtype == torch.float32 and got.shape == (2, 3, 4)
    want = torch.nn.functional.one_hot(index.clamp(min=0), 4).float() * (index >= 0).unsqueeze(-1)
    assert torch.equal(got, want)
    assert got[0, 2].sum() == 0 and got[1, 1].sum() == 0
    with pytest.raises(ValueError, match="index: expected entries below 4, got 4"):
        one_hot(torch.tensor([4]), 4)
