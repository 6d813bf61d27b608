"""Hypernetworks on the parallel cells.

- Dynamic (Ha, Dai & Le 2016): :class:`HyperGRU`, :class:`HyperLSTM` — a small recurrent
  hyper cell emits per-step scalings of a ParaGRU/ParaLSTM main cell; both diagonal-recurrence
  cells, so the layer trains in parallel over time.
- Static: :class:`MLPHyperNetwork` (plain), :class:`MIPHyperNetwork` (Ortiz et al. 2023) and
  :class:`RNNHyperNetwork` (Chandra et al. 2023) map a conditioning vector to all parameters
  of a target NNX module and run it functionally; :class:`OutputRegularizer` is the
  continual-learning regulariser on stored outputs.
"""

from .cells import COUPLINGS, HyperGRUCell, HyperLSTMCell
from .continual import OutputRegularizer
from .layers import HyperGRU, HyperLSTM
from .static import ENCODINGS, MIPHyperNetwork, MLPHyperNetwork, RNNHyperNetwork, mip_encoding
from .target import TargetSpec

__all__ = ["HyperGRU", "HyperLSTM", "HyperGRUCell", "HyperLSTMCell", "COUPLINGS",
           "MLPHyperNetwork", "MIPHyperNetwork", "RNNHyperNetwork", "mip_encoding", "ENCODINGS",
           "TargetSpec", "OutputRegularizer"]
