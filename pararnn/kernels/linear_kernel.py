"""``linear_recurrence(..., algorithm="fused")``: ``h_t = A_t h_{t−1} + b_t`` in one kernel.

Each program owns BD channels of one sequence and runs
:func:`pararnn.kernels.tiles.chunked_scan`: a local sweep over its C chunks in lock-step, the
C-step link of chunk summaries, and a second sweep that writes the states. It reads ``a`` and
``b`` twice and writes ``h`` once (5 arrays' worth of traffic for diagonal A, against a floor
of 3), with a depth of ``2L + C`` dependent steps; no intermediate array touches memory.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from ..structure import BLOCK, DIAGONAL, Structure
from .dispatch import KernelOptions, pallas_on_every_platform
from .layout import fits_registers
from .tiles import Algebra, Loader, channel_spec, choose_geometry, chunked_scan

__all__ = ["fused_linear_recurrence"]


def fused_linear_recurrence(a: jax.Array, b: jax.Array, h0: jax.Array, *, structure: Structure,
                            reverse: bool = False, out_dtype=None, lanes: int | None = None,
                            chunks: int | None = None,
                            options: KernelOptions = KernelOptions()) -> jax.Array:
    """All states of ``h_t = A_t h_{t−1} + b_t`` (``h_t = A_t h_{t+1} + b_t`` when
    ``reverse``, with ``h_T ≡ h0``). Differentiable in reverse mode (the cotangent solves the
    transposed recurrence with the same kernel).

    Args:
      a: ``(T, *S)`` for DIAGONAL, ``(T, N, K, K)`` for BLOCK (state ``S = (K, N)``).
      b: ``(T, *S)``; h0: ``S`` (at least one axis: the last is the channel axis).
      out_dtype: the result dtype (default: promoted from the inputs); computed in float32
        at least.
    """
    out_dtype = jnp.dtype(out_dtype or jnp.result_type(a, b, h0))
    return _differentiable(structure, reverse, out_dtype, lanes, chunks, options)(a, b, h0)


def _differentiable(structure, reverse, out_dtype, lanes, chunks, options):
    def run(a, b, h0, rev=reverse, dtype=out_dtype):
        return _fused(a, b, h0, structure=structure, reverse=rev, out_dtype=dtype, lanes=lanes,
                      chunks=chunks, options=options)

    @jax.custom_vjp
    def f(a, b, h0):
        return run(a, b, h0)

    def fwd(a, b, h0):
        hs = run(a, b, h0)
        return hs, (a, b, h0, hs)

    def bwd(res, g):
        # h_t = A_t h_prev(t) + b_t  ⇒  λ_t = g_t + A_next(t)ᵀ λ_next(t), run the other way;
        # then ∂b_t = λ_t, ∂A_t = λ_t ⊗ h_prev(t), ∂h0 = A_firstᵀ λ_first.
        a, b, h0, hs = res
        at = structure.transpose(a)
        zero = jnp.zeros_like(at[:1])
        if reverse:  # prev(t) = t + 1, next(t) = t − 1
            coef = jnp.concatenate([zero, at[:-1]], 0)
            hprev = jnp.concatenate([hs[1:], h0[None].astype(hs.dtype)], 0)
        else:
            coef = jnp.concatenate([at[1:], zero], 0)
            hprev = jnp.concatenate([h0[None].astype(hs.dtype), hs[:-1]], 0)
        lam = run(coef, g, jnp.zeros_like(h0), rev=not reverse,
                  dtype=jnp.result_type(g.dtype, jnp.float32))
        hprev = hprev.astype(lam.dtype)
        if structure is BLOCK:  # state (K, N), A (N, K, K): ∂A[n, i, j] = λ[i, n] h[j, n]
            d_a = jnp.einsum("tin,tjn->tnij", lam, hprev)
        else:
            d_a = lam * hprev
        edge = lam[-1] if reverse else lam[0]
        a_edge = a[-1] if reverse else a[0]
        d_h0 = structure.apply(structure.transpose(a_edge).astype(lam.dtype), edge)
        return d_a.astype(a.dtype), lam.astype(b.dtype), d_h0.astype(h0.dtype)

    f.defvjp(fwd, bwd)
    return f


def _fused(a, b, h0, *, structure, reverse, out_dtype, lanes, chunks, options):
    if structure is not DIAGONAL and structure is not BLOCK:
        raise ValueError(f"algorithm='fused' supports structure 'diagonal' and 'block', got "
                         f"{structure.name!r}; use 'tree' or 'chunked' for dense recurrences.")
    if h0.ndim == 0:
        raise ValueError("algorithm='fused' needs h0 with at least one (channel) axis, got a "
                         "scalar; reshape it to (1,).")
    if not fits_registers(structure, tuple(h0.shape)):
        raise ValueError(f"algorithm='fused': a state of shape {list(h0.shape)} does not fit the "
                         f"kernel's registers; use algorithm='tree' or 'chunked'.")
    t = b.shape[0]
    state = tuple(h0.shape)
    cdt = jnp.dtype(jnp.float64) if out_dtype == jnp.float64 else jnp.dtype(jnp.float32)
    lead, d = state[:-1], state[-1]
    if structure is BLOCK:
        k = state[0]
        alg = Algebra("block", k)
        geom = choose_geometry(t, d, k, lanes=lanes, chunks=chunks)
    else:
        n = 1
        for s in lead:
            n *= s
        alg = Algebra("diagonal", n)
        geom = choose_geometry(t, d, n, lanes=lanes, chunks=chunks)
    bd = geom.lanes

    def kernel(a_ref, b_ref, h0_ref, out_ref):
        ld = Loader(geom)
        h0_tiles = Loader.load_static(h0_ref, lead, True, False)
        first = tuple(x.astype(cdt)[None, :] for x in h0_tiles)

        def provider(p):
            t_, tc, valid = ld.times(p)
            if structure is BLOCK:
                a_t = tuple(a_ref[(tc, ld.lanes, i, j)] for i in range(k) for j in range(k))
            else:
                a_t = tuple(ld.load_step(a_ref, lead, True, tc))
            b_t = tuple(ld.load_step(b_ref, lead, True, tc))
            ident = alg.identity(ld.shape, cdt)
            # identity and zero after the end: the reverse recurrence passes h0 through them
            a_t = tuple(jnp.where(valid, x.astype(cdt), i) for x, i in zip(a_t, ident))
            b_t = tuple(jnp.where(valid, x.astype(cdt), jnp.zeros(ld.shape, cdt)) for x in b_t)
            return t_, valid, a_t, b_t

        def store(t_, h, valid):
            ld.store_step(out_ref, lead, h, t_, valid)

        chunked_scan(ld, alg, provider, first, store, reverse=reverse, dtype=cdt)

    if structure is BLOCK:
        a_spec = pl.BlockSpec((t, bd, k, k), lambda j: (0, j, 0, 0))
    else:
        a_spec = channel_spec(state, bd, t)
    run = pallas_on_every_platform(
        lambda gpu: kernel, grid=(geom.programs,),
        in_specs=[a_spec, channel_spec(state, bd, t), channel_spec(state, bd)],
        out_specs=channel_spec(state, bd, t),
        out_shape=jax.ShapeDtypeStruct((t,) + state, out_dtype),
        name="pararnn_fused_linear_recurrence", options=options)
    return run(a, b, h0)
