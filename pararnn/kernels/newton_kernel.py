"""The fused Newton solve: every Newton iteration of ``solve`` inside one Pallas kernel.

Per program (one sequence × ``BD`` channels, see :mod:`pararnn.kernels.tiles`) the kernel runs
the iteration of :mod:`pararnn.newton_loop` — same first iterate ``step(0, x_t)`` (or
``init``), same undamped convergence test, same adaptive damping with step rejection, same
iteration budget and stall rule — with the linear solve of every iteration done in registers:

1. *link*: from each chunk's summary of the linearised recurrence (the product of its
   damped Jacobians and its local correction), the C-step recurrence of chunk boundaries
   gives the correction entering and leaving every chunk;
2. *fused sweep* over the positions of a chunk (all chunks in lock-step): re-linearise the
   current iterate on the fly, apply the correction (``h ← h + Δ``), write the candidate, and
   linearise the candidate — its residual and the next chunk summaries — in the same pass.

So an iteration reads ``xs`` once, reads the iterate once and writes the candidate once, and
never stores a Jacobian; its depth is ``L + C`` dependent steps (``L = ceil(T/C)``), not T.
A rejected step (adaptive damping) costs one more read-only sweep to re-summarise the kept
iterate with the stronger damping; candidates go to a second buffer, so rejecting one is free.

Per-program granularity: the convergence test, damping, rejection and stall rules run per
program, i.e. per sequence and tile of BD channels. For a diagonal (or 2×2-block) Jacobian the
channels are independent systems, so this is the same test applied to smaller systems: a
program stops when *its* residual is within ``tol · max(1, max|h|)`` over its own channels —
which implies the global test. :class:`pararnn.newton_loop.Progress` then reports the most
iterations, the largest residual and damping, and the most rejections of any program.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np
import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from ..newton_loop import (Progress, _DAMP_FACTOR, _MIN_ATTENUATION, _REJECT_GROWTH,
                           _STALL_FACTOR, _UNDAMP_FACTOR)
from ..structure import BLOCK, Structure
from .dispatch import KernelOptions, pallas_on_every_platform
from .lanes import LaneValue, concrete, is_concrete
from .layout import StepPlan
from .tiles import (Algebra, Geometry, Loader, Stats, channel_spec, choose_geometry, link_chunks,
                    operand_specs, shift_rows)

__all__ = ["fused_newton", "NewtonSettings", "INFO_FIELDS"]

#: The per-program info vector the kernel writes.
INFO_FIELDS = ("iterations", "residual", "max_abs_h", "damping", "rejected", "stalled")
_INFO_LEN = 8


@dataclasses.dataclass(frozen=True)
class NewtonSettings:
    """Static settings of one fused solve (the rules of :mod:`pararnn.newton_loop`)."""

    tol: float
    max_iters: int
    patience: int
    damping: str | float  # "auto" or a fixed λ >= 0
    quasi: bool


def _accum_dtype(dtype) -> np.dtype:
    return np.dtype(jnp.float64) if np.dtype(dtype) == np.float64 else np.dtype(jnp.float32)


def _as_tile(e, shape, dtype):
    if is_concrete(e):
        return jnp.full(shape, e, dtype)
    e = e.astype(dtype)
    return e if e.shape == shape else jnp.broadcast_to(e, shape)


class _Program:
    """The kernel's view of one solve: operand loading and the step on tiles."""

    def __init__(self, plan: StepPlan, geom: Geometry, settings: NewtonSettings):
        self.plan, self.g, self.s = plan, geom, settings
        self.sd = plan.state_dtype
        self.ad = _accum_dtype(self.sd)
        self.lead = plan.state_lead
        self.n = math.prod(self.lead)
        if plan.structure is BLOCK and not settings.quasi:
            self.alg = Algebra("block", plan.block_size)
        else:
            self.alg = Algebra("diagonal", self.n)
        self.count = geom.length_t * self.n * geom.lanes

    def setup(self, loader: Loader, h0_ref, s_refs):
        self.ld = loader
        self.shape = loader.shape
        self.h0 = tuple(t.astype(self.sd) for t in loader.load_static(h0_ref, self.lead, True, False))
        self.statics = []
        for ref, op in zip(s_refs, self.plan.s_operands):
            tiles = loader.load_static(ref, op.lead, op.channel, scalar=(op.shape == ()))
            self.statics.append(LaneValue(op.lead, tuple(tiles), op.channel, op.dtype))

    def xvals(self, x_refs, tc) -> list[LaneValue]:
        return [LaneValue(op.lead, tuple(self.ld.load_step(ref, op.lead, op.channel, tc)),
                          op.channel, op.dtype)
                for ref, op in zip(x_refs, self.plan.x_operands)]

    def _state(self, tiles) -> LaneValue:
        return LaneValue(self.lead, tuple(tiles), True, self.sd)

    def step(self, h_tiles, xv) -> tuple:
        out = self.plan.step(self._state(h_tiles), xv, self.statics)
        return tuple(_as_tile(e, self.shape, self.sd) for e in out.elems)

    def linearize(self, h_tiles, xv) -> tuple[tuple, tuple]:
        """``(step(h) in the state dtype, J in the accumulation dtype)``."""
        fh, cols = self.plan.linearize(self._state(h_tiles), xv, self.statics)
        fh = tuple(_as_tile(e, self.shape, self.sd) for e in fh.elems)
        cols = [tuple(_as_tile(e, self.shape, self.ad) for e in c.elems) for c in cols]
        if self.plan.structure is BLOCK and self.s.quasi:
            jac = tuple(cols[k][k] for k in range(self.alg.n))
        else:
            jac = self.alg.from_columns(cols)
        return fh, jac

    def zeros_state(self):
        return tuple(concrete(0, self.sd) for _ in range(self.n))

    def load_h(self, ref, tc) -> tuple:
        return tuple(self.ld.load_step(ref, self.lead, True, tc))


