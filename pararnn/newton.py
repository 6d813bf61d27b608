"""``solve``: all states of ``h_t = step(h_{t-1}, x_t, params)`` at once, by Newton's method.

Write the sequence as one system ``F_t(h) = h_t − step(h_{t−1}, x_t) = 0``. Around an
iterate ``h``, Newton's update ``Δ`` solves the *linear* recurrence

    Δ_t = J_t Δ_{t−1} + (step(h_{t−1}, x_t) − h_t),      Δ_{−1} = 0,
    J_t = ∂step/∂h (h_{t−1}, x_t),

which :func:`pararnn.scan.linear_recurrence` solves in O(log T) depth. Quasi-Newton keeps only
the diagonal of ``J_t``: cheaper iterations, the same fixed point. Either way the first
``k`` states are exact after ``k`` iterations, so the solve is exact after at most T.

Gradients never flow through the iterations: a custom VJP solves the adjoint recurrence
``λ_t = g_t + J_{t+1}ᵀ λ_{t+1}`` (exact Jacobians at the solution, reversed in time) with the
same parallel scan, then takes one VJP of ``step`` over all t.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import numpy as np
import jax
import jax.numpy as jnp
from jax import lax

from . import validate
from .auto import choose_method
from .control import match_varying, run_if
from .jacobians import JacobianSpec, linearize, vmap_over_time
from .scan import ALGORITHMS, linear_recurrence
from .structure import DENSE, DIAGONAL, Structure

__all__ = ["solve", "SolveInfo", "ConvergenceError", "default_tol", "default_max_iters"]


class SolveInfo(NamedTuple):
    """What a solve did. A pytree: it passes through jit/vmap/pmap (gaining batch axes).

    Attributes:
      iterations: int32, Newton (or quasi-Newton) updates taken; 0 for ``"sequential"``.
      residual: ``max_t max|hs[t] − step(hs[t−1], xs[t])|`` of the returned states.
      converged: whether the Newton iterate reached ``residual <= tol · max(1, max|hs|)``.
      fell_back: whether the returned states come from the sequential fallback.
    """

    iterations: jax.Array
    residual: jax.Array
    converged: jax.Array
    fell_back: jax.Array


class ConvergenceError(RuntimeError):
    """Newton did not converge and ``fallback="raise"`` was requested."""


# Default tolerances on the residual max|h_t − step(h_{t−1}, x_t)|, per state dtype. They sit
# well above the floor set by rounding in the step (a few ulps of |h| ~ 1; more for wide
# dense steps whose matvecs round at ~√D ulps) and, thanks to Newton's quadratic
# convergence, far below what a stopped iterate usually reaches.
_DEFAULT_TOL = {
    jnp.dtype(jnp.float64): 1e-13,
    jnp.dtype(jnp.float32): 1e-5,
    jnp.dtype(jnp.float16): 3e-3,
    jnp.dtype(jnp.bfloat16): 2e-2,
}
_DEFAULT_MAX_ITERS = {"newton": 32, "quasi": 128, "sequential": 0}


def default_tol(dtype) -> float:
    """The default ``tol`` for states of ``dtype``."""
    return _DEFAULT_TOL[jnp.dtype(dtype)]


def default_max_iters(method: str) -> int:
    """The default ``max_iters`` for ``"newton"`` or ``"quasi"``."""
    return _DEFAULT_MAX_ITERS[method]


@dataclasses.dataclass(frozen=True)
class _Config:
    structure: Structure
    method: str  # "newton" | "quasi"
    max_iters: int
    tol: float
    fallback: str
    algorithm: str
    raise_in_graph: bool


def solve(
    step: Callable[[jax.Array, Any, Any], jax.Array],
    h0: jax.Array,
    xs: Any,
    params: Any,
    *,
    jacobian: str | Callable = "diagonal",
    method: str = "newton",
    max_iters: int | None = None,
    tol: float | None = None,
    init: jax.Array | None = None,
    fallback: str = "sequential",
    return_info: bool = False,
    algorithm: str = "auto",
    jacobian_diagonal: Callable | None = None,
):
    """All states of ``h_t = step(h_{t-1}, xs[t], params)`` for t = 0 … T−1, in parallel.

    Args:
      step: ``step(h, x, params) -> h_next``, one time step; ``x`` is one time slice of
        ``xs``. It may close over arrays (they are differentiated correctly).
      h0: the initial state ``h_{-1}``: ``(D,)`` for ``"diagonal"`` / ``"dense"``
        (diagonal also accepts any shape), ``(K, N)`` for ``"block"``.
      xs: pytree whose leaves all have leading axis T >= 1.
      params: any pytree of parameters, passed to ``step`` unchanged.
      jacobian: the structure of ∂step/∂h: ``"diagonal"`` (one JVP), ``"block"`` (one K×K
        block per channel n of a (K, N) state; K JVPs), ``"dense"`` (D JVPs), or a callable
        ``jac(h, x, params)`` returning one step's Jacobian in one of those layouts: ``(D,)``
        diagonal, ``(N, K, K)`` block, ``(D, D)`` dense. Use :func:`pararnn.check_jacobian`
        to verify a claim; a wrong claim gives a wrong fixed point.
      method: ``"newton"``, ``"quasi"`` (iterate with only the diagonal of J), ``"sequential"``
        (``lax.scan``), or ``"auto"`` (:func:`pararnn.auto.choose_method`).
      max_iters: Newton iteration cap (default 32 for newton, 128 for quasi).
      tol: converged when the residual ``max|hs[t] − step(hs[t−1], xs[t])|`` is at most
        ``tol · max(1, max|hs|)`` (absolute for states up to magnitude 1, relative beyond).
        Default by state dtype: float64 1e-13, float32 1e-5, float16 3e-3, bfloat16 2e-2.
      init: optional initial guess ``(T, *h0.shape)``; default ``step(0, xs[t])`` for all t.
      fallback: when the iteration does not converge within ``max_iters`` or produces
        NaN/Inf: ``"sequential"`` returns the sequential answer (``info.fell_back``);
        ``"raise"`` raises :class:`ConvergenceError` (when traced — under ``jit``, ``grad``
        or ``vmap`` — it surfaces as a ``JaxRuntimeError`` carrying the same message); ``"none"`` returns the last iterate
        with ``info.converged = False``. The fallback costs nothing when the solve converges,
        also under ``vmap``.
      return_info: also return a :class:`SolveInfo`.
      algorithm: the linear-recurrence algorithm (``"auto"``, ``"tree"``, ``"chunked"``,
        ``"sequential"``), see :mod:`pararnn.scan`.
      jacobian_diagonal: optional ``jacobian_diagonal(h, x, params)`` returning only the
        diagonal of ∂step/∂h, shaped like ``h``; ``"quasi"`` iterates with it instead of
        extracting the diagonal from the full Jacobian (O(D) instead of O(D²) per step for
        dense cells). Gradients still use the exact ``jacobian``.

    Returns:
      ``hs`` of shape ``(T, *h0.shape)``, dtype of ``h0``; ``(hs, info)`` if ``return_info``.

    Differentiable in reverse mode (``jax.grad``/``vjp``) w.r.t. ``h0``, ``xs``, ``params``
    and arrays ``step`` closes over, by the implicit function theorem (exact Jacobians at the
    solution, never through the iterations). Forward-mode (``jvp``) is not supported.
    """
    validate.check_choice(method, validate.METHODS, "method")
    validate.check_choice(fallback, validate.FALLBACKS, "fallback")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}.")
    h0 = validate.check_h0(h0)
    t = validate.check_xs(xs)
    x0_spec = validate.slice_spec(xs)
    validate.check_step(step, h0, x0_spec, params)
    structure, jac_fn = validate.resolve_jacobian(jacobian, h0, x0_spec, params)
    validate.check_jacobian_diagonal(jacobian_diagonal, h0, x0_spec, params)
    jac_fns = (jac_fn, jacobian_diagonal)
    init = validate.check_init(init, t, h0)
    max_iters = validate.check_max_iters(max_iters)
    tol = validate.check_tol(tol)
    if tol is None:
        tol = default_tol(h0.dtype)
    if method == "auto":
        method = choose_method(structure, t, h0.shape)
    operands = (h0, xs, params, init)
    traced = _under_trace(operands)
    cfg = _Config(
        structure=structure,
        method=method,
        max_iters=max_iters if max_iters is not None else default_max_iters(method),
        tol=tol,
        fallback=fallback,
        algorithm=algorithm,
        raise_in_graph=traced,
    )
    if traced:
        hs, info = _solve(cfg, step, jac_fns, *operands)
    else:
        # Called eagerly: compile the whole solve once per (step, shapes) instead of
        # dispatching it op by op (callables that cannot key the compilation cache do run
        # op by op), then check convergence in Python.
        run = _solve_jit if _hashable((step,) + jac_fns) else _solve
        hs, info = run(cfg, step, jac_fns, *operands)
        if fallback == "raise" and method != "sequential":
            if isinstance(info.converged, jax.core.Tracer):
                # The step closes over a traced value (e.g. vmap over a captured array):
                # this call is traced after all, so the check must live in the graph.
                cfg = dataclasses.replace(cfg, raise_in_graph=True)
                hs, info = _solve(cfg, step, jac_fns, *operands)
            elif not bool(info.converged):
                raise ConvergenceError(_not_converged_message(info.residual, info.iterations, tol))
    return (hs, info) if return_info else hs


def _solve(cfg: "_Config", step, jac_fns, h0, xs, params, init):
    if cfg.method == "sequential":
        hs = sequential_solve(step, h0, xs, params)
        res = _residual(vmap_over_time(step)(_shift(h0, hs), xs, params), hs)
        zero = jnp.zeros((), jnp.int32)
        return hs, SolveInfo(zero, res, _within_tol(res, hs, cfg.tol), jnp.zeros((), bool))
    x0 = jax.tree_util.tree_map(lambda l: l[0], xs)
    step_c, consts = _hoist_closure(step, h0, x0, params)
    hoisted = [(None, ()) if fn is None else _hoist_closure(fn, h0, x0, params) for fn in jac_fns]
    spec = JacobianSpec(cfg.structure, hoisted[0][0], hoisted[1][0])
    jconsts = (hoisted[0][1], hoisted[1][1])
    operands = (h0, xs, params, consts, jconsts, init)
    # Inside shard_map every operand must vary over the same mesh axes: the custom VJP
    # returns cotangents typed like its inputs, and the sum over devices of a replicated
    # input's cotangent is the transpose of this cast, done by JAX outside the custom VJP.
    operands = match_varying(operands, operands)
    return _make_core(cfg, step_c, spec)(*operands)


_solve_jit = jax.jit(_solve, static_argnums=(0, 1, 2))


def _hoist_closure(fn: Callable, h0, x0, params) -> tuple[Callable, tuple]:
    """Turn traced arrays that ``fn`` closes over into explicit trailing arguments, so that
    the custom VJP can differentiate them. ``fn`` itself is kept when it closes over no
    tracers (the common case): the converted function replays a jaxpr recorded for the
    example arguments' types, which is brittle inside ``shard_map`` (varying axes)."""
    if not _hashable(fn):  # closure_convert caches by function: give it a hashable one
        fn = (lambda f: lambda h, x, p: f(h, x, p))(fn)
    converted, consts = jax.closure_convert(fn, h0, x0, params)
    if not consts:
        return (lambda h, x, p, *unused: fn(h, x, p)), ()
    return converted, tuple(consts)


