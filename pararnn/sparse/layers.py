"""Flax NNX layers over the sparse cells, and a layered random-DAG recurrent network.

``SparseGRU/SparseLSTM/SparseElman(in, hidden, *, mask_h=..., mask_i=None, rngs)`` behave
like :class:`pararnn.nn.GRU` etc. (same call, modes and solver options) with masked weights;
the masks are :class:`Mask` variables, not ``nnx.Param``, so an optimiser built with
``wrt=nnx.Param`` never touches them. :class:`BlockSparseRNN` is the block-diagonal layout
(solver structure ``"block"``). :class:`GraphRNN` is Darji's random-structure network: one
masked recurrent layer per longest-path layer of a DAG, with skip connections.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..nn.recurrent import RecurrentLayer
from .cells import BlockCell, MaskedElmanCell, MaskedGRUCell, MaskedLSTMCell, masked_cell_type
from .graphs import DagLayout

__all__ = ["Mask", "SparseGRU", "SparseLSTM", "SparseElman", "BlockSparseRNN", "GraphRNN"]


class Mask(nnx.Variable):
    """A fixed 0/1 weight mask (not trained)."""


class _MaskedLayer(RecurrentLayer):
    """A :class:`RecurrentLayer` whose cell takes ``mask_h``/``mask_i`` at init.

    Extra args: ``mask_h`` ``(D, D)`` unit mask or ``(D, gates·D)`` weight mask of the
    recurrent matrix (default: dense); ``mask_i`` ``(in, D)`` or ``(in, gates·D)`` for the
    input matrix (default: none). Everything else as :class:`pararnn.nn.recurrent.RecurrentLayer`.
    """

    default_method = "quasi"

    def __init__(self, in_features: int, hidden_features: int, *, mask_h: Any = None,
                 mask_i: Any = None, rngs: nnx.Rngs, **options):
        super().__init__(in_features, hidden_features, rngs=rngs, **options)
        params = self.cell.init(rngs.params(), self.param_dtype, mask_h=mask_h, mask_i=mask_i)
        self.param_names = tuple(params)
        for key, value in params.items():
            setattr(self, key, (Mask if key.startswith("mask_") else nnx.Param)(value))

    @property
    def weight_density(self) -> float:
        """Fraction of recurrent weights kept by ``mask_h``."""
        return float(jnp.mean(self.mask_h[...]))


class SparseGRU(_MaskedLayer):
    """GRU (Flax equations) with masked weights; state ``(batch, hidden)``.

    >>> import jax.numpy as jnp; from flax import nnx; from pararnn.sparse import graph_mask
    >>> layer = SparseGRU(3, 16, mask_h=graph_mask("erdos_renyi", 16, p=0.2), rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((2, 10, 3))).shape
    (2, 10, 16)
    """

    cell_type = MaskedGRUCell


class SparseLSTM(_MaskedLayer):
    """LSTM with masked weights; state ``(batch, 2·hidden)`` = [c; h]."""

    cell_type = MaskedLSTMCell


class SparseElman(_MaskedLayer):
    """Elman RNN with masked weights (``recurrent_scale`` default 0.5)."""

    cell_type = MaskedElmanCell


class BlockSparseRNN(RecurrentLayer):
    """``blocks`` independent dense GRU/LSTM/Elman cells side by side: a block-diagonal
    recurrent matrix, solved with the ``"block"`` Jacobian structure (default method
    ``"newton"``: exact Jacobian blocks, ~3 iterations, O(T·D·s²) instead of O(T·D³)).

    Args (besides RecurrentLayer's): ``kind`` ("gru", "lstm", "elman"), ``blocks`` (must
    divide ``hidden_features``), ``recurrent_scale``. State ``(batch, S, blocks)``.
    """

    cell_type = BlockCell
    default_method = "newton"

    def __init__(self, in_features: int, hidden_features: int, *, rngs: nnx.Rngs, **options):
        super().__init__(in_features, hidden_features, rngs=rngs, **options)
        # The per-block masks are fixed, like SparseGRU's: Mask variables, not nnx.Param, so
        # that an optimiser built with wrt=nnx.Param (and its weight decay) never moves them.
        for key in self.param_names:
            if key.startswith("mask_"):
                setattr(self, key, Mask(getattr(self, key)[...]))


_SPARSE_LAYERS = {"gru": SparseGRU, "lstm": SparseLSTM, "elman": SparseElman}


class GraphRNN(nnx.Module):
    """A layered random-DAG recurrent network (see :func:`pararnn.sparse.graphs.layer_dag`).

    Layer l is a masked recurrent layer over the nodes of DAG layer l: layer 0 (the sources)
    reads the network input through a dense input matrix; layer l >= 1 reads the outputs of
    every earlier layer with an edge into it (the previous layer, and earlier ones through
    skip connections), through an input matrix masked by those edges; its input rows are
    those layers' nodes, layer by layer in increasing order (``layout.input_masks[l]``'s
    order), each layer's nodes by id. Recurrence within a
    layer is dense (each layer is an ordinary recurrent layer of its nodes). The output is
    the sink nodes' states, in ``layout.outputs`` order.

    Args:
      in_features: input size.
      layout: a :class:`DagLayout`.
      kind: "gru", "lstm" or "elman".
      rngs: ``nnx.Rngs``.
      **options: passed to every layer (mode, method, recurrent_scale, ...).

    Call: ``x (batch, time, in_features)`` → ``(batch, time, len(layout.outputs))``.
    """

    def __init__(self, in_features: int, layout: DagLayout, *, kind: str = "elman",
                 rngs: nnx.Rngs, **options):
        if not isinstance(layout, DagLayout):
            raise TypeError(f"GraphRNN: layout must be a DagLayout (from layer_dag), got {type(layout).__name__}.")
        masked_cell_type(kind)  # validates kind
        layer_type = _SPARSE_LAYERS[kind]
        self.layout, self.kind = layout, kind
        layers = []
        for l, size in enumerate(layout.sizes):
            if l == 0:
                n_in, mask_i = in_features, None
            else:
                sources = layout.input_masks[l]
                mask_i = np.concatenate([sources[j] for j in sources], axis=0)
                n_in = mask_i.shape[0]
            layers.append(layer_type(n_in, size, mask_i=mask_i, rngs=rngs, **options))
        self.layers = nnx.List(layers)
        self.out_features = len(layout.outputs)

    def __call__(self, x: jax.Array, mode: str | None = None) -> jax.Array:
        outs: list[jax.Array] = []
        for l, layer in enumerate(self.layers):
            if l == 0:
                inp = x
            else:
                inp = jnp.concatenate([outs[j] for j in self.layout.input_masks[l]], axis=-1)
            outs.append(layer(inp, mode=mode))
        return jnp.stack([outs[l][..., i] for l, i in self.layout.outputs], axis=-1)