def _newton_kernel(prog: _Program, n_static: int, n_x: int, has_init: bool, gpu: bool):
    g, s = prog.g, prog.s
    adaptive = s.damping == "auto"
    c0 = 1.0 if adaptive else 1.0 / (1.0 + float(s.damping))
    lam0 = 0.0 if adaptive else float(s.damping)
    sd, ad, alg, L, C = prog.sd, prog.ad, prog.alg, g.chunk_len, g.chunks

    def kernel(*refs):
        h0_ref = refs[0]
        s_refs = refs[1:1 + n_static]
        x_refs = refs[1 + n_static:1 + n_static + n_x]
        init_ref = refs[1 + n_static + n_x] if has_init else None
        hs_ref, alt_ref, info_ref = refs[-3:]
        ld = Loader(g)
        prog.setup(ld, h0_ref, s_refs)
        rows, shape = ld.rows, ld.shape
        h0_row = tuple(jnp.broadcast_to(t[None, :], (1, g.lanes)) for t in prog.h0)
        zero_j = alg.identity(shape, ad)

        def sync():
            # A sweep reads what an earlier sweep wrote, possibly from other threads of the
            # program (if Triton lays the tiles out differently): make it visible. (GPU only:
            # interpret mode runs a program's operations in order anyway.)
            if gpu:
                plgpu.debug_barrier()

        def masked(valid, vals):
            return tuple(jnp.where(valid, v, jnp.zeros_like(v)) for v in vals)

        def residual(fh, h, valid):
            return masked(valid, tuple(a.astype(ad) - b.astype(ad) for a, b in zip(fh, h)))

        def accumulate(jac, r, e, p, c, valid):
            a = masked(valid, alg.scale(jnp.asarray(c, ad), jac))
            e = tuple(x + y for x, y in zip(alg.apply(a, e), r))
            return e, alg.compose(a, p)

        # ---- the first iterate: step(0, x_t) or init, written to hs ----------------------
        def first_iterate(tc, xv):
            if has_init:
                return tuple(t.astype(sd) for t in prog.load_h(init_ref, tc))
            return prog.step(prog.zeros_state(), xv)

        def init_sweep(c):
            # the iterate at each chunk's predecessor position (h0 for chunk 0)
            tc_prev = jnp.clip(L * rows - 1, 0, g.length_t - 1)
            h_before = first_iterate(tc_prev, prog.xvals(x_refs, tc_prev))
            hprev = tuple(jnp.where(rows == 0, a, b) for a, b in zip(h0_row, h_before))
            hprev = tuple(jnp.broadcast_to(x, shape) for x in hprev)

            def body(p, carry):
                hprev, e, pr, st = carry
                t, tc, valid = ld.times(p)
                xv = prog.xvals(x_refs, tc)
                h = first_iterate(tc, xv)
                ld.store_step(hs_ref, prog.lead, h, t, valid)
                fh, jac = prog.linearize(hprev, xv)
                r = residual(fh, h, valid)
                e, pr = accumulate(jac, r, e, pr, c, valid)
                return h, e, pr, st.add(r, h, valid)

            init = (hprev, tuple(jnp.zeros(shape, ad) for _ in range(alg.n)), zero_j,
                    Stats.empty(shape, ad))
            out = lax.fori_loop(0, L, body, init)
            sync()
            return out

        # ---- one Newton step: apply the correction, linearise the candidate --------------
        def fused_sweep(src, dst, c_old, c_new, hend, pr, e):
            zero_row = tuple(jnp.zeros((1, g.lanes), ad) for _ in range(alg.n))
            d_in, d_out = link_chunks(alg, pr, e, zero_row, rows, C)
            hend_new = tuple((a.astype(ad) + b).astype(sd) for a, b in zip(hend, d_out))
            hin_old = shift_rows(hend, h0_row, rows, C)
            hin_new = shift_rows(hend_new, h0_row, rows, C)

            def body(p, carry):
                hp_old, hp_new, delta, e, pr, st = carry
                t, tc, valid = ld.times(p)
                xv = prog.xvals(x_refs, tc)
                h_old = prog.load_h(src, tc)
                fh, jac = prog.linearize(hp_old, xv)
                r = residual(fh, h_old, valid)
                a = masked(valid, alg.scale(jnp.asarray(c_old, ad), jac))
                delta = tuple(x + y for x, y in zip(alg.apply(a, delta), r))
                h_new = tuple((x.astype(ad) + y).astype(sd) for x, y in zip(h_old, delta))
                # the chunk's last state is the one the link computed (the next chunk's
                # first step was linearised around it)
                h_new = tuple(jnp.where(p == L - 1, x, y) for x, y in zip(hend_new, h_new))
                ld.store_step(dst, prog.lead, h_new, t, valid)
                fh_n, jac_n = prog.linearize(hp_new, xv)
                r_n = residual(fh_n, h_new, valid)
                e, pr = accumulate(jac_n, r_n, e, pr, c_new, valid)
                return h_old, h_new, delta, e, pr, st.add(r_n, h_new, valid)

            init = (hin_old, hin_new, d_in, tuple(jnp.zeros(shape, ad) for _ in range(alg.n)),
                    zero_j, Stats.empty(shape, ad))
            _, hend2, _, e2, pr2, st2 = lax.fori_loop(0, L, body, init)
            sync()
            return hend2, pr2, e2, st2

        # ---- re-summarise the kept iterate after a rejected step -------------------------
        def summary_sweep(src, c, hend):
            hprev0 = shift_rows(hend, h0_row, rows, C)

            def body(p, carry):
                hprev, e, pr = carry
                t, tc, valid = ld.times(p)
                xv = prog.xvals(x_refs, tc)
                h = prog.load_h(src, tc)
                fh, jac = prog.linearize(hprev, xv)
                r = residual(fh, h, valid)
                e, pr = accumulate(jac, r, e, pr, c, valid)
                return h, e, pr

            init = (hprev0, tuple(jnp.zeros(shape, ad) for _ in range(alg.n)), zero_j)
            _, e, pr = lax.fori_loop(0, L, body, init)
            return pr, e

        def copy_sweep(src, dst):
            def body(p, _):
                t, tc, valid = ld.times(p)
                ld.store_step(dst, prog.lead, prog.load_h(src, tc), t, valid)
                return 0
            lax.fori_loop(0, L, body, 0)

        def within(res, hmax):
            return (jnp.isfinite(res) & jnp.isfinite(hmax)
                    & (res <= s.tol * jnp.maximum(hmax, jnp.ones_like(hmax))))

        hend, e, pr, st = init_sweep(c0)
        res, merit, hmax = st.reduce(prog.count)
        i32 = jnp.int32
        state = dict(k=jnp.zeros((), i32), slot=jnp.zeros((), i32), c=jnp.asarray(c0, ad),
                     res=res, merit=merit, hmax=hmax, milestone=merit, since=jnp.zeros((), i32),
                     lam=jnp.asarray(lam0, ad), rejected=jnp.zeros((), i32),
                     hend=hend, pr=pr, e=e)

        def keep_going(st):
            return ((st["k"] < s.max_iters) & ~within(st["res"], st["hmax"])
                    & jnp.isfinite(st["res"]) & (st["since"] < s.patience))

        def newton_step(st):
            c = st["c"]
            c_new = jnp.minimum(jnp.asarray(1.0, ad), c * _UNDAMP_FACTOR) if adaptive else c

            def run(src, dst):
                return lambda: fused_sweep(src, dst, c, c_new, st["hend"], st["pr"], st["e"])

            hend2, pr2, e2, sw = lax.cond(st["slot"] == 0, run(hs_ref, alt_ref), run(alt_ref, hs_ref))
            res_c, merit_c, hmax_c = sw.reduce(prog.count)
            if adaptive:
                accept = jnp.isfinite(merit_c) & (merit_c <= _REJECT_GROWTH * st["merit"])
                c_next = jnp.where(accept, c_new,
                                   jnp.maximum(jnp.asarray(_MIN_ATTENUATION, ad), c / _DAMP_FACTOR))

                def resummarise():
                    def at(src):
                        return lambda: summary_sweep(src, c_next, st["hend"])
                    return lax.cond(st["slot"] == 0, at(hs_ref), at(alt_ref))

                pr_n, e_n = lax.cond(accept, lambda: (pr2, e2), resummarise)
            else:
                accept = jnp.ones((), bool)
                c_next, pr_n, e_n = c, pr2, e2
            pick = lambda a, b: jnp.where(accept, a, b)
            merit = pick(merit_c, st["merit"])
            progressed = merit <= _STALL_FACTOR * st["milestone"]
            return dict(
                k=st["k"] + 1, slot=pick(1 - st["slot"], st["slot"]), c=c_next,
                res=pick(res_c, st["res"]), merit=merit, hmax=pick(hmax_c, st["hmax"]),
                milestone=jnp.where(progressed, merit, st["milestone"]),
                since=jnp.where(progressed, 0, st["since"] + 1),
                lam=jnp.maximum(st["lam"], 1.0 / c - 1.0),
                rejected=st["rejected"] + (~accept).astype(i32),
                hend=tuple(pick(a, b) for a, b in zip(hend2, st["hend"])), pr=pr_n, e=e_n)

        st = lax.while_loop(keep_going, newton_step, state)

        def copy_back():
            copy_sweep(alt_ref, hs_ref)
            return 0

        lax.cond(st["slot"] == 1, copy_back, lambda: 0)
        converged = within(st["res"], st["hmax"])
        stalled = ~converged & (st["since"] >= s.patience) & jnp.isfinite(st["res"])
        values = (st["k"], st["res"], st["hmax"], st["lam"], st["rejected"], stalled)
        lane = lax.broadcasted_iota(jnp.int32, (_INFO_LEN,), 0)
        info = jnp.zeros((_INFO_LEN,), ad)
        for i, v in enumerate(values):
            info = jnp.where(lane == i, jnp.asarray(v).astype(ad), info)
        info_ref[...] = info

    return kernel


