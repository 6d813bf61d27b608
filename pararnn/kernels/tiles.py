"""Register-tile geometry and the small linear algebra the fused kernels run on it.

Every program of a fused kernel owns ``BD`` channels (lanes) of one sequence. Time is cut
into ``C`` chunks of ``L = ceil(T / C)`` steps; position ``p`` of every chunk is processed in
lock-step, so one register tile ``(C, BD)`` holds time steps ``p, p + L, …, p + (C−1)L`` of the
program's channels. A sweep over ``p = 0 … L−1`` therefore advances all chunks at once (L
dependent steps instead of T), and a short sequential pass over the C chunk summaries links
them (C dependent steps). Positions ``t >= T`` of the last chunk(s) are masked.

States are tuples of tiles, one per element of the state's leading shape; Jacobians are tuples
of tiles too: elementwise for diagonal structures, a row-major K×K block for block ones.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple, Sequence

import numpy as np
import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental.pallas import triton as plgpu

__all__ = ["Geometry", "choose_geometry", "Algebra", "Stats", "MAX_TILE_ELEMENTS"]

# Elements of one register tile (C·BD): 4 per thread at 4 warps. The fused Newton sweep keeps
# ~30 tiles live for a diagonal step (more for 2×2 blocks), which fits the 255 registers of a
# thread without spilling at this size (a model, not yet measured on a GPU).
MAX_TILE_ELEMENTS = 512
MAX_LANES = 32


def _pow2_floor(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


@dataclasses.dataclass(frozen=True)
class Geometry:
    """How a program lays out time and channels.

    Attributes:
      length_t: T, the number of time steps.
      chunks: C (a power of two).
      chunk_len: L = ceil(T / C).
      lanes: BD, channels per program (a power of two dividing D).
      channels: D.
    """

    length_t: int
    chunks: int
    chunk_len: int
    lanes: int
    channels: int

    @property
    def programs(self) -> int:
        return self.channels // self.lanes

    def depth(self, sweeps: int = 1) -> int:
        """Dependent steps of ``sweeps`` sweeps plus one chunk link."""
        return sweeps * self.chunk_len + self.chunks


def choose_geometry(length_t: int, channels: int, state_elems: int = 1, *,
                    lanes: int | None = None, chunks: int | None = None) -> Geometry:
    """The default geometry: BD the largest power of two dividing D (at most 32, fewer for
    many-tile states), C the power of two nearest √T (at most ``MAX_TILE_ELEMENTS / BD``),
    so that a sweep's L and the link's C are balanced.

    Args:
      length_t: T.
      channels: D.
      state_elems: tiles per state (K for 2×2 blocks): bigger states get smaller tiles.
      lanes, chunks: overrides (powers of two; ``lanes`` must divide D).
    """
    if lanes is None:
        cap = max(1, MAX_LANES // _pow2_floor(max(1, state_elems)))
        lanes = math.gcd(channels, cap)  # a power of two dividing D
    if lanes < 1 or lanes & (lanes - 1) or channels % lanes:
        raise ValueError(f"lanes must be a power of two dividing D={channels}, got {lanes}.")
    max_chunks = max(1, MAX_TILE_ELEMENTS // (lanes * max(1, _pow2_floor(state_elems))))
    if chunks is None:
        chunks = 1 << max(0, round(math.log2(max(1.0, math.sqrt(length_t)))))
        chunks = min(chunks, _pow2_floor(max_chunks), 1 << max(0, math.ceil(math.log2(length_t))))
    if chunks < 1 or chunks & (chunks - 1):
        raise ValueError(f"chunks must be a power of two, got {chunks}.")
    return Geometry(length_t, chunks, -(-length_t // chunks), lanes, channels)


class Algebra:
    """Linear maps on states of ``n`` tiles: diagonal (elementwise) or one K×K block per
    channel (``n = K``)."""

    def __init__(self, kind: str, n: int):
        self.kind, self.n = kind, n
        self.jac_len = n if kind == "diagonal" else n * n

    def apply(self, a: Sequence, v: Sequence) -> tuple:
        if self.kind == "diagonal":
            return tuple(x * y for x, y in zip(a, v))
        k = self.n
        return tuple(sum(a[i * k + j] * v[j] for j in range(k)) for i in range(k))

    def compose(self, a2: Sequence, a1: Sequence) -> tuple:
        """``A2 A1`` (A1 first)."""
        if self.kind == "diagonal":
            return tuple(x * y for x, y in zip(a2, a1))
        k = self.n
        return tuple(sum(a2[i * k + j] * a1[j * k + l] for j in range(k))
                     for i in range(k) for l in range(k))

    def transpose(self, a: Sequence) -> tuple:
        if self.kind == "diagonal":
            return tuple(a)
        k = self.n
        return tuple(a[j * k + i] for i in range(k) for j in range(k))

    def identity(self, shape, dtype) -> tuple:
        if self.kind == "diagonal":
            return tuple(jnp.ones(shape, dtype) for _ in range(self.n))
        k = self.n
        return tuple(jnp.full(shape, 1.0 if i == j else 0.0, dtype)
                     for i in range(k) for j in range(k))

    def scale(self, c, a: Sequence) -> tuple:
        return tuple(c * x for x in a)

    def from_columns(self, cols: Sequence[Sequence]) -> tuple:
        """The Jacobian from forward-mode columns: ``cols[k][i] = J[i, k]`` (block) or the
        single column of a diagonal Jacobian."""
        if self.kind == "diagonal":
            (col,) = cols
            return tuple(col)
        k = self.n
        return tuple(cols[j][i] for i in range(k) for j in range(k))


def zeros(n: int, shape, dtype) -> tuple:
    return tuple(jnp.zeros(shape, dtype) for _ in range(n))


def where_all(mask, a: Sequence, b: Sequence) -> tuple:
    return tuple(jnp.where(mask, x, y) for x, y in zip(a, b))


def extract_row(tile, c, rows):
    """Row ``c`` of a ``(C, BD)`` tile as ``(1, BD)`` (a masked sum: GPU kernels cannot
    slice registers)."""
    return jnp.sum(jnp.where(rows == c, tile, jnp.zeros_like(tile)), axis=0, keepdims=True)


def link_chunks(alg: Algebra, prods: Sequence, ends: Sequence, first: Sequence, rows,
                chunks: int, *, reverse: bool = False) -> tuple[tuple, tuple]:
    """The states entering and leaving every chunk of a chunked linear recurrence.

    Chunk c maps its entering state ``s`` to ``prods[c] · s + ends[c]`` (its local
    summaries, ``(C, BD)`` tiles). Runs the C-step recurrence of chunk boundaries from
    ``first`` (``(1, BD)``-broadcastable tiles: the state entering chunk 0, or chunk C−1
    when ``reverse``).

    Returns:
      ``(entering, leaving)``: ``(C, BD)`` tiles per state element.
    """
    dt = prods[0].dtype
    shape = prods[0].shape
    zero = zeros(alg.n, shape, dt)

    def body(i, carry):
        s, ent, lea = carry
        c = chunks - 1 - i if reverse else i
        p_row = tuple(extract_row(x, c, rows) for x in prods)
        e_row = tuple(extract_row(x, c, rows) for x in ends)
        out = tuple(a + b for a, b in zip(alg.apply(p_row, s), e_row))
        sel = rows == c
        ent = tuple(jnp.where(sel, x, y) for x, y in zip(s, ent))
        lea = tuple(jnp.where(sel, x, y) for x, y in zip(out, lea))
        return out, ent, lea

    first = tuple(jnp.broadcast_to(f.astype(dt), (1, shape[1])) for f in first)
    _, ent, lea = lax.fori_loop(0, chunks, body, (first, zero, zero))
    return ent, lea


def shift_rows(tiles: Sequence, first: Sequence, rows, chunks: int, *, reverse: bool = False) -> tuple:
    """Row c of the result is row c−1 of ``tiles`` (row c+1 when ``reverse``); the first
    row (the last when ``reverse``) is ``first``: the state entering every chunk from the
    chunk-end states of its predecessors."""
    out0 = tuple(jnp.broadcast_to(f.astype(t.dtype), t.shape) for t, f in zip(tiles, first))

    def body(c, acc):
        src, dst = (c + 1, c) if reverse else (c, c + 1)
        return tuple(jnp.where(rows == dst, extract_row(t, src, rows), a) for t, a in zip(tiles, acc))

    return lax.fori_loop(0, chunks - 1, body, out0)


class Stats(NamedTuple):
    """Running residual statistics of a sweep, as tiles (reduced at the end)."""

    rmax: jax.Array  # max |r|
    rsum: jax.Array  # sum |r|
    hmax: jax.Array  # max |h|
    bad: jax.Array  # count of non-finite residuals

    @staticmethod
    def empty(shape, dtype) -> "Stats":
        z = jnp.zeros(shape, dtype)
        return Stats(z, z, z, z)

    def add(self, r: Sequence, h: Sequence, valid) -> "Stats":
        rmax, rsum, hmax, bad = self
        for ri, hi in zip(r, h):
            a = jnp.abs(ri)
            ok = jnp.isfinite(a)
            a = jnp.where(valid & ok, a, jnp.zeros_like(a))
            ha = jnp.where(valid, jnp.abs(hi.astype(a.dtype)), jnp.zeros_like(a))
            rmax = jnp.maximum(rmax, a)
            rsum = rsum + a
            hmax = jnp.maximum(hmax, jnp.where(jnp.isfinite(ha), ha, jnp.full_like(ha, jnp.inf)))
            bad = bad + jnp.where(valid & ~ok, jnp.ones_like(a), jnp.zeros_like(a))
        return Stats(rmax, rsum, hmax, bad)

    def reduce(self, count: int):
        """``(max residual, mean residual, max |h|)``; both residuals ``inf`` if any entry
        was not finite (as :func:`pararnn.newton_loop.residual_stats`)."""
        inf = jnp.asarray(jnp.inf, self.rmax.dtype)
        finite = jnp.sum(self.bad) == 0
        res = jnp.where(finite, jnp.max(self.rmax), inf)
        mean = jnp.where(finite, jnp.sum(self.rsum) / count, inf)
        return res, mean, jnp.max(self.hmax)


class Loader:
    """Loads and stores of one program's tiles.

    Per-step channel operands ``(T, *lead, D)`` load ``(C, BD)`` tiles at time ``p + L·row``
    (clamped to T−1; masked values are never used); shared per-step operands load ``(C, 1)``;
    static channel operands load ``(BD,)`` once; static shared ones scalars.
    """

    def __init__(self, geom: Geometry):
        self.g = geom
        c, bd = geom.chunks, geom.lanes
        self.rows = lax.broadcasted_iota(jnp.int32, (c, 1), 0)
        self.lanes = lax.broadcasted_iota(jnp.int32, (1, bd), 1)
        self.shape = (c, bd)

    def times(self, p):
        """``(t, t_clamped, valid)`` of position ``p`` in every chunk: ``(C, 1)``,
        ``(C, 1)``, ``(C, BD)``."""
        t = p + self.g.chunk_len * self.rows
        return t, jnp.minimum(t, self.g.length_t - 1), jnp.broadcast_to(t < self.g.length_t, self.shape)

    def load_step(self, ref, lead: tuple[int, ...], channel: bool, tc) -> list:
        out = []
        for idx in np.ndindex(*lead):
            idx = tuple(int(i) for i in idx)
            if channel:
                out.append(ref[(tc, *idx, self.lanes)])
            else:
                out.append(ref[(tc, *idx)] if idx else ref[tc])
        return out

    def store_step(self, ref, lead: tuple[int, ...], tiles: Sequence, t, valid) -> None:
        for idx, tile in zip(np.ndindex(*lead), tiles):
            idx = tuple(int(i) for i in idx)
            plgpu.store(ref.at[(t, *idx, self.lanes)], tile.astype(ref.dtype), mask=valid)

    @staticmethod
    def load_static(ref, lead: tuple[int, ...], channel: bool, scalar: bool) -> list:
        out = []
        if scalar:
            return [ref[0]]
        for idx in np.ndindex(*lead):
            idx = tuple(int(i) for i in idx)
            out.append(ref[(*idx, slice(None))] if channel else ref[idx])
        return out


def channel_spec(shape: Sequence[int], lanes: int, length_t: int | None = None):
    """BlockSpec of a channel-last operand ``(*shape)`` (or ``(T, *shape)`` when
    ``length_t`` is given): program j sees channels ``[j·BD, (j+1)·BD)``."""
    from jax.experimental import pallas as pl

    blk = ((length_t,) if length_t is not None else ()) + tuple(shape[:-1]) + (lanes,)
    nd = len(blk)
    return pl.BlockSpec(blk, lambda j: (0,) * (nd - 1) + (j,))


def whole_spec(shape: Sequence[int]):
    """BlockSpec of an operand every program reads whole."""
    from jax.experimental import pallas as pl

    nd = len(shape)
    return pl.BlockSpec(tuple(shape), lambda j: (0,) * nd)


def operand_specs(plan, statics, x_arrays, lanes: int, length_t: int) -> list:
    """BlockSpecs of a kernel's leading operands: the initial state, the parameter and
    constant leaves (``statics``), then the per-step input leaves (``x_arrays``) — per channel
    tile where a leaf carries the channel axis, whole otherwise."""
    specs = [channel_spec(plan.state_shape, lanes)]
    for arr, op in zip(statics, plan.s_operands):
        specs.append(channel_spec(op.shape, lanes) if op.channel else whole_spec(arr.shape))
    for arr, op in zip(x_arrays, plan.x_operands):
        specs.append(channel_spec(op.shape, lanes, length_t) if op.channel else whole_spec(arr.shape))
    return specs


def chunked_scan(ld: "Loader", alg: Algebra, provider, first: Sequence, store, *,
                 reverse: bool, dtype) -> None:
    """A linear recurrence ``s ← A s + b`` over all positions of the program's chunks.

    Sweep 1 runs every chunk from zero and keeps its summary (product of its ``A`` and its
    local end state); :func:`link_chunks` turns the summaries into the state entering every
    chunk, starting from ``first``; sweep 2 reruns every chunk from its entering state and
    calls ``store(t, states, valid)``. Depth ``2L + C``; ``provider`` is evaluated twice per
    position (recomputing beats storing and re-reading the products: same traffic, no
    scratch buffer).

    Args:
      provider: ``provider(p) -> (t, valid, A, b)`` for position ``p`` of every chunk: ``t``
        ``(C, 1)`` times, ``valid`` ``(C, BD)``, ``A`` a tuple of ``alg.jac_len`` tiles and
        ``b`` of ``alg.n`` tiles (already masked by the caller where needed).
      first: the state entering the first chunk (the last one when ``reverse``).
      store: ``store(t, states, valid)``.
      reverse: run from t = T−1 down to 0.
    """
    g = ld.g
    shape = ld.shape
    length = g.chunk_len

    def pos(i):
        return length - 1 - i if reverse else i

    def local(i, carry):
        s, prod = carry
        _, _, a, b = provider(pos(i))
        s = tuple(x + y for x, y in zip(alg.apply(a, s), b))
        return s, alg.compose(a, prod)

    zero = tuple(jnp.zeros(shape, dtype) for _ in range(alg.n))
    ends, prods = lax.fori_loop(0, length, local, (zero, alg.identity(shape, dtype)))
    entering, _ = link_chunks(alg, prods, ends, first, ld.rows, g.chunks, reverse=reverse)

    def final(i, s):
        t, valid, a, b = provider(pos(i))
        s = tuple(x + y for x, y in zip(alg.apply(a, s), b))
        store(t, s, valid)
        return s

    lax.fori_loop(0, length, final, entering)
