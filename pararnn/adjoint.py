"""The backward pass of a solve: the adjoint recurrence, parallel or sequential.

With ``g_t = ∂L/∂h_t`` the implicit function theorem gives the adjoint

    λ_t = g_t + J_{t+1}ᵀ λ_{t+1},   λ_{T−1} = g_{T−1},   J_t = ∂step/∂h (h_{t−1}, x_t),

after which one VJP of the step over all t (a single batched call, parallel in t) yields the
gradients of ``h0``, ``xs``, ``params`` and closed-over arrays. Two ways to solve it:

- ``"parallel"``: the reversed, transposed linear recurrence by the parallel scan of
  :mod:`pararnn.scan`, over the exact structured Jacobians at the solution (O(log T) depth;
  the Jacobians take O(T·D) memory for diagonal and block structures, O(T·D²) for dense).
- ``"sequential"``: a reverse ``lax.scan`` whose step is one VJP of ``step`` with respect to
  the state — ``J_tᵀ λ_t`` without ever forming ``J_t``: O(T·D) memory for any structure,
  T dependent steps. Unlike backpropagation through a ``lax.scan`` it stores no per-step
  residuals, and the parameter gradients come from the one batched VJP (large matmuls), not
  from T rank-1 updates inside the loop.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

from .control import match_varying
from .jacobians import JacobianSpec, linearize
from .scan import linear_recurrence
from .structure import Structure

__all__ = ["parallel_adjoint", "sequential_adjoint", "BACKWARDS"]

#: ``solve(backward=...)``: the adjoint solvers above, ``"autodiff"`` (differentiate through
#: the sequential ``lax.scan``: backpropagation through time; only with method="sequential")
#: and ``"auto"``.
BACKWARDS = ("auto", "parallel", "sequential", "autodiff")


def _accum_dtype(dtype) -> jnp.dtype:
    """Half-precision adjoints accumulate in float32, like the scans."""
    return jnp.dtype(jnp.float64) if jnp.dtype(dtype) == jnp.float64 else jnp.dtype(jnp.float32)


def parallel_adjoint(st: Structure, jac: jax.Array, g_hs: jax.Array, h0: jax.Array,
                     algorithm: str) -> jax.Array:
    """λ by the parallel scan. ``jac`` ``(T, *jacobian_shape)``: exact Jacobians at the
    solution; ``g_hs`` ``(T, *S)``. Returns λ ``(T, *S)`` in the promoted dtype (float32 at
    least)."""
    # The coefficient of the reverse recurrence at t is J_{t+1}ᵀ (the last multiplies λ_T = 0).
    jac_next_t = st.transpose(jnp.concatenate([jac[1:], jnp.zeros_like(jac[:1])], axis=0))
    return linear_recurrence(jac_next_t, g_hs, jnp.zeros_like(h0), structure=st, reverse=True,
                             algorithm=algorithm)


def sequential_adjoint(step: Callable, hprev: jax.Array, xs: Any, params: Any, consts: tuple,
                       g_hs: jax.Array) -> jax.Array:
    """λ by a reverse scan of state-VJPs of ``step(h, x, params, *consts)``; ``hprev`` is
    ``(T, *S)`` with ``hprev[t] = h_{t−1}``. Returns λ ``(T, *S)`` accumulated in float32 at
    least (each VJP runs in the state's dtype)."""
    acc = _accum_dtype(g_hs.dtype)

    def back(mu, inputs):
        # mu = J_{t+1}ᵀ λ_{t+1} (zero at t = T−1); λ_t = g_t + mu; pass J_tᵀ λ_t down.
        h_prev, x, g = inputs
        lam = g.astype(acc) + mu
        _, vjp_h = jax.vjp(lambda h: step(h, x, params, *consts), h_prev)
        (mu_next,) = vjp_h(lam.astype(h_prev.dtype))
        return mu_next.astype(acc), lam

    mu0 = match_varying(jnp.zeros(hprev.shape[1:], acc), hprev, xs, params, consts, g_hs)
    _, lam = lax.scan(back, mu0, (hprev, xs, g_hs), reverse=True)
    return lam


def rebuild_jacobian(step: Callable, spec: JacobianSpec, hprev, xs, params, consts, jconsts):
    """The exact structured Jacobians at the solution, when the forward did not keep them."""
    return linearize(step, spec, hprev, xs, params, consts, jconsts)[1]
