"""Sequence parallelism: one recurrence split along time across the devices of a mesh axis.

Inside :func:`jax.shard_map`, device ``i`` of mesh axis ``name`` (in axis-index order) holds
steps ``[i·L, (i+1)·L)`` of a sequence of ``n·L`` steps. A linear recurrence
``h_t = A_t h_{t−1} + b_t`` is affine in the state entering a shard, so each device solves
its shard from a zero state (``e``, the local solution) and forms the product ``P`` of its
Jacobians; the devices exchange these summaries — O(D) for diagonal, O(N·K²) for block,
O(D²) for dense Jacobians per device, never O(T) — each folds the summaries of the devices
before it into the state entering its own shard, and adds that state's contribution
``(A_t ⋯ A_first) h_in`` with a second local solve. The Newton iteration then only adds, per
iteration, one exchange of the last state (each device's first step needs the previous
device's last one) and global reductions of the residual.

Nothing here knows about Newton: :mod:`pararnn.newton_loop` and :mod:`pararnn.newton` take a
:class:`SeqAxis` and use its methods in place of their single-device counterparts.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

from .control import match_varying, to_varying
from .structure import Structure

__all__ = ["SeqAxis", "sharded_linear_recurrence", "total_product"]


@dataclasses.dataclass(frozen=True)
class SeqAxis:
    """The mesh axis a sequence is split over (usable only inside ``shard_map``)."""

    name: str

    def size(self) -> int:
        return lax.axis_size(self.name)

    def index(self) -> jax.Array:
        return lax.axis_index(self.name)

    def from_previous(self, x: jax.Array, first: jax.Array) -> jax.Array:
        """What the previous device passes on: its ``x``; device 0 gets ``first``."""
        n = self.size()
        got = lax.ppermute(x, self.name, [(i, i + 1) for i in range(n - 1)])
        return jnp.where(self.index() == 0, first, got)

    def from_next(self, x: jax.Array, last: jax.Array) -> jax.Array:
        """What the next device passes back: its ``x``; the last device gets ``last``."""
        n = self.size()
        got = lax.ppermute(x, self.name, [(i + 1, i) for i in range(n - 1)])
        return jnp.where(self.index() == n - 1, last, got)

    def max(self, x: jax.Array) -> jax.Array:
        return lax.pmax(x, self.name)

    def sum(self, x: jax.Array) -> jax.Array:
        return lax.psum(x, self.name)

    def all(self, x: jax.Array) -> jax.Array:
        return lax.pmin(x.astype(jnp.int32), self.name).astype(bool)

    def any(self, x: jax.Array) -> jax.Array:
        return lax.pmax(x.astype(jnp.int32), self.name).astype(bool)

    def any_device(self, x: jax.Array) -> jax.Array:
        """``x`` on any device of the enclosing ``shard_map`` — over *every* manual mesh axis,
        not only this one. Control flow around a collective must be the same on all devices
        (a collective waits for all of them): on a (data, seq) mesh two data groups whose
        solves converge at different iterations would otherwise deadlock. Loops run while
        any device needs them, and each device keeps only the updates it needs."""
        axes = tuple(jax.sharding.get_abstract_mesh().manual_axes) or (self.name,)
        flag = to_varying(x.astype(jnp.int32), axes)
        return lax.pmax(flag, axes).astype(bool)


def total_product(st: Structure, a: jax.Array) -> jax.Array:
    """``A_{T−1} ⋯ A_1 A_0`` of ``a`` ``(T, *jacobian_shape)``, by a pairwise tree reduction
    (log2 T levels of batched composes; O(T) work, no T-long prefix array)."""
    while a.shape[0] > 1:
        if a.shape[0] % 2:
            a = jnp.concatenate([a, st.identity_like(a[:1])], 0)
        pairs = a.reshape((a.shape[0] // 2, 2) + a.shape[1:])
        a = st.compose(pairs[:, 1], pairs[:, 0])  # the later one applies second
    return a[0]


def sharded_linear_recurrence(st: Structure, a: jax.Array, b: jax.Array, h0: jax.Array,
                              seq: SeqAxis, *, reverse: bool, local_solve) -> jax.Array:
    """The shard of ``h_t = A_t h_{t−1} + b_t`` this device holds (``reverse``:
    ``h_t = A_t h_{t+1} + b_t``, entering from the end of the whole sequence).

    Args:
      a, b: this device's ``(L, *jacobian_shape)`` and ``(L, *S)``.
      h0: the state entering the whole sequence (before its first step, or after its last
        when ``reverse``); the same on every device.
      local_solve: ``local_solve(a, b, h_in, reverse)``, the single-device linear solve.
    """
    e = local_solve(a, b, jnp.zeros_like(h0), reverse)  # the shard's solution from zero
    prod = total_product(st, jnp.flip(a, 0) if reverse else a)
    end = e[0] if reverse else e[-1]
    # Every device learns every summary (n × (P, end): the O(D)-per-device exchange) and
    # folds those of the devices that come before it in the direction of the recurrence.
    prods = lax.all_gather(prod, seq.name)
    ends = lax.all_gather(end, seq.name)
    n, me = seq.size(), seq.index()
    order = range(n - 1, -1, -1) if reverse else range(n)
    state, entering = match_varying(h0.astype(e.dtype), e), jnp.zeros_like(h0, e.dtype)
    for j in order:  # n is small and static: an unrolled fold, cheaper than a scan
        entering = jnp.where(me == j, state, entering)
        state = st.apply(prods[j], state) + ends[j]
    # The entering state's contribution: the homogeneous recurrence started from it.
    return e + local_solve(a, jnp.zeros_like(b), entering.astype(b.dtype), reverse)