def _hashable(fns) -> bool:
    try:
        hash(fns)
        return True
    except TypeError:
        return False


def _under_trace(operands) -> bool:
    """Whether this call is being traced (jit/grad/vmap) rather than run eagerly. A jit
    traces constants too, so an op on no inputs tells whether one is active."""
    leaves = jax.tree_util.tree_leaves(operands)
    return any(isinstance(l, jax.core.Tracer) for l in leaves) or isinstance(
        jnp.zeros(()), jax.core.Tracer
    )


def sequential_solve(step: Callable, h0: jax.Array, xs: Any, params: Any, *consts) -> jax.Array:
    """The reference: ``lax.scan`` of ``step`` over time. ``(T, *h0.shape)``."""

    def body(h, x):
        h = step(h, x, params, *consts)
        return h, h

    return lax.scan(body, match_varying(h0, xs, params, consts), xs)[1]


def sequential_fallback(step: Callable, h0: jax.Array, xs: Any, params: Any, *consts) -> jax.Array:
    """``sequential_solve`` written as a loop that indexes ``xs`` in place (forward only).

    Under ``vmap`` a ``lax.scan`` over batched ``xs`` first moves time to the front — a
    transpose that does not depend on the loop it sits in, so XLA hoists it out of the
    fallback branch and every converged solve pays for it. Dynamic indexing along the
    time axis needs no transpose, so a fallback that does not run costs nothing.
    """
    t = jax.tree_util.tree_leaves(xs)[0].shape[0]
    h_init = match_varying(h0, xs, params, consts)
    out = match_varying(jnp.zeros((t,) + h0.shape, h0.dtype), h_init)

    def body(i, carry):
        h, out = carry
        x = jax.tree_util.tree_map(lambda l: lax.dynamic_index_in_dim(l, i, 0, keepdims=False), xs)
        h = step(h, x, params, *consts)
        return h, lax.dynamic_update_index_in_dim(out, h, i, 0)

    return lax.fori_loop(0, t, body, (h_init, out))[1]


