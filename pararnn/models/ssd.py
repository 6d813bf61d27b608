"""The selective state-space recurrence of Mamba2 (SSD: one scalar decay per head), three ways.

For every head h the state ``S (P, N)`` follows

    S_t = exp(dt_t · A) · S_{t−1} + dt_t · x_t ⊗ B_t,        y_t = S_t C_t

with ``x_t (P,)`` the head's values, ``B_t, C_t (N,)`` shared by all heads (one group),
``dt_t > 0`` the head's step size and ``A < 0`` its decay rate. Shapes (batch-first):
``x_BxTxHxP``, ``dt_BxTxH``, ``A_H``, ``B_BxTxN``, ``C_BxTxN``, state ``S_BxHxPxN``. Every
function returns ``(y_BxTxHxP, final_state_BxHxPxN)`` and computes in float32 or wider (the
exponentials and long sums are not trusted to half precision).

- :func:`ssd_sequential`: a ``lax.scan`` over time, O(1) memory per step — decoding.
- :func:`ssd_scan`: the state recurrence as one diagonal :func:`pararnn.linear_recurrence`
  over all ``H·P·N`` state entries: O(T·H·P·N) memory (every state is materialised).
- :func:`ssd_chunked`: the chunked matrix form of Mamba2 (SSD): inside chunks of length Q a
  masked, decay-weighted ``(C Bᵀ)`` matmul (quadratic in Q, like attention), across chunks
  the recurrence of the chunk-end states by :func:`pararnn.linear_recurrence` — O(T·Q·H +
  (T/Q)·H·P·N) memory, mostly matmuls.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..scan import linear_recurrence

__all__ = ["ssd_sequential", "ssd_scan", "ssd_chunked", "SSD_ALGORITHMS"]

SSD_ALGORITHMS = ("chunked", "scan")


def _compute_dtype(*arrays) -> jnp.dtype:
    with jax.numpy_dtype_promotion("standard"):
        dtype = jnp.result_type(*arrays)
    return jnp.promote_types(dtype, jnp.float32)


def _prepare(x, dt, A, B, C, h0):
    dtype = _compute_dtype(x, dt, A, B, C)
    x, dt, A, B, C = (v.astype(dtype) for v in (x, dt, A, B, C))
    batch, _, heads, p = x.shape
    if h0 is None:
        h0 = jnp.zeros((batch, heads, p, B.shape[-1]), dtype)
    return x, dt, A, B, C, h0.astype(dtype)


def ssd_sequential(x, dt, A, B, C, h0=None):
    """The recurrence one step at a time (``lax.scan``); see the module docstring."""
    x, dt, A, B, C, h0 = _prepare(x, dt, A, B, C, h0)

    def body(state, inputs):
        x_t, dt_t, b_t, c_t = inputs  # (B, H, P), (B, H), (B, N), (B, N)
        decay = jnp.exp(dt_t * A)[..., None, None]
        state = decay * state + (dt_t[..., None] * x_t)[..., None] * b_t[:, None, None, :]
        return state, jnp.einsum("bhpn,bn->bhp", state, c_t)

    time_major = [jnp.swapaxes(v, 0, 1) for v in (x, dt, B, C)]
    final, ys = jax.lax.scan(body, h0, time_major)
    return jnp.swapaxes(ys, 0, 1), final


def ssd_scan(x, dt, A, B, C, h0=None, *, algorithm: str = "auto"):
    """Every state entry as a diagonal linear recurrence (:func:`pararnn.linear_recurrence`)."""
    x, dt, A, B, C, h0 = _prepare(x, dt, A, B, C, h0)
    batch, t, heads, p = x.shape
    n = B.shape[-1]
    decay = jnp.broadcast_to(jnp.exp(dt * A)[..., None, None], (batch, t, heads, p, n))
    inputs = (dt[..., None] * x)[..., None] * B[:, :, None, None, :]  # (B, T, H, P, N)
    flat = lambda v: v.reshape(v.shape[:2] + (heads * p * n,))
    solve = lambda a, b, s0: linear_recurrence(a, b, s0, structure="diagonal", algorithm=algorithm)
    states = jax.vmap(solve)(flat(decay), flat(inputs), h0.reshape(batch, -1))
    states = states.reshape(batch, t, heads, p, n)
    y = jnp.einsum("bthpn,btn->bthp", states, C)
    return y, states[:, -1]


def ssd_chunked(x, dt, A, B, C, h0=None, *, chunk: int = 64, algorithm: str = "auto"):
    """The chunked matrix (SSD) form; ``chunk`` is the chunk length Q (T is padded up to a
    multiple of it with identity steps: dt = 0, x = 0)."""
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"ssd_chunked: chunk must be a positive int, got {chunk!r}.")
    x, dt, A, B, C, h0 = _prepare(x, dt, A, B, C, h0)
    batch, t, heads, p = x.shape
    n = B.shape[-1]
    q = min(chunk, t)
    nc = -(-t // q)
    pad = nc * q - t
    if pad:
        padding = lambda v: jnp.pad(v, [(0, 0), (0, pad)] + [(0, 0)] * (v.ndim - 2))
        x, dt, B, C = (padding(v) for v in (x, dt, B, C))
    # chunked views: (batch, chunk, position in chunk, ...)
    xc = x.reshape(batch, nc, q, heads, p)
    dtc = dt.reshape(batch, nc, q, heads)
    bc = B.reshape(batch, nc, q, n)
    cc = C.reshape(batch, nc, q, n)
    log_decay = dtc * A  # (b, c, q, h), ≤ 0
    cum = jnp.cumsum(log_decay, axis=2)  # log of the decay from the chunk start through step i
    # within chunks: y_i = Σ_{j≤i} (C_i·B_j) exp(cum_i − cum_j) dt_j x_j
    diff = cum[:, :, :, None, :] - cum[:, :, None, :, :]  # (b, c, i, j, h)
    causal = jnp.tril(jnp.ones((q, q), bool))[None, None, :, :, None]
    # mask before exp: above the diagonal cum_i − cum_j > 0 could overflow
    weights = jnp.exp(jnp.where(causal, diff, -jnp.inf))
    scores = jnp.einsum("bcin,bcjn->bcij", cc, bc)[..., None] * weights  # (b, c, i, j, h)
    dx = dtc[..., None] * xc  # (b, c, q, h, p)
    y_intra = jnp.einsum("bcijh,bcjhp->bcihp", scores, dx)
    # each chunk's own contribution to its end state: Σ_j exp(cum_last − cum_j) dt_j x_j ⊗ B_j
    to_end = jnp.exp(cum[:, :, -1:, :] - cum)  # (b, c, q, h)
    chunk_states = jnp.einsum("bcjh,bcjhp,bcjn->bchpn", to_end, dx, bc)
    # across chunks: S_c = exp(Σ log_decay over chunk c) S_{c−1} + chunk_states_c
    chunk_decay = jnp.broadcast_to(jnp.exp(cum[:, :, -1, :])[..., None, None], chunk_states.shape)
    flat = lambda v: v.reshape(batch, nc, heads * p * n)
    solve = lambda a, b, s0: linear_recurrence(a, b, s0, structure="diagonal", algorithm=algorithm)
    ends = jax.vmap(solve)(flat(chunk_decay), flat(chunk_states), h0.reshape(batch, -1))
    ends = ends.reshape(batch, nc, heads, p, n)
    entering = jnp.concatenate([h0[:, None], ends[:, :-1]], axis=1)  # state entering each chunk
    # the entering state's share of y_i: exp(cum_i) (S_entering C_i)
    y_inter = jnp.einsum("bchpn,bcin,bcih->bcihp", entering, cc, jnp.exp(cum))
    y = (y_intra + y_inter).reshape(batch, nc * q, heads, p)[:, :t]
    return y, ends[:, -1]
