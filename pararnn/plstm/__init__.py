"""pLSTM (Pöppel et al. 2025): parallelizable Linear Source Transition Mark networks on
sequences, 2D grids and general DAGs.

Kernels (functional, exact, jit/vmap/grad-able): :func:`plstm_1d`, :func:`plstm_2d`,
:func:`plstm_dag` on a static :class:`Graph`. Stabilisation: :func:`p_mode_transitions`,
:func:`d_mode_grid_mask`. Layers and models: :mod:`pararnn.plstm.layers`,
:mod:`pararnn.plstm.models`.
"""

from .chain import plstm_1d
from .dag import plstm_dag
from .graph import Graph, chain_graph, dagify, disjoint_union, grid_graph
from .grid import plstm_2d
from .layers import pLSTM1D, pLSTM2D, pLSTMGraph
from .models import PLSTMGraphClassifier, PLSTMVisionClassifier, reverse_graph
from .stabilize import d_mode_grid_mask, d_mode_transitions, p_mode_grid, p_mode_transitions

__all__ = ["Graph", "chain_graph", "grid_graph", "dagify", "disjoint_union",
           "plstm_1d", "plstm_2d", "plstm_dag", "pLSTM1D", "pLSTM2D", "pLSTMGraph",
           "PLSTMVisionClassifier", "PLSTMGraphClassifier", "reverse_graph", "p_mode_transitions",
           "p_mode_grid", "d_mode_grid_mask", "d_mode_transitions"]
