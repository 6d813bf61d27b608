"""The Newton iteration itself: damping, the adaptive iteration budget and stall detection.

One iteration linearises the step around the iterate ``h`` (``fh_t = step(h_{t−1})``,
``J_t = ∂step/∂h``) and solves the linear recurrence

    Δ_t = c·J_t Δ_{t−1} + (fh_t − h_t),        h ← h + Δ,

with one parallel scan. ``c = 1`` is Newton's method; ``c < 1`` attenuates the Jacobian
(Levenberg–Marquardt-style damping, ``c = 1/(1+λ)``; ``c = 0`` would be a Jacobi sweep).
Any ``c`` keeps the fixed point (``Δ = 0`` exactly when every residual ``fh_t − h_t`` is
zero) and the property that makes the iteration exact after at most T steps: if
``h_0 … h_{j−1}`` are exact, the residuals before ``j`` vanish, so ``Δ_t = 0`` for ``t < j``
and ``h_j ← fh_j`` becomes exact too. Damping only trades Newton's quadratic convergence
for iterates that stay finite when the Jacobians of a poor iterate are expanding.

Adaptive damping (``damping="auto"``) starts undamped. A step whose residual is non-finite,
or whose mean residual grew more than ``_REJECT_GROWTH``-fold, is rejected (the iterate is
kept) and ``c`` is divided by ``_DAMP_FACTOR``; an accepted step multiplies ``c`` by
``_UNDAMP_FACTOR`` up to 1. Easy solves never damp, so they cost what they always did.

The solve stops when converged (the *undamped* residual decides, so damping never moves the
answer), when the budget of iterations is spent, or when it stalls: the mean residual has
not halved during the last ``patience`` iterations (Newton on a contractive chain halves it
every few iterations even while the maximum residual plateaus; chaotic or multistable
chains make no such progress, and there the sequential fallback is the faster answer).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from .control import match_varying, run_if, run_if_any
from .scan import linear_recurrence
from .seq_parallel import SeqAxis
from .structure import Structure

__all__ = ["default_max_iters", "default_patience", "Progress", "iterate", "residual_stats",
           "within_tol", "DAMPING_MODES"]

DAMPING_MODES = ("auto",)

# Reject a step when the mean residual grows by more than this factor (or is not finite).
# Newton on a long chain may raise the mean residual for a step or two on its way (the
# tanh RNN of spectral radius 2 in benchmarks/hard_systems.py grows it 300× once and still
# converges); a bound of 10× rejected those blow-ups without slowing the cases that converge
# undamped (measured in benchmarks/RESULTS.md, "Hard systems").
_REJECT_GROWTH = 10.0
_DAMP_FACTOR = 4.0  # c ← c / 4 after a rejected step
_UNDAMP_FACTOR = 2.0  # c ← min(1, 2c) after an accepted one
_MIN_ATTENUATION = 2.0 ** -20  # below this the step is a Jacobi sweep to working precision
_STALL_FACTOR = 0.5  # progress = the mean residual at least halves within `patience` iterations


def default_max_iters(method: str, length: int | None = None) -> int:
    """The iteration budget when ``max_iters`` is None.

    A parallel solve of T steps pays off while its iterations cost less than the T dependent
    steps of a sequential scan. One iteration has a depth of about ``2·log2 T`` combines, so
    the budget is ``T / (2·log2 T)`` iterations — at least 32 for Newton, 128 for the slower,
    linearly converging quasi-Newton (whose iterations are cheaper). Most solves stop long
    before it: on convergence (3–4 iterations for the layers at init) or on a stall.

    Args:
      method: ``"newton"`` or ``"quasi"`` (``"sequential"`` takes no iterations).
      length: T; None gives the floor (the budget for short sequences).
    """
    if method == "sequential":
        return 0
    floor = {"newton": 32, "quasi": 128}[method]
    if length is None or length < 2:
        return floor
    scale = 1 if method == "newton" else 4
    return max(floor, scale * math.ceil(length / (2 * math.log2(length))))


def default_patience(length: int, method: str = "newton") -> int:
    """Iterations without progress (the mean residual halving) before a solve is stalled:
    an eighth of the budget, at least 16. A stalled solve then wastes at most about an
    eighth of a sequential pass (in dependent steps) before it falls back, while a solve that
    converges slowly but steadily (halving its mean residual every few iterations, with
    plateaus of up to ~20 iterations measured on the hard systems) is left to finish."""
    return max(16, math.ceil(default_max_iters(method, length) / 8))


class Progress(NamedTuple):
    """What the iteration did (scalars; batched under vmap)."""

    iterations: jax.Array  # int32, iterations taken (rejected ones included)
    residual: jax.Array  # max |fh − h| of the final iterate
    stalled: jax.Array  # bool, stopped for lack of progress
    damping: jax.Array  # largest λ = 1/c − 1 used (0: undamped throughout)
    rejected: jax.Array  # int32, steps rejected by the adaptive damping


def residual_stats(fh: jax.Array, hs: jax.Array,
                   seq: SeqAxis | None = None) -> tuple[jax.Array, jax.Array]:
    """``(max, mean)`` of ``|fh − hs|`` in float32 at least; both ``inf`` if any entry is
    NaN/Inf. The finiteness test is explicit because XLA:CPU's vectorised max reduction
    does not propagate NaN (an all-NaN array reduces to −inf), which would read as converged.
    With ``seq``: over the whole sequence (every device gets the same numbers)."""
    dt = jnp.float64 if hs.dtype == jnp.float64 else jnp.float32
    diff = jnp.abs(fh.astype(dt) - hs.astype(dt))
    finite = jnp.all(jnp.isfinite(diff))
    biggest, total = jnp.max(diff), jnp.sum(diff)
    if seq is not None:
        finite, biggest, total = seq.all(finite), seq.max(biggest), seq.sum(total)
    mean = total / (diff.size * (1 if seq is None else seq.size()))
    inf = jnp.asarray(jnp.inf, dt)
    return jnp.where(finite, biggest, inf), jnp.where(finite, mean, inf)


def within_tol(res: jax.Array, hs: jax.Array, tol: float, seq: SeqAxis | None = None) -> jax.Array:
    """Converged: ``res <= tol · max(1, max|hs|)`` — absolute for states of magnitude up to 1,
    relative beyond, because rounding in the step scales with the state (an LSTM cell state
    of 100 cannot be resolved to 1e-5 absolute in float32)."""
    biggest = jnp.max(jnp.abs(hs)).astype(res.dtype)
    if seq is not None:
        biggest = seq.max(biggest)
    scale = jnp.maximum(biggest, 1)
    # res is inf when any state is NaN/Inf (see residual_stats); res <= tol·inf would pass
    return jnp.isfinite(res) & jnp.isfinite(scale) & (res <= tol * scale)


class _State(NamedTuple):
    k: jax.Array  # iterations taken
    hs: jax.Array  # the iterate (T, *S)
    fh: jax.Array  # step(hs[t-1]) (T, *S)
    jac: jax.Array  # Jacobians at the iterate, undamped
    res: jax.Array  # max residual
    merit: jax.Array  # mean residual
    atten: jax.Array  # c, the Jacobian attenuation of the next step
    milestone: jax.Array  # the merit at the last progress milestone
    since: jax.Array  # iterations since that milestone
    max_lambda: jax.Array
    rejected: jax.Array


def iterate(
    lin: Callable[[jax.Array], tuple[jax.Array, Any]],
    init: jax.Array,
    h0: jax.Array,
    *,
    structure: Structure,
    algorithm: str,
    tol: float,
    max_iters: int,
    patience: int,
    damping: str | float,
    seq: SeqAxis | None = None,
) -> tuple[jax.Array, Any, Progress]:
    """Run the (damped) Newton iteration from ``init``.

    Args:
      lin: ``lin(hs) -> (fh, J)``: the step at every ``hs[t−1]`` and its Jacobians, laid out
        for ``structure`` (the diagonal only for quasi-Newton).
      init: the first iterate ``(T, *S)``.
      h0: the initial state ``S`` (only its shape and dtype are used).
      structure: the structure of the Jacobians ``lin`` returns.
      algorithm: the linear-recurrence algorithm.
      tol, max_iters, patience: stopping rules (module docstring).
      damping: ``"auto"`` (adaptive) or a fixed ``λ >= 0`` (``c = 1/(1+λ)``; 0 = Newton).
      seq: the mesh axis the sequence is split over (``lin`` then exchanges the boundary
        states itself); the linear solves and the residuals span the whole sequence, so
        every device takes the same decisions.

    Returns:
      ``(hs, J, progress)``: the last iterate, its undamped Jacobians and what was done.
    """
    adaptive = damping == "auto"
    c0 = 1.0 if adaptive else 1.0 / (1.0 + float(damping))
    fh, jac = lin(init)
    res, merit = residual_stats(fh, init, seq)
    dt = res.dtype
    state = _State(
        k=jnp.zeros((), jnp.int32), hs=init, fh=fh, jac=jac, res=res, merit=merit,
        atten=jnp.asarray(c0, dt), milestone=merit, since=jnp.zeros((), jnp.int32),
        max_lambda=jnp.asarray(0.0 if adaptive else float(damping), dt),
        rejected=jnp.zeros((), jnp.int32),
    )
    # Inside shard_map (over time or batch) the carry mixes per-device values with
    # replicated constants: type it varying throughout (the identity elsewhere).
    state = match_varying(state, state)

    def needs_more(s: _State):
        return ((s.k < max_iters) & ~within_tol(s.res, s.hs, tol, seq) & jnp.isfinite(s.res)
                & (s.since < patience))

    def keep_going(s: _State):
        # Sequence-parallel: the iteration has collectives, so every device of the mesh runs
        # it as long as any needs it (see SeqAxis.any_device); the others keep their state.
        return needs_more(s) if seq is None else seq.any_device(needs_more(s))

    def step_if_needed(s: _State) -> _State:
        if seq is None:
            return one_step(s)
        mine = needs_more(s)
        return jax.tree_util.tree_map(lambda new, old: jnp.where(mine, new, old), one_step(s), s)

    def one_step(s: _State) -> _State:
        a = s.jac if not adaptive and c0 == 1.0 else s.jac * s.atten.astype(s.jac.dtype)
        delta = linear_recurrence(a, s.fh - s.hs, jnp.zeros_like(h0), structure=structure,
                                  algorithm=algorithm, seq_axis=None if seq is None else seq.name)
        cand = s.hs + delta.astype(s.hs.dtype)
        fh_c, jac_c = lin(cand)
        res_c, merit_c = residual_stats(fh_c, cand, seq)
        if not adaptive:
            accept = jnp.ones((), bool)
            atten = s.atten
        else:
            accept = jnp.isfinite(merit_c) & (merit_c <= _REJECT_GROWTH * s.merit)
            atten = jnp.where(accept, jnp.minimum(1.0, s.atten * _UNDAMP_FACTOR),
                              jnp.maximum(_MIN_ATTENUATION, s.atten / _DAMP_FACTOR))
        hs = jnp.where(accept, cand, s.hs)
        fh = jnp.where(accept, fh_c, s.fh)
        if adaptive:
            # A rejected step keeps the old iterate, whose Jacobians the scan consumed:
            # rebuild them only for the members that rejected (rare; never on easy solves).
            # (The iterate travels as run_if's operand so XLA cannot hoist the rebuild out.)
            rebuild = lambda op: (op[0], lin(op[0])[1])
            if seq is None:
                _, jac = run_if(~accept, rebuild, (hs, jac_c))
            else:
                _, jac = run_if_any(~accept, rebuild, (hs, jac_c), seq.any_device)
        else:
            jac = jac_c
        res = jnp.where(accept, res_c, s.res)
        merit = jnp.where(accept, merit_c, s.merit)
        progressed = merit <= _STALL_FACTOR * s.milestone
        return _State(
            k=s.k + 1, hs=hs, fh=fh, jac=jac, res=res, merit=merit, atten=atten,
            milestone=jnp.where(progressed, merit, s.milestone),
            since=jnp.where(progressed, 0, s.since + 1),
            max_lambda=jnp.maximum(s.max_lambda, 1.0 / s.atten - 1.0),
            rejected=s.rejected + (~accept).astype(jnp.int32),
        )

    s = lax.while_loop(keep_going, step_if_needed, state)
    converged = within_tol(s.res, s.hs, tol, seq)
    stalled = ~converged & (s.since >= patience) & jnp.isfinite(s.res)
    return s.hs, s.jac, Progress(s.k, s.res, stalled, s.max_lambda, s.rejected)
