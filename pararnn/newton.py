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
from .adjoint import BACKWARDS, parallel_adjoint, rebuild_jacobian, sequential_adjoint
from .auto import choose_backward, choose_method
from .control import match_varying, run_if
from .jacobians import JacobianSpec, linearize, vmap_over_time
from .kernels.solve_glue import fused_backward, fused_forward, resolve_solve_algorithm
from .newton_loop import default_max_iters, default_patience, iterate, residual_stats, within_tol
from .scan import ALGORITHMS
from .structure import DENSE, DIAGONAL, Structure
from .working_set import check_fits, working_set_bytes

__all__ = ["solve", "SolveInfo", "ConvergenceError", "default_tol", "default_max_iters"]


class SolveInfo(NamedTuple):
    """What a solve did. A pytree: it passes through jit/vmap/pmap (gaining batch axes).

    Attributes:
      iterations: int32, Newton (or quasi-Newton) iterations taken, rejected damped steps
        included; 0 for ``"sequential"``.
      residual: ``max_t max|hs[t] − step(hs[t−1], xs[t])|`` of the returned states.
      converged: whether the Newton iterate reached ``residual <= tol · max(1, max|hs|)``.
      fell_back: whether the returned states come from the sequential fallback.
      damping: the largest damping ``λ`` the iteration used (its Jacobians were attenuated
        by ``1/(1+λ)``); 0 when it ran undamped throughout.
      stalled: whether the iteration stopped early because the residual stopped falling
        (see :mod:`pararnn.newton_loop`), rather than at the iteration budget.
      rejected: int32, damped steps rejected because they made the residual blow up.
    """

    iterations: jax.Array
    residual: jax.Array
    converged: jax.Array
    fell_back: jax.Array
    damping: jax.Array
    stalled: jax.Array
    rejected: jax.Array


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


def default_tol(dtype) -> float:
    """The default ``tol`` for states of ``dtype``."""
    return _DEFAULT_TOL[jnp.dtype(dtype)]


