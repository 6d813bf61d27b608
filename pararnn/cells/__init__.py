"""Recurrent cells as pure functions: parameter init, input projection, one step and a
hand-written Jacobian of the declared structure. See :mod:`pararnn.cells.base`."""

from .base import Cell, Params
from .dense import ElmanCell, GRUCell, LSTMCell
from .mingru import MinGRUCell
from .paragru import ParaGRUCell
from .paralstm import ParaLSTMCell

__all__ = ["Cell", "Params", "ParaGRUCell", "ParaLSTMCell", "GRUCell", "LSTMCell", "ElmanCell", "MinGRUCell"]
