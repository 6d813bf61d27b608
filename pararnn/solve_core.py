"""The differentiable core of :func:`pararnn.solve`: the forward (Newton iterations, or a
sequential scan, plus the fallback) under a custom VJP whose backward solves the adjoint
recurrence (:mod:`pararnn.adjoint`) with exact Jacobians at the solution — never through the
iterations. Sequence parallelism (``cfg.seq``) threads through every piece."""

from __future__ import annotations

from typing import Callable

import numpy as np
import jax
import jax.numpy as jnp

from .adjoint import parallel_adjoint, rebuild_jacobian, sequential_adjoint
from .control import run_if, run_if_any
from .jacobians import JacobianSpec, linearize, vmap_over_time
from .kernels.solve_glue import fused_backward, fused_forward
from .newton_loop import iterate, residual_stats, within_tol
from .scan import linear_recurrence
from .sequential import prev_states, sequential_fallback, sequential_solve
from .solve_types import ConvergenceError, SolveConfig, SolveInfo, not_converged_message
from .structure import DENSE, DIAGONAL
from .working_set import check_fits, working_set_bytes

__all__ = ["make_core", "check_working_set", "sequential_info"]


def check_working_set(structure, method: str, t: int, h0, pass_: str) -> None:
    """An explicitly requested parallel pass that cannot fit the device fails here, naming
    the sizes, instead of as an out-of-memory crash inside XLA (per sequence: under vmap the
    batch multiplies it, which the layers check for themselves)."""
    need = working_set_bytes(structure, t, h0.shape, h0.dtype, pass_=pass_, method=method)
    what = ("the parallel forward (method={method!r})" if pass_ == "forward"
            else "the parallel adjoint (backward='parallel')").format(method=method)
    check_fits(need, f"pararnn.solve: {what}",
               f"T={t}, state {tuple(h0.shape)} {jnp.dtype(h0.dtype).name}, "
               f"{structure.name} Jacobians",
               "Use method='sequential' / backward='sequential' (O(T·D) memory), or 'auto' to "
               "let pararnn choose a path that fits.")


def sequential_info(cfg: SolveConfig, step_outputs: Callable[[], jax.Array], hs) -> SolveInfo:
    """The info of a sequential solve; its residual (one more batched step evaluation) only
    when someone reads it."""
    zero, false = jnp.zeros((), jnp.int32), jnp.zeros((), bool)
    dt = jnp.float64 if hs.dtype == jnp.float64 else jnp.float32
    if cfg.want_residual:
        res, _ = residual_stats(step_outputs(), hs, cfg.seq)
        converged = within_tol(res, hs, cfg.tol, cfg.seq)
    else:
        res, converged = jnp.zeros((), dt), jnp.ones((), bool)
    return SolveInfo(zero, res, converged, false, jnp.zeros((), dt), false, zero)


def _raise_if_not_converged(converged, residual, iterations, stalled, tol):
    if not np.all(converged):
        raise ConvergenceError(not_converged_message(residual, iterations, tol, stalled))


def _zero_cotangent(x):
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros_like(x)
    return np.zeros(x.shape, dtype=jax.dtypes.float0)