def _shift(h0: jax.Array, hs: jax.Array) -> jax.Array:
    """``hprev[t] = hs[t-1]``, ``hprev[0] = h0``."""
    return jnp.concatenate([h0[None], hs[:-1]], axis=0)


def _residual(fh: jax.Array, hs: jax.Array) -> jax.Array:
    """``max_t max|step(hs[t−1]) − hs[t]|`` (float32 at least); ``inf`` if any entry is NaN/Inf.

    The finiteness test is explicit because XLA:CPU's vectorised max reduction does not
    propagate NaN (an all-NaN array reduces to −inf), which would read as converged."""
    dt = jnp.float64 if hs.dtype == jnp.float64 else jnp.float32
    diff = jnp.abs(fh.astype(dt) - hs.astype(dt))
    return jnp.where(jnp.all(jnp.isfinite(diff)), jnp.max(diff), jnp.asarray(jnp.inf, dt))


def _within_tol(res: jax.Array, hs: jax.Array, tol: float) -> jax.Array:
    """Converged: ``res <= tol · max(1, max|hs|)`` — absolute for states of magnitude up to 1,
    relative beyond, because rounding in the step scales with the state (an LSTM cell state
    of 100 cannot be resolved to 1e-5 absolute in float32)."""
    scale = jnp.maximum(jnp.max(jnp.abs(hs)).astype(res.dtype), 1)
    # res is inf when any state is NaN/Inf (see _residual); res <= tol·inf would pass
    return jnp.isfinite(res) & jnp.isfinite(scale) & (res <= tol * scale)


