"""Flax NNX layers: ``layer(x, h0=None, mode=None)`` with x (batch, time, in_features)."""

from .layers import GRU, LSTM, Elman, ParaGRU, ParaLSTM
from .recurrent import MODES, RecurrentLayer, SolverOptions

__all__ = ["ParaGRU", "ParaLSTM", "GRU", "LSTM", "Elman", "RecurrentLayer", "SolverOptions", "MODES"]
