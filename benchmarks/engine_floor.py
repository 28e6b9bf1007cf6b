"""The engine benchmark's floor: the GEMMs the fused engine issues, run alone, and peak memory.

:func:`gemm_plan` lists the GEMMs of one layer-direction for a variant and shape (the input
projection, the per-step recurrent GEMMs, in training the per-step state-gradient GEMMs and the
weight gradients over all steps); :func:`floor` runs them on preallocated operands the way the
engine does: the per-step ones through the engine's own GEMM path (its packed kernel or the
BLAS) with the batch rows split across threads as the engine splits them, each step's output in
its own slice of a ``[T, B, rows]`` buffer. :func:`peak_memory` is the peak allocated through
torch's CPU allocator while a function runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from lstmkit.cells.spec import CellSpec
from lstmkit.engine import _build

Plan = list[tuple[str, int, int, int, int]]
Shape = tuple[int, int, int, int]


def gemm_plan(spec: CellSpec, shape: Shape, train: bool) -> Plan:
    """The engine's GEMMs for one layer-direction: ``(kind, M, N, K, count)``.

    ``kind`` is ``"proj"`` (``[M,K] x [N,K]^T`` once), ``"step_t"`` (``[M,K] x [N,K]^T`` per
    step, as the forward recurrence), ``"step_n"`` (``[M,K] x [K,N]`` per step, as the state
    gradient) or ``"wgrad"`` (``[K,M]^T x [K,N]``, a weight gradient over all steps). The input
    gradient is not in the plan: the benchmark's input does not require a gradient.
    """
    steps, batch, n_in, hidden = shape
    tb = steps * batch
    plan: Plan = []
    if spec.family == "lstm":
        lay = spec.layout(hidden)
        rows, k_rec = lay.rows, lay.recurrent_input
        plan.append(("proj", tb, rows, n_in, 1))
        if k_rec:
            plan.append(("step_t", batch, rows, k_rec, steps))
        if train:
            if k_rec and not spec.truncated_gradient:
                plan.append(("step_n", batch, k_rec, rows, steps))
            plan.append(("wgrad", rows, n_in, tb, 1))
            if k_rec:
                plan.append(("wgrad", rows, k_rec, tb, 1))
        return plan
    rows = 3 * hidden if spec.family == "gru" else hidden
    plan.append(("proj", tb, rows, n_in, 1))
    if spec.family == "gru" and not spec.reset_after:
        plan += [("step_t", batch, 2 * hidden, hidden, steps), ("step_t", batch, hidden, hidden,
                                                                steps)]
        if train:
            plan += [("step_n", batch, hidden, hidden, steps),
                     ("step_n", batch, hidden, 2 * hidden, steps),
                     ("wgrad", rows, n_in, tb, 1), ("wgrad", 2 * hidden, hidden, tb, 1),
                     ("wgrad", hidden, hidden, tb, 1)]
        return plan
    plan.append(("step_t", batch, rows, hidden, steps))
    if train:
        plan += [("step_n", batch, hidden, rows, steps), ("wgrad", rows, n_in, tb, 1),
                 ("wgrad", rows, hidden, tb, 1)]
    return plan


def plan_flops(plan: Sequence[tuple[str, int, int, int, int]]) -> float:
    """The plan's floating-point operations (a multiply-add counts two)."""
    return float(sum(2 * m * n * k * count for _, m, n, k, count in plan))


def floor(plan: Sequence[tuple[str, int, int, int, int]]) -> Callable[[], None]:
    """Run the plan's GEMMs on preallocated operands (the per-step ones in C++, one call)."""
    ext = _build.load()
    calls: list[Callable[[], Any]] = []
    for kind, m, n, k, count in plan:
        if kind == "proj":
            a, w, bias = torch.randn(m, k), torch.randn(n, k), torch.randn(n)
            calls.append(lambda a=a, w=w, bias=bias: torch.addmm(bias, a, w.t()))
        elif kind == "wgrad":
            a, b = torch.randn(k, m), torch.randn(k, n)
            calls.append(lambda a=a, b=b: torch.mm(a.t(), b))
        else:
            # As in the engine: the forward step writes into its own step's slice of the input
            # projection, the backward step reads its own step's slice of dz.
            trans = kind == "step_t"
            a = torch.randn(m, k) if trans else torch.randn(count, m, k)
            w = torch.randn(n, k) if trans else torch.randn(k, n)
            c = torch.randn(count, m, n) if trans else torch.zeros(m, n)
            if ext is not None:
                calls.append(lambda a=a, w=w, c=c, count=count, trans=trans:
                             ext.gemm_loop(a, w, c, count, True, trans))
            else:  # no engine: the floor is only informative, torch's GEMM loop stands in
                wt = w.t() if trans else w
                calls.append(lambda a=a, wt=wt, c=c, count=count:
                             [(c[i] if c.dim() == 3 else c).addmm_(a[i] if a.dim() == 3 else a, wt)
                              for i in range(count)])

    def run() -> None:
        for call in calls:
            call()

    return run


def peak_memory(fn: Callable[[], None]) -> int:
    """Peak bytes allocated through torch's CPU allocator while ``fn`` runs (profiler events)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events: list[tuple[int, int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            extra = node.extra_fields
            events.append((node.start_time_ns, extra.total_allocated, extra.alloc_size))
        stack.extend(node.children)
    if not events:
        return 0
    events.sort()
    base = events[0][1] - events[0][2]
    return max(total for _, total, _ in events) - base
