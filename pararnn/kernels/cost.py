"""The fused kernels' own accounting: bytes moved, FLOPs and dependent-step depth.

XLA's ``cost_analysis`` cannot see inside a Pallas kernel (nor through a loop's trip count),
so the cost model (benchmarks/roofline.py) counts the fused paths from their structure: which
sweeps run, what each reads and writes, and how many elementwise operations the traced step
and its linearisation contain. These are counts of the algorithm, not measurements.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from ..structure import BLOCK
from .layout import StepPlan
from .tiles import Geometry, choose_geometry

__all__ = ["KernelCost", "newton_cost", "adjoint_cost", "linear_cost", "geometry_for"]


class KernelCost(NamedTuple):
    """Totals for one kernel launch over the whole batch.

    Attributes:
      bytes: bytes read from and written to device memory.
      flops: arithmetic operations (one per elementwise op per element; transcendental
        functions count as one).
      depth: dependent steps inside a program (the critical path, in loop iterations).
      sweeps: passes over the time axis.
    """

    bytes: float
    flops: float
    depth: int
    sweeps: int


def geometry_for(plan: StepPlan, length_t: int) -> Geometry:
    n_state = plan.block_size if plan.structure is BLOCK else math.prod(plan.state_lead)
    return choose_geometry(length_t, plan.channels, n_state)


def _recurrence_ops(plan: StepPlan, quasi: bool) -> int:
    """Ops per channel per position of one linear-recurrence update with its summary
    (s ← a·s + r, P ← a·P, residual and statistics)."""
    n = math.prod(plan.state_lead)
    if plan.structure is BLOCK and not quasi:
        k = plan.block_size
        return 2 * k * k + 2 * k ** 3 + 8 * k
    return 12 * n


def _x_bytes_per_position(plan: StepPlan, batch: int, programs: int) -> float:
    total = 0.0
    for op in plan.x_operands:
        per = math.prod(op.lead) * op.dtype.itemsize
        total += per * plan.channels * batch if op.channel else per * programs * batch
    return total


def newton_cost(plan: StepPlan, length_t: int, batch: int, iterations: int, rejected: int = 0,
                quasi: bool = False, with_init: bool = False) -> KernelCost:
    """The fused Newton kernel: one initial sweep (writes the first iterate and linearises
    it), one fused sweep per accepted step, two per rejected step, and a final copy when the
    answer sits in the second buffer (an odd number of accepted steps)."""
    g = geometry_for(plan, length_t)
    item = plan.state_dtype.itemsize
    h_bytes = length_t * math.prod(plan.state_shape) * item * batch
    x_bytes = length_t * _x_bytes_per_position(plan, batch, g.programs)
    ops = plan.op_counts()
    rec = _recurrence_ops(plan, quasi)
    per_pos = length_t * plan.channels * batch  # (position, channel) pairs
    accepted = iterations - rejected
    copy = accepted % 2
    read = x_bytes + (h_bytes if with_init else 0)  # initial sweep
    write = h_bytes
    flops = per_pos * (ops["step"] + ops["linearize"] + rec)
    read += iterations * (x_bytes + h_bytes)  # fused sweeps
    write += iterations * h_bytes
    flops += iterations * per_pos * (2 * ops["linearize"] + 2 * rec)
    read += rejected * (x_bytes + h_bytes)  # re-summaries of a kept iterate
    flops += rejected * per_pos * (ops["linearize"] + rec)
    read += copy * h_bytes
    write += copy * h_bytes
    link = 2 * g.chunks  # link of chunk summaries + the shifted chunk-end states
    depth = g.chunk_len + iterations * (g.chunk_len + link) + rejected * (g.chunk_len + g.chunks) \
        + copy * g.chunk_len
    return KernelCost(read + write, flops, depth, 1 + iterations + rejected + copy)


def adjoint_cost(plan: StepPlan, length_t: int, batch: int) -> KernelCost:
    """The fused adjoint: two sweeps reading the solution, ``xs`` and the cotangent (the
    Jacobians are recomputed in the second rather than stored), one write of λ (float32)."""
    g = geometry_for(plan, length_t)
    item = plan.state_dtype.itemsize
    elems = length_t * math.prod(plan.state_shape) * batch
    x_bytes = length_t * _x_bytes_per_position(plan, batch, g.programs)
    read = 2 * (x_bytes + 2 * elems * item)
    write = elems * max(4, item)
    per_pos = length_t * plan.channels * batch
    flops = 2 * per_pos * (plan.op_counts()["linearize"] + _recurrence_ops(plan, False))
    return KernelCost(read + write, flops, 2 * g.chunk_len + g.chunks, 2)


def linear_cost(length_t: int, state_shape: tuple[int, ...], batch: int, block: bool,
                itemsize: int = 4) -> KernelCost:
    """The fused linear recurrence: ``a`` and ``b`` read twice, ``h`` written once."""
    k = state_shape[0] if block else 1
    n_state = k if block else math.prod(state_shape[:-1])
    g = choose_geometry(length_t, state_shape[-1], n_state)
    elems = length_t * math.prod(state_shape) * batch
    a_elems = elems * k  # (N, K, K) per step for blocks
    read = 2 * (a_elems + elems) * itemsize
    flops = 2 * elems * (2 * k + (2 * k * k if block else 1))
    return KernelCost(read + elems * itemsize, flops, 2 * g.chunk_len + g.chunks, 2)

