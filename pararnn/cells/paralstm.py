"""ParaLSTM: an LSTM with diagonal recurrence, coupled input–forget gate and peepholes.
Its state is ``[c, h]`` of shape (2, N); the Jacobian couples c and h of each channel only:
one 2×2 block per channel (O(T·N) solve).

    f  = σ(a_f ⊙ h + u_f + p_f ⊙ c)           (u_f includes the forget bias b_f)
    ĉ  = tanh(a_c ⊙ h + u_c)
    c' = f ⊙ c + (1 − f) ⊙ ĉ
    o  = σ(a_o ⊙ h + u_o + p_o ⊙ c')
    h' = o ⊙ tanh(c')
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from .base import Cell, Params, check_divisible, clamp_recurrent, multihead_project
from .initializers import small_recurrent_normal, xavier_uniform


@dataclasses.dataclass(frozen=True)
class ParaLSTMCell(Cell):
    """Args: in_features, hidden_features (= N); num_heads of the input projection
    (default 2); max_recurrent_norm: optional bound on the effective |a| and |p| (default
    None: off, as in ParaRNN's code)."""

    num_heads: int = 2
    max_recurrent_norm: float | None = None
    structure: ClassVar[str] = "block"

    def __post_init__(self):
        super().__post_init__()
        check_divisible("ParaLSTM", in_features=(self.in_features, self.num_heads),
                        hidden_features=(self.hidden_features, self.num_heads))

    @property
    def state_shape(self):
        return (2, self.hidden_features)

    def init(self, key, dtype=jnp.float32) -> Params:
        """ParaRNN's init (its ``LSTMCIFGDiagMH`` defaults; random draws differ, distributions
        are the same): ``a`` (3, N) = [a_f, a_c, a_o] and peepholes ``p`` (2, N) = [p_f, p_o]
        ~ N(0, (2/√(5N))²); ``B`` (heads, in/heads, 3N/heads) Xavier uniform with ParaRNN's
        fans, U(±√(6 / (in/heads + N/heads))) — fan-out one head's state; ``b`` (3, N) zero
        except the forget bias −linspace(0, 1) (f starts in [0.27, 0.5]). Gate storage order
        differs from ParaRNN's [f, o, c]: :mod:`pararnn.nn.pararnn_weights` maps them."""
        k_a, k_p, k_b = jax.random.split(key, 3)
        n, heads = self.hidden_features, self.num_heads
        per_in, per_out = self.in_features // heads, 3 * n // heads
        return {
            "a": small_recurrent_normal(k_a, (3, n), n, dtype),
            "p": small_recurrent_normal(k_p, (2, n), n, dtype),
            "B": xavier_uniform(k_b, (heads, per_in, per_out), per_in, n // heads, dtype),
            "b": jnp.zeros((3, n), dtype).at[0].set(-jnp.linspace(0.0, 1.0, n, dtype=dtype)),
        }

    def project(self, params, x):
        """``x (..., in)`` → ``u (..., 3, N)`` = [u_f, u_c, u_o]."""
        return multihead_project(x, params["B"], params["b"], 3)

    def _gates(self, s, u, params):
        a = clamp_recurrent(params["a"], self.max_recurrent_norm)
        p = clamp_recurrent(params["p"], self.max_recurrent_norm)
        c, h = s[0], s[1]
        f = jax.nn.sigmoid(a[0] * h + u[0] + p[0] * c)
        cand = jnp.tanh(a[1] * h + u[1])
        c_new = f * c + (1 - f) * cand
        o = jax.nn.sigmoid(a[2] * h + u[2] + p[1] * c_new)
        return a, p, c, h, f, cand, c_new, o

    def step(self, s, u, params):
        *_, c_new, o = self._gates(s, u, params)
        return jnp.stack([c_new, o * jnp.tanh(c_new)])

    def jacobian(self, s, u, params):
        """One 2×2 block per channel, ``(N, 2, 2)``: rows (c', h'), columns (c, h)."""
        a, p, c, h, f, cand, c_new, o = self._gates(s, u, params)
        df = f * (1 - f)
        dcc = f + (c - cand) * df * p[0]  # ∂c'/∂c
        dch = (c - cand) * df * a[0] + (1 - f) * (1 - cand * cand) * a[1]  # ∂c'/∂h
        tc = jnp.tanh(c_new)
        do = o * (1 - o)
        dtanh = o * (1 - tc * tc)
        dhc = tc * do * p[1] * dcc + dtanh * dcc  # ∂h'/∂c
        dhh = tc * do * (a[2] + p[1] * dch) + dtanh * dch  # ∂h'/∂h
        return jnp.stack([jnp.stack([dcc, dch], -1), jnp.stack([dhc, dhh], -1)], -2)

    def jacobian_diagonal(self, s, u, params):
        """The diagonal of every block, laid out like the state: ``(2, N)`` = [∂c'/∂c, ∂h'/∂h]."""
        return jnp.swapaxes(jnp.diagonal(self.jacobian(s, u, params), axis1=-2, axis2=-1), 0, 1)

    def output(self, states):
        return states[..., 1, :]
