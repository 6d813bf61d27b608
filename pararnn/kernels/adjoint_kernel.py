"""The fused adjoint: the backward recurrence of a solve with its Jacobians built on the fly.

With ``g_t = ∂L/∂h_t`` the implicit function theorem gives

    λ_t = g_t + J_{t+1}ᵀ λ_{t+1},   λ_{T−1} = g_{T−1},   J_{t+1} = ∂step/∂h (h_t, x_{t+1}),

a reversed linear recurrence (:func:`pararnn.kernels.tiles.chunked_scan`). The kernel reads
the solution, ``xs`` and ``g`` and differentiates the step at every position in registers
(one JVP for diagonal steps, K for K×K blocks), so the T Jacobians never exist in memory —
the XLA path materialises them (and the scan's copies). The one VJP of the step over all t
that turns λ into parameter and input gradients stays an XLA computation (in
:mod:`pararnn.newton`): it is a large batched elementwise pass XLA fuses well.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from ..structure import BLOCK, Structure
from .dispatch import KernelOptions, pallas_on_every_platform
from .layout import StepPlan
from .newton_kernel import NewtonSettings, _Program
from .tiles import Loader, channel_spec, choose_geometry, chunked_scan, operand_specs

__all__ = ["fused_adjoint"]


def fused_adjoint(step, h0: jax.Array, hs: jax.Array, xs: Any, params: Any, g_hs: jax.Array,
                  consts: Sequence = (), *, structure: Structure, plan: StepPlan | None = None,
                  lanes: int | None = None, chunks: int | None = None,
                  options: KernelOptions = KernelOptions()) -> jax.Array:
    """λ of the adjoint recurrence, ``(T, *h0.shape)`` in float32 (float64 for float64 states).

    Args:
      step, h0, xs, params, consts: as for the forward solve.
      hs: the solution ``(T, *h0.shape)``.
      g_hs: the cotangent of ``hs``.
      structure: DIAGONAL or BLOCK (exact Jacobians: full blocks, also after quasi-Newton).
    """
    if plan is None:
        plan = StepPlan(step, h0, xs, params, consts, structure=structure, quasi=False)
    t = hs.shape[0]
    n_state = plan.block_size if structure is BLOCK else math.prod(plan.state_lead)
    geom = choose_geometry(t, plan.channels, n_state, lanes=lanes, chunks=chunks)
    settings = NewtonSettings(tol=0.0, max_iters=0, patience=1, damping=0.0, quasi=False)
    prog = _Program(plan, geom, settings)
    statics = plan.static_arrays(params, consts)
    x_arrays = plan.x_arrays(xs)
    n_static, n_x = len(statics), len(x_arrays)
    alg, ad, lead = prog.alg, prog.ad, plan.state_lead

    def kernel(*refs):
        h0_ref = refs[0]
        s_refs = refs[1:1 + n_static]
        x_refs = refs[1 + n_static:1 + n_static + n_x]
        hs_ref, g_ref, lam_ref = refs[1 + n_static + n_x:]
        ld = Loader(geom)
        prog.setup(ld, h0_ref, s_refs)

        def provider(p):
            t_, tc, valid = ld.times(p)
            t_next = t_ + 1
            valid_next = jnp.broadcast_to(t_next < geom.length_t, ld.shape)
            tn = jnp.minimum(t_next, geom.length_t - 1)
            h = prog.load_h(hs_ref, tc)
            _, jac = prog.linearize(h, prog.xvals(x_refs, tn))
            a = tuple(jnp.where(valid_next, x, jnp.zeros_like(x)) for x in alg.transpose(jac))
            gt = prog.load_h(g_ref, tc)
            b = tuple(jnp.where(valid, x.astype(ad), jnp.zeros(ld.shape, ad)) for x in gt)
            return t_, valid, a, b

        def store(t_, lam, valid):
            ld.store_step(lam_ref, lead, lam, t_, valid)

        first = tuple(jnp.zeros((1, geom.lanes), ad) for _ in range(alg.n))
        chunked_scan(ld, alg, provider, first, store, reverse=True, dtype=ad)

    bd = geom.lanes
    in_specs = operand_specs(plan, statics, x_arrays, bd, t)
    in_specs += [channel_spec(plan.state_shape, bd, t)] * 2
    out_spec = channel_spec(plan.state_shape, bd, t)
    run = pallas_on_every_platform(
        lambda gpu: kernel, grid=(geom.programs,), in_specs=in_specs, out_specs=out_spec,
        out_shape=jax.ShapeDtypeStruct((t,) + plan.state_shape, ad),
        name="pararnn_fused_adjoint", options=options)
    return run(jnp.asarray(h0, plan.state_dtype), *statics, *x_arrays,
               jnp.asarray(hs, plan.state_dtype), jnp.asarray(g_hs))