def _forward(cfg: SolveConfig, step_c, spec, h0, xs, params, consts, jconsts, init, *,
             keep_jacobian):
    """Newton iterations plus fallback. Returns ``(hs, info, J)``; ``J`` is the exact
    Jacobian at the solution when ``keep_jacobian`` and it is cheap to keep, else None."""
    st, seq = cfg.structure, cfg.seq
    quasi = cfg.method == "quasi"
    iter_structure = DIAGONAL if quasi else st
    f_all = vmap_over_time(step_c, len(consts))
    if cfg.method == "sequential":  # a sequential forward under the custom (adjoint) VJP
        hs = sequential_solve(step_c, h0, xs, params, *consts, seq=seq)
        info = sequential_info(cfg, lambda: f_all(prev_states(h0, hs, seq), xs, params, *consts),
                               hs)
        return hs, info, None

    def lin(hs):
        return linearize(step_c, spec, prev_states(h0, hs, seq), xs, params, consts, jconsts,
                         diagonal_only=quasi)

    if cfg.algorithm == "fused":  # the whole iteration in the Pallas kernel (never with seq)
        hs, jac, progress = fused_forward(
            step_c, h0, xs, params, consts, init, structure=st, method=cfg.method, tol=cfg.tol,
            max_iters=cfg.max_iters, patience=cfg.patience, damping=cfg.damping)
    else:
        if init is None:
            zeros = jnp.zeros((jax.tree_util.tree_leaves(xs)[0].shape[0],) + h0.shape, h0.dtype)
            init = f_all(zeros, xs, params, *consts)
        hs, jac, progress = iterate(
            lin, init, h0, structure=iter_structure, algorithm=cfg.algorithm, tol=cfg.tol,
            max_iters=cfg.max_iters, patience=cfg.patience, damping=cfg.damping, seq=seq)
    iters, res = progress.iterations, progress.residual
    converged = within_tol(res, hs, cfg.tol, seq)

    # The parallel adjoint reuses the Newton Jacobians at the solution when they are exact
    # (not quasi) and not dense (T·D² is better rebuilt in the backward than kept meanwhile).
    keep = (keep_jacobian and cfg.backward == "parallel" and not quasi and st is not DENSE
            and jac is not None)  # the fused forward keeps none
    result = (hs, jac if keep else None, res)
    if cfg.fallback == "sequential":

        def fall_back(operand):
            # Everything is computed from the operand's h0 (tied to the loop predicate by
            # run_if) so that XLA cannot hoist this sequential solve out of the branch.
            h_start, _ = operand
            hs_seq = sequential_fallback(step_c, h_start, xs, params, *consts, seq=seq)
            hprev = prev_states(h_start, hs_seq, seq)
            if keep:
                fh_seq, jac_seq = linearize(step_c, spec, hprev, xs, params, consts, jconsts)
            else:
                fh_seq, jac_seq = f_all(hprev, xs, params, *consts), None
            return h_start, (hs_seq, jac_seq, residual_stats(fh_seq, hs_seq, seq)[0])

        if seq is None:
            _, result = run_if(~converged, fall_back, (h0, result))
        else:  # the pipelined fallback has collectives: all devices run it, or none
            _, result = run_if_any(~converged, fall_back, (h0, result), seq.any_device)
        fell_back = ~converged
    else:
        fell_back = jnp.zeros((), bool)
        if cfg.fallback == "raise" and cfg.raise_in_graph:

            def report(r):
                jax.debug.callback(_raise_if_not_converged, converged, res, iters,
                                   progress.stalled, cfg.tol)
                return r

            result = run_if(~converged, report, result)
    hs, jac, res = result
    info = SolveInfo(iters, res, converged, fell_back, progress.damping, progress.stalled,
                     progress.rejected)
    return hs, info, jac


def make_core(cfg: SolveConfig, step_c: Callable, spec: JacobianSpec):
    """``core(h0, xs, params, consts, jconsts, init) -> (hs, info)`` with the adjoint VJP."""
    st, seq = cfg.structure, cfg.seq

    @jax.custom_vjp
    def core(h0, xs, params, consts, jconsts, init):
        hs, info, _ = _forward(
            cfg, step_c, spec, h0, xs, params, consts, jconsts, init, keep_jacobian=False
        )
        return hs, info

    def core_fwd(h0, xs, params, consts, jconsts, init):
        hs, info, jac = _forward(
            cfg, step_c, spec, h0, xs, params, consts, jconsts, init, keep_jacobian=True
        )
        return (hs, info), (h0, xs, params, consts, jconsts, init, hs, jac)

    def core_bwd(residuals, cotangents):
        h0, xs, params, consts, jconsts, init, hs, jac = residuals
        g_hs, _ = cotangents
        hprev = prev_states(h0, hs, seq)
        if cfg.backward == "sequential":
            lam = sequential_adjoint(step_c, hprev, xs, params, consts, g_hs)
        elif cfg.algorithm == "fused":  # Jacobians built on the fly, never stored
            lam = fused_backward(step_c, h0, hs, xs, params, consts, g_hs, structure=st)
        else:
            check_working_set(st, cfg.method, hs.shape[0], h0, "backward")
            if jac is None:  # not kept by the forward: rebuild the exact Jacobians
                jac = rebuild_jacobian(step_c, spec, hprev, xs, params, consts, jconsts)
            if seq is None:
                lam = parallel_adjoint(st, jac, g_hs, h0, cfg.algorithm)
            else:
                # The coefficient of the shard's last step is J at the next device's first.
                boundary = seq.from_next(jac[0], jnp.zeros_like(jac[0]))
                jac_next_t = st.transpose(jnp.concatenate([jac[1:], boundary[None]], axis=0))
                lam = linear_recurrence(jac_next_t, g_hs, jnp.zeros_like(h0), structure=st,
                                        reverse=True, algorithm=cfg.algorithm, seq_axis=seq.name)
        f_all = vmap_over_time(step_c, len(consts))
        _, vjp = jax.vjp(lambda hp, x, p, c: f_all(hp, x, p, *c), hprev, xs, params, consts)
        d_hprev, d_xs, d_params, d_consts = vjp(lam.astype(hs.dtype))
        d_h0 = d_hprev[0]
        if seq is not None:  # only device 0's first step starts from h0; the others' first
            d_h0 = jnp.where(seq.index() == 0, d_h0, 0)  # states are in the adjoint already
        d_jconsts = jax.tree_util.tree_map(_zero_cotangent, jconsts)
        d_init = None if init is None else jnp.zeros_like(init)
        return d_h0, d_xs, d_params, d_consts, d_jconsts, d_init

    core.defvjp(core_fwd, core_bwd)
    return core
