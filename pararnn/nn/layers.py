"""The five layers: ParaGRU, ParaLSTM (parallel-friendly diagonal recurrences) and GRU,
LSTM, Elman (classic dense recurrences). Constructor and call signatures are documented on
:class:`pararnn.nn.recurrent.RecurrentLayer`."""

from __future__ import annotations

from ..cells import ElmanCell, GRUCell, LSTMCell, MinGRUCell, ParaGRUCell, ParaLSTMCell
from .recurrent import RecurrentLayer


class ParaGRU(RecurrentLayer):
    """GRU with diagonal recurrence (diagonal Jacobian). Extra options: ``num_heads``
    (block-diagonal input projection, default 2), ``max_recurrent_norm`` (soft bound on the
    recurrent weights; default None, as ParaRNN).

    >>> import jax.numpy as jnp; from flax import nnx
    >>> layer = ParaGRU(8, 16, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((2, 100, 8))).shape
    (2, 100, 16)
    """

    cell_type = ParaGRUCell


class ParaLSTM(RecurrentLayer):
    """LSTM with diagonal recurrence, coupled input/forget gate and peepholes (2×2 block
    Jacobian over [c, h]). Options as ParaGRU. The state is ``(batch, 2, hidden)``."""

    cell_type = ParaLSTMCell


class MinGRU(RecurrentLayer):
    """Linear diagonal recurrence ``h' = (1 − z)⊙h + z⊙ĥ`` with ``z``, ``ĥ`` from the input
    only (the linear-RNN baseline); one Newton step solves it exactly. Option ``num_heads``."""

    cell_type = MinGRUCell


class GRU(RecurrentLayer):
    """Flax-compatible GRU with a dense recurrent matrix (dense Jacobian). ``method``
    "quasi" (default: O(T·D) memory, ~12 iterations at init) or "newton" (~3 iterations, but
    O(T·D²) memory and O(D³) combines); ``recurrent_scale`` scales the orthogonal init.
    Gradients use the exact dense Jacobian either way (O(T·D²) memory in the backward)."""

    cell_type = GRUCell
    default_method = "quasi"


class LSTM(RecurrentLayer):
    """Flax-compatible LSTM with dense recurrent matrices; the state is [c; h] of length
    ``2·hidden`` (``(batch, 2·hidden)``). Methods as :class:`GRU` (default "quasi")."""

    cell_type = LSTMCell
    default_method = "quasi"


class Elman(RecurrentLayer):
    """Elman RNN, h' = tanh(W_h h + W_i x + b), dense Jacobian; ``recurrent_scale``
    (default 0.5) scales the orthogonal init. Methods as :class:`GRU` (default "quasi")."""

    cell_type = ElmanCell
    default_method = "quasi"