def _not_converged_message(residual, iterations, tol) -> str:
    return (
        f"pararnn.solve: Newton did not converge: residual {float(np.max(residual)):.3g} > tol "
        f"{tol:.3g} after {int(np.max(iterations))} iterations (or NaN/Inf appeared). Use "
        f"fallback='sequential' to get the sequential answer instead, raise max_iters, or use a "
        f"more contractive cell."
    )


def _forward(cfg: _Config, step_c, spec, h0, xs, params, consts, jconsts, init, *, keep_jacobian):
    """Newton iterations plus fallback. Returns ``(hs, info, J)``; ``J`` is the exact
    Jacobian at the solution when ``keep_jacobian`` and it is cheap to keep, else None."""
    st = cfg.structure
    quasi = cfg.method == "quasi"
    iter_structure = DIAGONAL if quasi else st
    f_all = vmap_over_time(step_c, len(consts))

    def lin(hs):
        return linearize(
            step_c, spec, _shift(h0, hs), xs, params, consts, jconsts, diagonal_only=quasi
        )

    if init is None:
        zeros = jnp.zeros((jax.tree_util.tree_leaves(xs)[0].shape[0],) + h0.shape, h0.dtype)
        init = f_all(zeros, xs, params, *consts)
    fh, jac = lin(init)
    state = (jnp.zeros((), jnp.int32), init, fh, jac, _residual(fh, init))

    def not_done(s):
        k, hs, _, _, res = s
        return (k < cfg.max_iters) & ~_within_tol(res, hs, cfg.tol) & jnp.isfinite(res)

    def newton_update(s):
        k, hs, fh, jac, _ = s
        delta = linear_recurrence(
            jac, fh - hs, jnp.zeros_like(h0), structure=iter_structure, algorithm=cfg.algorithm
        )
        hs = hs + delta
        fh, jac = lin(hs)
        return k + 1, hs, fh, jac, _residual(fh, hs)

    iters, hs, fh, jac, res = lax.while_loop(not_done, newton_update, state)
    converged = _within_tol(res, hs, cfg.tol)

    keep = keep_jacobian and not quasi and st is not DENSE
    result = (hs, jac if keep else None, res)
    if cfg.fallback == "sequential":

        def fall_back(operand):
            # Everything is computed from the operand's h0 (tied to the loop predicate by
            # run_if) so that XLA cannot hoist this sequential solve out of the branch.
            h_start, _ = operand
            hs_seq = sequential_fallback(step_c, h_start, xs, params, *consts)
            if keep:
                fh_seq, jac_seq = linearize(step_c, spec, _shift(h_start, hs_seq), xs, params,
                                            consts, jconsts)
            else:
                fh_seq, jac_seq = f_all(_shift(h_start, hs_seq), xs, params, *consts), None
            return h_start, (hs_seq, jac_seq, _residual(fh_seq, hs_seq))

        _, result = run_if(~converged, fall_back, (h0, result))
        fell_back = ~converged
    else:
        fell_back = jnp.zeros((), bool)
        if cfg.fallback == "raise" and cfg.raise_in_graph:

            def report(r):
                jax.debug.callback(_raise_if_not_converged, converged, res, iters, cfg.tol)
                return r

            result = run_if(~converged, report, result)
    hs, jac, res = result
    return hs, SolveInfo(iters, res, converged, fell_back), jac


