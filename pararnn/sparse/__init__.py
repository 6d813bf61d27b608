"""Sparse recurrent networks: random-graph connectivity and magnitude pruning on top of the
parallel cells (after Darji, "Investigating Sparsity in Recurrent Neural Networks").

- :func:`graph_mask`, :func:`random_dag`, :func:`layer_dag`, :func:`block_layout`: masks
  from random graphs (networkx), DAGs layered by longest path, block-diagonal permutations.
- :func:`magnitude_pruning` (optax), :func:`magnitude_prune`, :func:`sparsity`.
- Cells :class:`MaskedGRUCell`, :class:`MaskedLSTMCell`, :class:`MaskedElmanCell`,
  :class:`BlockCell`; layers :class:`SparseGRU`, :class:`SparseLSTM`, :class:`SparseElman`,
  :class:`BlockSparseRNN`, :class:`GraphRNN`.
- :mod:`pararnn.sparse.reber`: Reber-grammar strings for the experiments.
"""

from .cells import (GATES, BlockCell, MaskedElmanCell, MaskedGRUCell, MaskedLSTMCell, dense_to_block,
                    expand_mask, masked_cell_type)
from .graphs import (GRAPH_KINDS, DagLayout, block_diagonal_mask, block_layout, graph_mask,
                     graph_properties, layer_dag, random_dag, random_graph)
from .layers import BlockSparseRNN, GraphRNN, Mask, SparseElman, SparseGRU, SparseLSTM
from .pruning import (SCHEDULES, MagnitudePruningState, magnitude_prune, magnitude_pruning,
                      schedule_sparsity, sparsity, where_matrices, where_names)

__all__ = [
    "graph_mask", "random_graph", "random_dag", "layer_dag", "DagLayout", "graph_properties",
    "block_layout", "block_diagonal_mask", "GRAPH_KINDS",
    "magnitude_pruning", "MagnitudePruningState", "magnitude_prune", "sparsity", "SCHEDULES",
    "schedule_sparsity", "where_matrices", "where_names",
    "MaskedGRUCell", "MaskedLSTMCell", "MaskedElmanCell", "BlockCell", "GATES", "expand_mask",
    "dense_to_block", "masked_cell_type",
    "Mask", "SparseGRU", "SparseLSTM", "SparseElman", "BlockSparseRNN", "GraphRNN",
]
