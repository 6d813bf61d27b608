"""The two stabilised modes of pLSTM.

- P-mode (directed propagation): the transitions leaving through one node are rescaled so that,
  for every incoming edge, the absolute values of its transitions into the outgoing edges sum
  to at most 1: ``T ← T / max(1, Σ_{e_out} |T_{(e_in, e_out)}|)``. A source's contribution is
  then split (not copied) among the paths, so the total weight of all paths of one length
  from a source is ≤ 1 and states cannot grow exponentially with the graph's width.
- D-mode (diffusive distribution): the line graph is pruned to a multitree (every edge keeps at
  most one incoming transition) and |T| ≤ 1 (tanh), so each state is a single decaying path
  sum, like a 1D linear RNN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .graph import Graph

__all__ = ["p_mode_transitions", "p_mode_grid", "d_mode_grid_mask", "d_mode_transitions"]


def _safe_scale(total: jax.Array) -> jax.Array:
    return jnp.maximum(total, jnp.ones((), total.dtype))


def p_mode_transitions(graph: Graph, transition: jax.Array) -> jax.Array:
    """transition (P, H) for ``graph.line_edges`` → P-mode transitions (P, H): for every
    ``e_in``, Σ_{e_out} |T| ≤ 1."""
    if graph.num_line_edges == 0:
        return transition
    e_in = jnp.asarray(graph.line_edges[:, 0])
    total = jax.ops.segment_sum(jnp.abs(transition), e_in, num_segments=graph.num_edges)
    return transition / _safe_scale(total)[e_in]


def p_mode_grid(transition: jax.Array) -> jax.Array:
    """transition (..., 2, 2, H) [o, a] → P-mode: for every incoming direction a,
    Σ_o |T[o, a]| ≤ 1 (also at the border, where an outgoing edge may be missing)."""
    total = jnp.sum(jnp.abs(transition), axis=-3, keepdims=True)
    return transition / _safe_scale(total)


def d_mode_grid_mask(x: int, y: int) -> np.ndarray:
    """(X, Y, 2, 2) {0, 1} mask [i, j, o, a] of the D-mode transitions on the grid: an
    outgoing edge continues its own direction (o == a) where that incoming edge exists; on the
    first row (o = 0, i = 0) or first column (o = 1, j = 0) it turns from the other direction.
    Every edge keeps at most one incoming transition, so the pruned line graph is a multitree."""
    m = np.zeros((x, y, 2, 2))
    m[1:, :, 0, 0] = 1  # straight down
    m[0, 1:, 0, 1] = 1  # first row: turn right → down
    m[:, 1:, 1, 1] = 1  # straight right
    m[1:, 0, 1, 0] = 1  # first column: turn down → right
    return m


def d_mode_transitions(graph: Graph, transition: jax.Array) -> jax.Array:
    """transition (P, H) → D-mode: |T| clipped to 1 and the line graph pruned with
    :meth:`Graph.multitree_mask`."""
    mask = jnp.asarray(graph.multitree_mask(), transition.dtype)
    one = jnp.ones((), transition.dtype)
    return jnp.clip(transition, -one, one) * mask[:, None]