def _raise_if_not_converged(converged, residual, iterations, tol):
    if not np.all(converged):
        raise ConvergenceError(_not_converged_message(residual, iterations, tol))


def _zero_cotangent(x):
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros_like(x)
    return np.zeros(x.shape, dtype=jax.dtypes.float0)


def _make_core(cfg: _Config, step_c: Callable, spec: JacobianSpec):
    st = cfg.structure

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
        hprev = _shift(h0, hs)
        if jac is None:  # not kept by the forward: rebuild the exact Jacobian at the solution
            _, jac = linearize(step_c, spec, hprev, xs, params, consts, jconsts)
        # λ_t = g_t + J_{t+1}ᵀ λ_{t+1}, λ_{T-1} = g_{T-1}: a reverse linear recurrence whose
        # coefficient at t is J_{t+1}ᵀ (the last one multiplies λ_T = 0).
        jac_next_t = st.transpose(jnp.concatenate([jac[1:], jnp.zeros_like(jac[:1])], axis=0))
        lam = linear_recurrence(
            jac_next_t, g_hs, jnp.zeros_like(h0), structure=st, reverse=True, algorithm=cfg.algorithm
        )
        f_all = vmap_over_time(step_c, len(consts))
        _, vjp = jax.vjp(lambda hp, x, p, c: f_all(hp, x, p, *c), hprev, xs, params, consts)
        d_hprev, d_xs, d_params, d_consts = vjp(lam.astype(hs.dtype))
        d_jconsts = jax.tree_util.tree_map(_zero_cotangent, jconsts)
        d_init = None if init is None else jnp.zeros_like(init)
        return d_hprev[0], d_xs, d_params, d_consts, d_jconsts, d_init

    core.defvjp(core_fwd, core_bwd)
    return core