@dataclasses.dataclass(frozen=True)
class _Config:
    structure: Structure
    method: str  # "newton" | "quasi"
    max_iters: int
    patience: int
    damping: str | float
    tol: float
    fallback: str
    algorithm: str
    raise_in_graph: bool
    backward: str  # "parallel" | "sequential" | "autodiff"
    want_residual: bool  # the sequential forward skips it when nobody reads the info


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
    damping: str | float = "auto",
    patience: int | None = None,
    backward: str = "auto",
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
      max_iters: iteration budget. Default :func:`default_max_iters`: ``T / (2·log2 T)``,
        at least 32 for newton and 128 for quasi (an iteration costs ~2·log2 T dependent
        combines, so beyond that the sequential scan would be the faster answer).
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
        ``"sequential"``), see :mod:`pararnn.scan`; or ``"fused"``: the whole Newton solve
        and the adjoint in Pallas kernels (:mod:`pararnn.kernels`; diagonal and block
        steps that are elementwise over the channel axis; ``"auto"`` picks it on CUDA).
      jacobian_diagonal: optional ``jacobian_diagonal(h, x, params)`` returning only the
        diagonal of ∂step/∂h, shaped like ``h``; ``"quasi"`` iterates with it instead of
        extracting the diagonal from the full Jacobian (O(D) instead of O(D²) per step for
        dense cells). Gradients still use the exact ``jacobian``.
      damping: ``"auto"`` (default): start undamped; a step that makes the residual
        non-finite or grow 10× is rejected and the next one attenuates the Jacobians
        (Levenberg–Marquardt-style, ``J/(1+λ)``), relaxing again as steps succeed. A float
        ``λ >= 0`` damps every step by ``1/(1+λ)`` (0: plain Newton). Damping changes the
        path, never the answer: convergence is judged on the undamped residual, and
        gradients use exact Jacobians. See :mod:`pararnn.newton_loop`.
      backward: how gradients solve the adjoint recurrence (:mod:`pararnn.adjoint`):
        ``"parallel"`` (parallel scan over the exact Jacobians at the solution),
        ``"sequential"`` (reverse scan of state-VJPs: no Jacobians stored, O(T·D) memory for
        any structure), ``"autodiff"`` (backpropagation through the ``lax.scan``; only with
        ``method="sequential"``), or ``"auto"`` (:func:`pararnn.auto.choose_backward`: by
        backend, structure, sizes and the forward method). The forward and the backward are
        chosen independently: a sequential forward can have a parallel backward.
      patience: stop as stalled (then fall back / raise) when the mean residual has not
        halved for this many iterations; default :func:`pararnn.newton_loop.default_patience`
        (an eighth of the default budget, at least 16).

    Returns:
      ``hs`` of shape ``(T, *h0.shape)``, dtype of ``h0``; ``(hs, info)`` if ``return_info``.

    Differentiable in reverse mode (``jax.grad``/``vjp``) w.r.t. ``h0``, ``xs``, ``params``
    and arrays ``step`` closes over, by the implicit function theorem (exact Jacobians at the
    solution, never through the iterations). Forward-mode (``jvp``) is not supported.
    """
    validate.check_choice(method, validate.METHODS, "method")
    validate.check_choice(fallback, validate.FALLBACKS, "fallback")
    validate.check_choice(backward, BACKWARDS, "backward")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}.")
    h0 = validate.check_h0(h0)
    t = validate.check_xs(xs)
    x0_spec = validate.slice_spec(xs)
    validate.check_step(step, h0, x0_spec, params)
    structure, jac_fn = validate.resolve_jacobian(jacobian, h0, x0_spec, params)
    validate.check_jacobian_diagonal(jacobian_diagonal, h0, x0_spec, params)
    algorithm = resolve_solve_algorithm(algorithm, structure, step, h0, xs, params, method)
    jac_fns = (jac_fn, jacobian_diagonal)
    init = validate.check_init(init, t, h0)
    max_iters = validate.check_max_iters(max_iters)
    patience = validate.check_positive_int(patience, "patience")
    damping = validate.check_damping(damping)
    tol = validate.check_tol(tol)
    if tol is None:
        tol = default_tol(h0.dtype)
    if method == "auto":
        method = choose_method(structure, t, h0.shape, dtype=h0.dtype)
    elif method != "sequential" and algorithm != "fused":  # fused: no T-long Jacobians
        _check_working_set(structure, method, t, h0, "forward")
    if backward == "auto":
        backward = choose_backward(structure, method, t, h0.shape, dtype=h0.dtype)
    elif backward == "autodiff" and method != "sequential":
        raise ValueError(
            f"backward='autodiff' (backpropagation through the sequential scan) needs "
            f"method='sequential', got method={method!r}; use backward='parallel' or "
            f"'sequential' to solve the adjoint recurrence instead.")
    operands = (h0, xs, params, init)
    traced = _under_trace(operands)
    cfg = _Config(
        structure=structure,
        method=method,
        max_iters=max_iters if max_iters is not None else default_max_iters(method, t),
        patience=patience if patience is not None else default_patience(t, method),
        damping=damping,
        tol=tol,
        fallback=fallback,
        algorithm=algorithm,
        raise_in_graph=traced,
        backward=backward,
        want_residual=return_info or fallback == "raise",
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
                raise ConvergenceError(_not_converged_message(
                    info.residual, info.iterations, tol, info.stalled))
    return (hs, info) if return_info else hs


def _solve(cfg: "_Config", step, jac_fns, h0, xs, params, init):
    if cfg.method == "sequential" and cfg.backward == "autodiff":
        hs = sequential_solve(step, h0, xs, params)
        return hs, _sequential_info(cfg, lambda: vmap_over_time(step)(_shift(h0, hs), xs, params), hs)
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


def _not_converged_message(residual, iterations, tol, stalled=False) -> str:
    why = (" (stalled: the residual stopped falling; raise patience= to keep trying)"
           if bool(np.any(stalled)) else " (or NaN/Inf appeared)")
    return (
        f"pararnn.solve: Newton did not converge: residual {float(np.max(residual)):.3g} > tol "
        f"{tol:.3g} after {int(np.max(iterations))} iterations{why}. Use "
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
    if cfg.method == "sequential":  # a sequential forward under the custom (adjoint) VJP
        hs = sequential_solve(step_c, h0, xs, params, *consts)
        return hs, _sequential_info(cfg, lambda: f_all(_shift(h0, hs), xs, params, *consts), hs), None

    def lin(hs):
        return linearize(
            step_c, spec, _shift(h0, hs), xs, params, consts, jconsts, diagonal_only=quasi
        )

    if init is None and cfg.algorithm != "fused":  # the fused kernel computes its own
        zeros = jnp.zeros((jax.tree_util.tree_leaves(xs)[0].shape[0],) + h0.shape, h0.dtype)
        init = f_all(zeros, xs, params, *consts)
    if cfg.algorithm == "fused":
        hs, jac, progress = fused_forward(
            step_c, h0, xs, params, consts, init, structure=st, method=cfg.method, tol=cfg.tol,
            max_iters=cfg.max_iters, patience=cfg.patience, damping=cfg.damping)
    else:
        hs, jac, progress = iterate(
            lin, init, h0, structure=iter_structure, algorithm=cfg.algorithm, tol=cfg.tol,
            max_iters=cfg.max_iters, patience=cfg.patience, damping=cfg.damping)
    iters, res = progress.iterations, progress.residual
    converged = within_tol(res, hs, cfg.tol)

    # The parallel adjoint reuses the Newton Jacobians at the solution when they are exact
    # (not quasi) and not dense (T·D² is better rebuilt in the backward than kept meanwhile).
    keep = (keep_jacobian and cfg.backward == "parallel" and not quasi and st is not DENSE
            and jac is not None)
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
            return h_start, (hs_seq, jac_seq, residual_stats(fh_seq, hs_seq)[0])

        _, result = run_if(~converged, fall_back, (h0, result))
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


def _check_working_set(structure: Structure, method: str, t: int, h0, pass_: str) -> None:
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


def _sequential_info(cfg: _Config, step_outputs: Callable[[], jax.Array], hs) -> SolveInfo:
    """The info of a sequential solve; its residual (one more batched step evaluation) only
    when someone reads it."""
    zero, false = jnp.zeros((), jnp.int32), jnp.zeros((), bool)
    dt = jnp.float64 if hs.dtype == jnp.float64 else jnp.float32
    if cfg.want_residual:
        res, _ = residual_stats(step_outputs(), hs)
        converged = within_tol(res, hs, cfg.tol)
    else:
        res, converged = jnp.zeros((), dt), jnp.ones((), bool)
    return SolveInfo(zero, res, converged, false, jnp.zeros((), dt), false, zero)


def _raise_if_not_converged(converged, residual, iterations, stalled, tol):
    if not np.all(converged):
        raise ConvergenceError(_not_converged_message(residual, iterations, tol, stalled))


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
        if cfg.backward == "sequential":
            lam = sequential_adjoint(step_c, hprev, xs, params, consts, g_hs)
        elif cfg.algorithm == "fused":  # Jacobians built on the fly, never stored
            lam = fused_backward(step_c, h0, hs, xs, params, consts, g_hs, structure=st)
        else:
            _check_working_set(st, cfg.method, hs.shape[0], h0, "backward")
            if jac is None:  # not kept by the forward: rebuild the exact Jacobians
                jac = rebuild_jacobian(step_c, spec, hprev, xs, params, consts, jconsts)
            lam = parallel_adjoint(st, jac, g_hs, h0, cfg.algorithm)
        f_all = vmap_over_time(step_c, len(consts))
        _, vjp = jax.vjp(lambda hp, x, p, c: f_all(hp, x, p, *c), hprev, xs, params, consts)
        d_hprev, d_xs, d_params, d_consts = vjp(lam.astype(hs.dtype))
        d_jconsts = jax.tree_util.tree_map(_zero_cotangent, jconsts)
        d_init = None if init is None else jnp.zeros_like(init)
        return d_hprev[0], d_xs, d_params, d_consts, d_jconsts, d_init

    core.defvjp(core_fwd, core_bwd)
    return core
