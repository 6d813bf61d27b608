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
from typing import Any, Callable

import jax
import jax.numpy as jnp

from . import validate
from .adjoint import BACKWARDS
from .auto import choose_backward, choose_method
from .control import match_varying
from .jacobians import JacobianSpec, vmap_over_time
from .kernels.solve_glue import resolve_solve_algorithm
from .newton_loop import default_max_iters, default_patience
from .scan import ALGORITHMS, check_seq_axis
from .sequential import prev_states, sequential_solve
from .solve_core import check_working_set, make_core, sequential_info
from .solve_types import ConvergenceError, SolveConfig, SolveInfo, not_converged_message
from .structure import DENSE

__all__ = ["solve", "SolveInfo", "ConvergenceError", "default_tol", "default_max_iters"]


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
    seq_axis: str | None = None,
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
        steps that are elementwise over the channel axis; not with ``seq_axis``).
        ``"auto"`` picks ``"fused"`` on CUDA GPUs for such steps, the XLA scans elsewhere.
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
      seq_axis: inside :func:`jax.shard_map`, the mesh axis the sequence is split over: ``xs``
        (and ``init``) are this device's shard of consecutive time steps (devices in
        axis-index order), ``h0`` is the state before the whole sequence (the same on every
        device), and the result is this device's shard of ``hs``. Each Newton iteration
        exchanges only per-device summaries (:mod:`pararnn.seq_parallel`); convergence,
        damping, the fallback (a pipelined sequential pass across the devices) and ``info``
        are global. ``method="auto"`` then picks Newton (quasi for dense Jacobians): the
        sequential alternative serialises the devices. Gradients use the parallel adjoint,
        split the same way. For global arrays see :func:`pararnn.solve_sharded`.
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
    jac_fns = (jac_fn, jacobian_diagonal)
    init = validate.check_init(init, t, h0)
    max_iters = validate.check_max_iters(max_iters)
    patience = validate.check_positive_int(patience, "patience")
    damping = validate.check_damping(damping)
    tol = validate.check_tol(tol)
    if tol is None:
        tol = default_tol(h0.dtype)
    seq = None if seq_axis is None else check_seq_axis(seq_axis)
    if seq is not None and algorithm == "fused":
        raise ValueError(
            f"algorithm='fused' does not support seq_axis={seq_axis!r} (the kernel solves a "
            f"whole sequence on one device); use 'auto', 'tree', 'chunked' or 'sequential'.")
    if seq is None:  # under seq_axis "auto" keeps the XLA scans (see pararnn.scan)
        algorithm = resolve_solve_algorithm(algorithm, structure, step, h0, xs, params, method)
    length = t if seq is None else t * seq.size()  # the whole sequence's T
    if method == "auto":
        if seq is None:
            method = choose_method(structure, t, h0.shape, dtype=h0.dtype)
        else:
            method = "quasi" if structure is DENSE and h0.shape[0] > 16 else "newton"
    elif method != "sequential" and algorithm != "fused":  # fused: no T-long Jacobians
        check_working_set(structure, method, t, h0, "forward")
    if seq is not None and backward not in ("auto", "parallel"):
        raise ValueError(
            f"with seq_axis={seq_axis!r} gradients use the parallel adjoint split across the "
            f"devices; got backward={backward!r} (use 'auto' or 'parallel').")
    if backward == "auto":
        backward = "parallel" if seq is not None else choose_backward(
            structure, method, t, h0.shape, dtype=h0.dtype)
    elif backward == "autodiff" and method != "sequential":
        raise ValueError(
            f"backward='autodiff' (backpropagation through the sequential scan) needs "
            f"method='sequential', got method={method!r}; use backward='parallel' or "
            f"'sequential' to solve the adjoint recurrence instead.")
    operands = (h0, xs, params, init)
    traced = _under_trace(operands)
    cfg = SolveConfig(
        structure=structure,
        method=method,
        max_iters=max_iters if max_iters is not None else default_max_iters(method, length),
        patience=patience if patience is not None else default_patience(length, method),
        damping=damping,
        tol=tol,
        fallback=fallback,
        algorithm=algorithm,
        raise_in_graph=traced,
        backward=backward,
        want_residual=return_info or fallback == "raise",
        seq=seq,
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
                raise ConvergenceError(not_converged_message(
                    info.residual, info.iterations, tol, info.stalled))
    return (hs, info) if return_info else hs


def _solve(cfg: SolveConfig, step, jac_fns, h0, xs, params, init):
    if cfg.method == "sequential" and cfg.backward == "autodiff":
        hs = sequential_solve(step, h0, xs, params)
        return hs, sequential_info(cfg, lambda: vmap_over_time(step)(prev_states(h0, hs), xs, params), hs)
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
    return make_core(cfg, step_c, spec)(*operands)


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


