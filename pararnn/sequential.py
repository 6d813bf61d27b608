"""Sequential solves: the reference ``lax.scan``, the fallback loop, and their
sequence-parallel (pipelined) form."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

from .control import match_varying
from .seq_parallel import SeqAxis

__all__ = ["sequential_solve", "sequential_fallback", "prev_states"]


def sequential_solve(step: Callable, h0: jax.Array, xs: Any, params: Any, *consts,
                     seq: SeqAxis | None = None) -> jax.Array:
    """The reference: ``lax.scan`` of ``step`` over time. ``(T, *h0.shape)``.

    With ``seq``, this device's shard, computed by :func:`pipelined`."""
    if seq is not None:
        return pipelined(sequential_fallback, step, h0, xs, params, consts, seq)

    def body(h, x):
        h = step(h, x, params, *consts)
        return h, h

    return lax.scan(body, match_varying(h0, xs, params, consts), xs)[1]


def sequential_fallback(step: Callable, h0: jax.Array, xs: Any, params: Any, *consts,
                        seq: SeqAxis | None = None) -> jax.Array:
    """``sequential_solve`` written as a loop that indexes ``xs`` in place (forward only).

    Under ``vmap`` a ``lax.scan`` over batched ``xs`` first moves time to the front — a
    transpose that does not depend on the loop it sits in, so XLA hoists it out of the
    fallback branch and every converged solve pays for it. Dynamic indexing along the
    time axis needs no transpose, so a fallback that does not run costs nothing.
    """
    if seq is not None:
        return pipelined(sequential_fallback, step, h0, xs, params, consts, seq)
    t = jax.tree_util.tree_leaves(xs)[0].shape[0]
    h_init = match_varying(h0, xs, params, consts)
    out = match_varying(jnp.zeros((t,) + h0.shape, h0.dtype), h_init)

    def body(i, carry):
        h, out = carry
        x = jax.tree_util.tree_map(lambda l: lax.dynamic_index_in_dim(l, i, 0, keepdims=False), xs)
        h = step(h, x, params, *consts)
        return h, lax.dynamic_update_index_in_dim(out, h, i, 0)

    return lax.fori_loop(0, t, body, (h_init, out))[1]


def pipelined(local: Callable, step: Callable, h0: jax.Array, xs: Any, params: Any,
              consts: tuple, seq: SeqAxis) -> jax.Array:
    """A sequential pass over a sequence split across ``seq``'s devices: in round r device r
    runs its shard from the state device r−1 handed on, then passes its last state to
    device r+1. n rounds of the local loop: the depth of one sequential pass over all T
    steps (every device computes in every round; only one round's result is kept)."""
    n, me = seq.size(), seq.index()
    t = jax.tree_util.tree_leaves(xs)[0].shape[0]
    h_in = match_varying(h0, xs, params, consts, me)
    out = match_varying(jnp.zeros((t,) + h0.shape, h0.dtype), h_in)

    def one_round(r, carry):
        h_in, out = carry
        hs = local(step, h_in, xs, params, *consts)
        out = jnp.where(me == r, hs, out)
        handed_on = seq.from_previous(hs[-1], h0)
        return jnp.where(me == r + 1, handed_on, h_in), out

    return lax.fori_loop(0, n, one_round, (h_in, out))[1]


def prev_states(h0: jax.Array, hs: jax.Array, seq: SeqAxis | None = None) -> jax.Array:
    """``hprev[t] = hs[t−1]``, ``hprev[0] = h0`` (with ``seq``: the previous device's last
    state, ``h0`` on device 0)."""
    first = h0 if seq is None else seq.from_previous(hs[-1], h0)
    return jnp.concatenate([first[None], hs[:-1]], axis=0)
