"""pLSTM on a sequence (the chain t → t+1), chunkwise parallel.

State on edge t→t+1: ``C_t = T_t·C_{t−1} + S_t·k_t⊗v_t`` (H, dk, dv); output
``H_t = M_t·(q_t·C_{t−1}) + D_t·(q_t·k_t)·v_t``. Unrolled, with ``G[t, s] = Π_{s<r<t} T_r``:
``H_t = M_t Σ_{s<t} G[t, s]·S_s·(q_t·k_s)·v_s + D_t (q_t·k_t) v_t`` — linear attention with a
scalar (per head) decay.

Scheme: split the sequence into chunks of L steps. Inside a chunk, the quadratic form above
(an L×L decay matrix per head built with cumulative *products* — never log/exp or division,
so zero and negative transitions are exact); across chunks an associative scan over the
per-chunk (decay, state) pairs, O(T/L·H·dk·dv) memory; then each chunk reads its entering
state. Work O(T·L·(dk+dv) + T·dk·dv) per head, depth O(log(T/L)).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._checks import check_kernel_args, einsum

__all__ = ["plstm_1d"]


def plstm_1d(q: jax.Array, k: jax.Array, v: jax.Array, source: jax.Array, transition: jax.Array,
             mark: jax.Array, direct: jax.Array, *, chunk_size: int = 64) -> jax.Array:
    """pLSTM over a chain of T nodes.

    q, k (T, H, dk); v (T, H, dv); source, transition, mark, direct (T, H), indexed by node:
    ``source[t]`` feeds edge t→t+1, ``transition[t]`` maps edge (t−1→t) to (t→t+1),
    ``mark[t]`` reads edge (t−1→t) at node t (so ``transition[0]``, ``mark[0]`` and
    ``source[T−1]`` are unused). Returns (T, H, dv). ``chunk_size`` trades the O(L²)
    in-chunk form against the length of the cross-chunk scan; results do not depend on it
    beyond rounding.
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"plstm_1d: chunk_size must be a positive int, got {chunk_size!r}.")
    gates = dict(source=source, transition=transition, mark=mark, direct=direct)
    T = q.shape[0] if q.ndim == 3 else None
    if T is None:
        raise ValueError(f"plstm_1d: q must have shape (T, H, dk), got {q.shape}.")
    (T,), H, dk, dv, dtype = check_kernel_args(
        "plstm_1d", (T,), q, k, v, gates, {g: (T, "H") for g in gates})
    L = min(chunk_size, T)
    n = -(-T // L)
    pad = n * L - T

    def chunks(a):  # zero padding at the end never influences earlier outputs
        a = jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1))
        return a.reshape(n, L, *a.shape[1:])

    qc, kc, vc = chunks(q), chunks(k), chunks(v)
    S, Tr, M, D = (jnp.moveaxis(chunks(g), 2, 1) for g in (source, transition, mark, direct))
    # S, Tr, M, D: (n, H, L)

    # cp[c, h, s, r] = Π_{s<r'≤r} T_{r'} (1 for r ≤ s): cumulative product of a masked copy
    idx = jnp.arange(L)
    later = idx[None, :] > idx[:, None]  # [s, r]: r > s
    cp = jnp.cumprod(jnp.where(later, Tr[:, :, None, :], jnp.ones((), dtype)), axis=-1)
    # G[t, s] = Π_{s<r<t} T_r = cp[s, t−1] for t > s, else 0
    cpT = jnp.swapaxes(cp, -1, -2)  # [t, s] = Π_{s<r≤t}
    G = jnp.pad(cpT[..., :-1, :], [(0, 0), (0, 0), (1, 0), (0, 0)])
    G = jnp.where(idx[:, None] > idx[None, :], G, jnp.zeros((), dtype))

    scores = einsum("cthd,cshd->chts", qc, kc)
    w = M[..., :, None] * G * S[..., None, :] * scores
    out = einsum("chts,cshv->cthv", w, vc)
    diag = einsum("cthd,cthd->cht", qc, kc) * D
    out = out + jnp.swapaxes(diag, 1, 2)[..., None] * vc

    # state leaving each chunk from its own sources, and the chunk's total decay
    to_end = cpT[..., -1, :] * S  # (n, H, L): Π_{s<r≤L−1} T_r · S_s
    local = einsum("chs,cshd,cshv->chdv", to_end, kc, vc)
    decay = cp[..., 0, :]  # Π_{0<r≤t} (excludes T_0) -> need Π_{0≤r≤t}
    decay_all = decay[..., -1] * Tr[..., 0]  # (n, H): Π over the whole chunk

    def combine(x, y):  # (a1, B1) then (a2, B2): (a2 a1, a2 B1 + B2)
        return y[0] * x[0], y[0][..., None, None] * x[1] + y[1]

    _, inclusive = jax.lax.associative_scan(combine, (decay_all, local))
    entering = jnp.concatenate([jnp.zeros_like(inclusive[:1]), inclusive[:-1]])  # (n, H, dk, dv)
    # decay from the chunk start to edge (t−1→t): Π_{0≤r<t} T_r = T_0 · cp[0, t−1] (1 at t=0)
    from_start = jnp.concatenate(
        [jnp.ones_like(Tr[..., :1]), Tr[..., :1] * decay[..., :-1]], axis=-1)  # (n, H, L)
    inter = einsum("cthd,chdv->cthv", qc, entering)
    out = out + jnp.swapaxes(M * from_start, 1, 2)[..., None] * inter
    return out.reshape(n * L, H, dv)[:T]
