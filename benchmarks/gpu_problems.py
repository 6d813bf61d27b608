"""The problems the GPU benchmarks share: ParaGRU and ParaLSTM recurrences on random
projected inputs, batched (B, T, 3, D), with the library cells' steps and initialisation."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pararnn.cells import ParaGRUCell, ParaLSTMCell

CELLS = ("paragru", "paralstm")


def make_problem(cell_name: str, batch: int, length: int, hidden: int, dtype=jnp.float32, seed: int = 0):
    """``(cell, step, h0 (B, *S), u (B, T, 3, D), params)``: the cell's recurrence on inputs
    u ~ N(0, 1) (what its projection of normalised inputs looks like), parameters from the
    cell's own initialiser (contractive, as at the start of training)."""
    cell = {"paragru": ParaGRUCell, "paralstm": ParaLSTMCell}[cell_name](hidden, hidden)
    k_p, k_u = jax.random.split(jax.random.key(seed))
    params = {k: v.astype(dtype) for k, v in cell.init(k_p).items() if k != "B"}
    u = jax.random.normal(k_u, (batch, length, 3, hidden), jnp.float32).astype(dtype)
    h0 = jnp.zeros((batch,) + cell.state_shape, dtype)
    return cell, cell.step, h0, u, params
