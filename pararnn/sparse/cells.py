"""Sparse cells: GRU, LSTM and Elman with masked recurrent (and input) matrices.

Two layouts of the same networks:

- **Masked** (:class:`MaskedGRUCell`, :class:`MaskedLSTMCell`, :class:`MaskedElmanCell`):
  the dense cell of :mod:`pararnn.cells.dense` with ``W_h ⊙ mask_h`` (and ``W_i ⊙ mask_i``).
  Any mask — a graph's adjacency, a pruning mask. The parameters carry the masks as arrays
  ``mask_h``/``mask_i`` (float, 0/1) behind ``stop_gradient``; the gradient of a masked
  weight is exactly zero. The Jacobian stays dense: solve with ``"newton"`` or ``"quasi"``.
- **Block** (:class:`BlockCell`): when the mask is block diagonal (after a permutation of
  the hidden units, :func:`pararnn.sparse.graphs.block_layout`), the cell is ``blocks``
  independent dense cells of size ``s`` run side by side (``vmap`` over blocks), and its
  Jacobian is block diagonal: the solver's ``"block"`` structure, (B, K, K) per step, turns
  the dense Newton's O(T·D³) combines into O(T·D·K²) and the O(D²) matvecs into O(D·K).

Mask layout follows the kernels (``h @ W_h``): ``mask_h[i, j]`` keeps the connection from
unit i to unit j. A ``(D, D)`` unit mask applies to every gate; a ``(D, gates·D)`` mask
(e.g. from pruning) masks each gate's weights separately.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from ..cells import Cell, ElmanCell, GRUCell, LSTMCell
from ..cells.base import Params

__all__ = ["MaskedGRUCell", "MaskedLSTMCell", "MaskedElmanCell", "BlockCell", "GATES",
           "expand_mask", "dense_to_block", "masked_cell_type"]

#: Gates per cell kind: the width of W_h and W_i is gates · hidden.
GATES = {"gru": 3, "lstm": 4, "elman": 1}


def expand_mask(mask: Any, rows: int, hidden: int, gates: int, what: str) -> np.ndarray:
    """A ``(rows, hidden)`` unit mask tiled over gates, or a ``(rows, gates·hidden)`` mask
    as is → float ``(rows, gates·hidden)`` of 0/1."""
    m = np.asarray(mask)
    if m.dtype != bool and not np.all((m == 0) | (m == 1)):
        raise ValueError(f"{what}: a mask must be boolean or 0/1, got values {np.unique(m)[:5]}.")
    if m.shape == (rows, hidden):
        m = np.tile(m, (1, gates))
    if m.shape != (rows, gates * hidden):
        raise ValueError(f"{what}: mask must have shape ({rows}, {hidden}) (one per unit pair) or "
                         f"({rows}, {gates * hidden}) (one per weight), got {m.shape}.")
    return m.astype(np.float32)


class _Masked:
    """Mixin over a dense cell: every method sees ``W ⊙ stop_gradient(mask)``."""

    kind: ClassVar[str]

    def init(self, key: jax.Array, dtype: Any = jnp.float32, *, mask_h: Any = None,
             mask_i: Any = None) -> Params:
        """Dense init of the base cell, masked; ``mask_h``: ``(D, D)`` or ``(D, gates·D)``
        (default: all ones); ``mask_i``: ``(in, D)`` or ``(in, gates·D)`` (default: none,
        the input projection stays dense)."""
        g, d = GATES[self.kind], self.hidden_features
        name = type(self).__name__
        mh = np.ones((d, g * d), np.float32) if mask_h is None else expand_mask(mask_h, d, d, g, f"{name} mask_h")
        mi = None if mask_i is None else expand_mask(mask_i, self.in_features, d, g, f"{name} mask_i")
        params = super().init(key, dtype)
        params["mask_h"] = jnp.asarray(mh, dtype)
        if mi is not None:
            params["mask_i"] = jnp.asarray(mi, dtype)
        return self.apply_masks(params)

    @staticmethod
    def apply_masks(params: Params) -> Params:
        """Params with masked weights zeroed (what the cell computes with), masks kept."""
        out = dict(params)
        out["W_h"] = params["W_h"] * jax.lax.stop_gradient(params["mask_h"])
        if "mask_i" in params:
            out["W_i"] = params["W_i"] * jax.lax.stop_gradient(params["mask_i"])
        return out

    def project(self, params, x):
        return super().project(self.apply_masks(params), x)

    def step(self, h, u, params):
        return super().step(h, u, self.apply_masks(params))

    def jacobian(self, h, u, params):
        return super().jacobian(h, u, self.apply_masks(params))

    def jacobian_diagonal(self, h, u, params):
        return super().jacobian_diagonal(h, u, self.apply_masks(params))


@dataclasses.dataclass(frozen=True)
class MaskedGRUCell(_Masked, GRUCell):
    """GRU with masked ``W_h`` (and optionally ``W_i``); see the module docstring."""

    kind: ClassVar[str] = "gru"


@dataclasses.dataclass(frozen=True)
class MaskedLSTMCell(_Masked, LSTMCell):
    """LSTM with masked ``W_h`` (and optionally ``W_i``); state [c; h] of length 2D."""

    kind: ClassVar[str] = "lstm"


@dataclasses.dataclass(frozen=True)
class MaskedElmanCell(_Masked, ElmanCell):
    """Elman with masked ``W_h`` (and optionally ``W_i``)."""

    kind: ClassVar[str] = "elman"


_MASKED = {"gru": MaskedGRUCell, "lstm": MaskedLSTMCell, "elman": MaskedElmanCell}


def masked_cell_type(kind: str) -> type:
    if kind not in _MASKED:
        raise ValueError(f"cell kind must be one of {sorted(_MASKED)}, got {kind!r}.")
    return _MASKED[kind]


@dataclasses.dataclass(frozen=True)
class BlockCell(Cell):
    """``blocks`` independent masked dense cells of ``hidden_features // blocks`` units.

    Args:
      in_features, hidden_features: as any cell; ``hidden_features = blocks · s``.
      kind: ``"gru"``, ``"lstm"`` or ``"elman"``.
      blocks: number of diagonal blocks B.
      recurrent_scale: passed to the per-block dense cell (None: its default).

    State ``(S, B)`` with S the per-block state size (s, or 2s for LSTM: [c_b; h_b]) — the
    solver's ``"block"`` layout, Jacobian ``(B, S, S)``. Parameters are the per-block masked
    cell's, stacked on a leading block axis. Output unit ``b·s + i`` is unit i of block b.
    """

    kind: str = "gru"
    blocks: int = 1
    recurrent_scale: float | None = None
    structure: ClassVar[str] = "block"

    def __post_init__(self):
        super().__post_init__()
        if self.kind not in GATES:
            raise ValueError(f"BlockCell: kind must be one of {sorted(GATES)}, got {self.kind!r}.")
        if isinstance(self.blocks, bool) or not isinstance(self.blocks, int) or self.blocks < 1 \
                or self.hidden_features % self.blocks:
            raise ValueError(f"BlockCell: blocks must be a positive int dividing hidden_features="
                             f"{self.hidden_features}, got {self.blocks!r}.")

    @property
    def block_cell(self) -> Cell:
        opts = {} if self.recurrent_scale is None else {"recurrent_scale": self.recurrent_scale}
        return _MASKED[self.kind](self.in_features, self.hidden_features // self.blocks, **opts)

    @property
    def state_shape(self):
        return (self.block_cell.state_shape[0], self.blocks)

    def init(self, key, dtype=jnp.float32, *, mask_h: Any = None) -> Params:
        """Per-block dense init; ``mask_h`` optional ``(B, s, s)`` or ``(B, s, gates·s)``
        masks inside the blocks."""
        keys = jax.random.split(key, self.blocks)
        cell = self.block_cell
        per = [cell.init(keys[b], dtype, mask_h=None if mask_h is None else np.asarray(mask_h)[b])
               for b in range(self.blocks)]
        return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *per)

    def project(self, params, x):
        """``x (..., in)`` → ``(..., B, *block input shape)``."""
        lead = x.ndim - 1
        return jax.vmap(self.block_cell.project, in_axes=(0, None), out_axes=lead)(params, x)

    def step(self, h, u, params):
        return jax.vmap(self.block_cell.step, in_axes=(1, 0, 0), out_axes=1)(h, u, params)

    def jacobian(self, h, u, params):
        """``(B, S, S)``: each block's dense Jacobian."""
        return jax.vmap(self.block_cell.jacobian, in_axes=(1, 0, 0), out_axes=0)(h, u, params)

    def jacobian_diagonal(self, h, u, params):
        return jax.vmap(self.block_cell.jacobian_diagonal, in_axes=(1, 0, 0), out_axes=1)(h, u, params)

    def output(self, states):
        """``(..., S, B)`` → ``(..., B·s)``."""
        y = self.block_cell.output(jnp.swapaxes(states, -1, -2))
        return y.reshape(y.shape[:-2] + (-1,))