def fused_newton(step, h0: jax.Array, xs: Any, params: Any, consts: Sequence = (),
                 init: jax.Array | None = None, *, structure: Structure, settings: NewtonSettings,
                 plan: StepPlan | None = None, lanes: int | None = None, chunks: int | None = None,
                 options: KernelOptions = KernelOptions()) -> tuple[jax.Array, Progress]:
    """All states of ``h_t = step(h_{t−1}, xs[t], params, *consts)`` by the fused kernel.

    Args:
      step, h0, xs, params, consts: as for :func:`pararnn.solve` (``consts``: arrays the
        step takes as trailing arguments).
      init: optional first iterate ``(T, *h0.shape)``; default ``step(0, xs[t])``.
      structure: DIAGONAL or BLOCK.
      settings: the iteration's tolerance, budget, patience, damping and quasi flag.
      plan: a prepared :class:`StepPlan` (traced here if None).
      lanes, chunks: geometry overrides (:func:`pararnn.kernels.tiles.choose_geometry`).

    Returns:
      ``(hs, progress)``: the final iterate ``(T, *h0.shape)`` in h0's dtype and the
      iteration's :class:`pararnn.newton_loop.Progress`, reduced over programs.
    """
    if plan is None:
        plan = StepPlan(step, h0, xs, params, consts, structure=structure, quasi=settings.quasi)
    t = jax.tree_util.tree_leaves(xs)[0].shape[0]
    n_state = plan.block_size if structure is BLOCK else math.prod(plan.state_lead)
    geom = choose_geometry(t, plan.channels, n_state, lanes=lanes, chunks=chunks)
    prog = _Program(plan, geom, settings)
    statics = plan.static_arrays(params, consts)
    x_arrays = plan.x_arrays(xs)
    inputs = [jnp.asarray(h0, plan.state_dtype), *statics, *x_arrays]
    if init is not None:
        inputs.append(jnp.asarray(init, plan.state_dtype))
    bd = geom.lanes
    in_specs = operand_specs(plan, statics, x_arrays, bd, t)
    if init is not None:
        in_specs.append(channel_spec(plan.state_shape, bd, t))
    hs_spec = channel_spec(plan.state_shape, bd, t)
    out_specs = [hs_spec, hs_spec, pl.BlockSpec((None, _INFO_LEN), lambda j: (j, 0))]
    hs_shape = jax.ShapeDtypeStruct((t,) + plan.state_shape, plan.state_dtype)
    out_shape = [hs_shape, hs_shape,
                 jax.ShapeDtypeStruct((geom.programs, _INFO_LEN), prog.ad)]
    run = pallas_on_every_platform(
        lambda gpu: _newton_kernel(prog, len(statics), len(x_arrays), init is not None, gpu),
        grid=(geom.programs,), in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
        name="pararnn_fused_newton", options=options)
    hs, _, info = run(*inputs)
    res = jnp.max(info[:, 1])
    hmax = jnp.max(info[:, 2])
    converged = jnp.isfinite(res) & jnp.isfinite(hmax) & (res <= settings.tol * jnp.maximum(hmax, 1))
    stalled = jnp.any(info[:, 5] > 0) & ~converged
    progress = Progress(iterations=jnp.max(info[:, 0]).astype(jnp.int32), residual=res,
                        stalled=stalled, damping=jnp.max(info[:, 3]),
                        rejected=jnp.max(info[:, 4]).astype(jnp.int32))
    return hs, progress

