"""pLSTM on a 2D grid, wavefront-parallel over anti-diagonals.

Each cell (i, j) has two outgoing edges: direction 0 to (i+1, j), direction 1 to (i, j+1).
Its incoming edge of direction 0 comes from (i−1, j), of direction 1 from (i, j−1):
``C[i,j,o] = Σ_a T[i,j,o,a]·Cin[i,j,a] + S[i,j,o]·k⊗v`` and
``H[i,j] = Σ_a M[i,j,a]·(q·Cin[i,j,a]) + D[i,j]·(q·k)·v``.

All cells on one anti-diagonal d = i + j depend only on diagonal d − 1, so a ``lax.scan``
over the X+Y−1 diagonals updates each whole diagonal's states in parallel (depth X+Y−1,
work O(X·Y·H·dk·dv)). Inputs are "skewed" once by a static gather into (X+Y−1, X)
diagonal layout, with the gates of out-of-grid slots zeroed so they carry zero state.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._checks import check_kernel_args, einsum

__all__ = ["plstm_2d"]


def _skew(a: jax.Array) -> jax.Array:
    """(X, Y, ...) → (X+Y−1, X, ...) with out[d, i] = a[i, d − i], zero where d − i is
    outside [0, Y). Pads and reshapes only (row i shifted by i), no gather: cheap, and its
    transpose is a slice."""
    X, Y = a.shape[:2]
    rest = a.shape[2:]
    b = jnp.pad(a, [(0, 0), (0, X)] + [(0, 0)] * len(rest)).reshape(X * (X + Y), *rest)
    b = b[:X * (X + Y - 1)].reshape(X, X + Y - 1, *rest)
    return jnp.moveaxis(b, 1, 0)


def _unskew(s: jax.Array, y: int) -> jax.Array:
    """Inverse of :func:`_skew`: (X+Y−1, X, ...) → (X, Y, ...), a[i, j] = s[i + j, i]."""
    D, X = s.shape[:2]
    rest = s.shape[2:]
    t = jnp.moveaxis(s, 0, 1).reshape(X * D, *rest)
    t = jnp.pad(t, [(0, X)] + [(0, 0)] * len(rest)).reshape(X, D + 1, *rest)
    return t[:, :y]


def plstm_2d(q: jax.Array, k: jax.Array, v: jax.Array, source: jax.Array, transition: jax.Array,
             mark: jax.Array, direct: jax.Array) -> jax.Array:
    """pLSTM over an X×Y grid.

    q, k (X, Y, H, dk); v (X, Y, H, dv); source (X, Y, 2, H) for the outgoing edge of
    direction o; transition (X, Y, 2, 2, H) [i, j, o, a] from incoming direction a to outgoing
    direction o; mark (X, Y, 2, H) for the incoming edge of direction a; direct (X, Y, H).
    Missing boundary edges carry zero state. Returns (X, Y, H, dv).

    Batch with a single ``jax.vmap`` (merge batch axes first): the gradient of a nested
    ``vmap(vmap(plstm_2d))`` with a total batch >= 16 segfaults on XLA:CPU in jaxlib 0.10.2.
    """
    if q.ndim != 4:
        raise ValueError(f"plstm_2d: q must have shape (X, Y, H, dk), got {q.shape}.")
    X, Y = q.shape[:2]
    gates = dict(source=source, transition=transition, mark=mark, direct=direct)
    _, H, dk, dv, dtype = check_kernel_args(
        "plstm_2d", (X, Y), q, k, v, gates,
        dict(source=(X, Y, 2, "H"), transition=(X, Y, 2, 2, "H"), mark=(X, Y, 2, "H"),
             direct=(X, Y, "H")))
    kv = einsum("xyhd,xyhv->xyhdv", k, v)
    xs = tuple(map(_skew, (q, kv, source, transition, mark)))  # out-of-grid slots: zero

    def step(prev, inp):
        # prev (X, 2, H, dk, dv): outgoing states of diagonal d−1, indexed by i
        qd, kvd, sd, td, md = inp
        from_up = jnp.concatenate([jnp.zeros_like(prev[:1, 0]), prev[:-1, 0]])  # C[i−1, j, 0]
        cin = jnp.stack([from_up, prev[:, 1]], axis=1)  # (X, 2=a, H, dk, dv)
        # the 2×2 transition and the marks as broadcast multiply-adds: dots with a
        # contraction of size 2 are slower on CPU than fused elementwise products
        t = td[..., None, None]  # (X, 2=o, 2=a, H, 1, 1)
        new = t[:, :, 0] * cin[:, None, 0] + t[:, :, 1] * cin[:, None, 1]
        read = md[..., None, None] * cin  # (X, 2=a, H, dk, dv)
        out = jnp.sum(qd[..., None] * (read[:, 0] + read[:, 1]), axis=-2)
        return new + sd[..., None, None] * kvd[:, None], out

    init = jnp.zeros((X, 2, H, dk, dv), dtype)
    _, outs = jax.lax.scan(step, init, xs)  # (X+Y−1, X, H, dv)
    return _unskew(outs, Y) + (direct * jnp.sum(q * k, axis=-1))[..., None] * v
