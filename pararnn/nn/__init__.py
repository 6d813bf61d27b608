"""Flax NNX layers: ``layer(x, h0=None, mode=None)`` with x (batch, time, in_features)."""

from .layers import GRU, LSTM, Elman, MinGRU, ParaGRU, ParaLSTM
from .pararnn_weights import load_pararnn_state_dict, to_pararnn_state_dict
from .recurrent import MODES, RecurrentLayer, SolverOptions

__all__ = ["ParaGRU", "ParaLSTM", "GRU", "LSTM", "Elman", "MinGRU", "RecurrentLayer", "SolverOptions", "MODES",
           "load_pararnn_state_dict", "to_pararnn_state_dict"]
