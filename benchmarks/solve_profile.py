"""Where the time of one Newton solve goes: step evaluation, Jacobian build, linear scan,
residual, and the rest. Used by ``python benchmarks/solver.py --profile``.

Each piece is the same computation the solver runs, jitted and vmapped over the batch, timed
on its own (interleaved with the whole solve, so load affects all alike). A solve of k Newton
iterations runs: one step evaluation (the first iterate ``step(0, x_t)``), k + 1
linearisations (step outputs and Jacobians at each iterate), k linear scans (the Newton
updates) and k + 1 residual checks. The shares below are those counts times the per-piece
times, as percentages of their sum; "pieces / solve" compares that sum with the measured
solve (above 1: XLA fuses pieces inside the solve, e.g. the residual into the
linearisation; below 1: loop control, damping bookkeeping and copies cost the rest). The
Jacobian build is counted beyond the step evaluation it includes.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp

import pararnn
from pararnn.jacobians import JacobianSpec, linearize
from pararnn.newton_loop import residual_stats
from pararnn.scan import default_algorithm, linear_recurrence
from pararnn.structure import DIAGONAL, get_structure
from common import make_cell_problem

PROFILE_GRID = [("diagonal", 256, 8, 2048, "newton"), ("block", 256, 8, 2048, "newton"),
                ("dense", 64, 8, 1024, "newton"), ("dense", 64, 8, 1024, "quasi")]
COLUMNS = [("structure", "structure"), ("D", "D"), ("batch", "batch"), ("T", "T"),
           ("method", "method"), ("iterations", "iters"), ("solve_ms", "solve (ms)"),
           ("step_pct", "step eval %"), ("jacobian_pct", "Jacobian build %"),
           ("scan_pct", "linear scan %"), ("residual_pct", "residual %"),
           ("pieces_vs_solve", "pieces / solve")]


def _interleaved(fns: dict, repeats: int) -> dict:
    for f in fns.values():
        jax.block_until_ready(f())
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(f())
            times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def profile(structure: str, hidden: int, batch: int, length: int, method: str,
            repeats: int = 5) -> dict:
    st = get_structure(structure)
    step, u, p, h0 = make_cell_problem(structure, length, hidden, batch, jnp.float32)
    quasi = method == "quasi"
    spec = JacobianSpec(st)
    iter_st = DIAGONAL if quasi else st
    algorithm = default_algorithm(iter_st)

    def shift(hs):
        return jnp.concatenate([h0[None], hs[:-1]], 0)

    solve_one = lambda ub: pararnn.solve(step, h0, ub, p, jacobian=structure, method=method,
                                         fallback="none", return_info=True)
    hs, info = jax.jit(jax.vmap(solve_one))(u)
    k = int(jnp.max(info.iterations))
    step_all = jax.vmap(jax.vmap(step, in_axes=(0, 0, None)), in_axes=(0, 0, None))
    lin = jax.vmap(lambda h, x: linearize(step, spec, shift(h), x, p, diagonal_only=quasi))
    fh, jac = jax.jit(lin)(hs, u)
    scan = jax.vmap(lambda a, b: linear_recurrence(a, b, jnp.zeros_like(h0), structure=iter_st,
                                                   algorithm=algorithm))
    resid = jax.vmap(residual_stats)
    jitted = {
        "solve": (jax.jit(lambda u: jax.vmap(solve_one)(u)[0]), (u,)),
        "step": (jax.jit(lambda h, u: step_all(h, u, p)), (hs, u)),
        "jacobian": (jax.jit(lin), (hs, u)),
        "scan": (jax.jit(scan), (jac, fh - hs)),
        "residual": (jax.jit(resid), (fh, hs)),
    }
    t = _interleaved({name: (lambda f=f, a=a: f(*a)) for name, (f, a) in jitted.items()}, repeats)
    pieces = {"step": t["step"], "jacobian": (k + 1) * max(t["jacobian"] - t["step"], 0.0),
              "scan": k * t["scan"], "residual": (k + 1) * t["residual"]}
    # the k + 1 linearisations also evaluate the step: count that as step evaluation
    pieces["step"] += (k + 1) * min(t["step"], t["jacobian"])
    row = {"structure": structure, "D": hidden, "batch": batch, "T": length, "method": method,
           "iterations": k, "solve_ms": t["solve"] * 1e3,
           **{f"{name}_ms": v * 1e3 for name, v in t.items()}}
    total = sum(pieces.values())
    for name, v in pieces.items():
        row[f"{name}_pct"] = 100 * v / total
    row["pieces_vs_solve"] = total / t["solve"]
    return row