def dense_to_block(params: Params, kind: str, perm: Any, sizes: tuple[int, ...]):
    """Re-lay a masked dense cell's parameters as a :class:`BlockCell`'s.

    Args:
      params: ``Masked*Cell`` parameters (``W_i (in, g·D)``, ``b (g·D,)``, ``W_h (D, g·D)``,
        ``mask_h``; ``mask_i`` optional) whose mask is block diagonal after ``perm``.
      kind: "gru", "lstm" or "elman".
      perm, sizes: from :func:`pararnn.sparse.graphs.block_layout`: unit ``perm[k]`` goes to
        position k; blocks of ``sizes`` in order. Blocks are zero-padded to the largest size
        (padded units read and write nothing and stay at zero).

    Returns:
      ``(block_params, blocks, index)``: stacked parameters for ``BlockCell(kind=kind,
      blocks=blocks, hidden_features=blocks·max(sizes))`` and ``index (D,)`` with dense output
      unit j at block output position ``index[j]``.

    Raises:
      ValueError: the mask has a connection between two blocks.
    """
    g = GATES[kind]
    perm = np.asarray(perm)
    # A one-off host-side re-layout: NumPy, not op-by-op JAX dispatch.
    params = {k: np.asarray(v) for k, v in params.items()}
    d = params["W_h"].shape[0]
    if sorted(perm.tolist()) != list(range(d)) or sum(sizes) != d:
        raise ValueError(f"dense_to_block: perm must be a permutation of range({d}) and sizes sum to {d}; "
                         f"got perm of length {perm.size}, sizes summing to {sum(sizes)}.")
    s = max(sizes)
    starts = np.cumsum((0,) + tuple(sizes))[:-1]
    unit_mask = params["mask_h"].reshape(d, g, d).any(axis=1)[perm][:, perm]
    block_id = np.repeat(np.arange(len(sizes)), sizes)
    if np.any(unit_mask & (block_id[:, None] != block_id[None, :])):
        raise ValueError("dense_to_block: mask_h connects units of different blocks; "
                         "use perm and sizes from block_layout(mask).")
    per, index = [], np.zeros(d, np.int64)
    for b, (start, size) in enumerate(zip(starts, sizes)):
        units = perm[start:start + size]
        index[units] = b * s + np.arange(size)
        cols = np.concatenate([k * d + units for k in range(g)])

        def pad_cols(a):  # (..., g·size) → (..., g·s), zero-padding each gate
            a = a.reshape(a.shape[:-1] + (g, size))
            a = np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, s - size)])
            return a.reshape(a.shape[:-2] + (g * s,))

        def pad_rows(a):
            return np.pad(a, [(0, s - size), (0, 0)])

        blk = {"W_i": pad_cols(params["W_i"][:, cols]), "b": pad_cols(params["b"][cols]),
               "W_h": pad_rows(pad_cols(params["W_h"][units][:, cols])),
               "mask_h": pad_rows(pad_cols(params["mask_h"][units][:, cols]))}
        if "mask_i" in params:
            blk["mask_i"] = pad_cols(params["mask_i"][:, cols])
        per.append(blk)
    stacked = {k: jnp.asarray(np.stack([blk[k] for blk in per])) for k in per[0]}
    return stacked, len(sizes), index
