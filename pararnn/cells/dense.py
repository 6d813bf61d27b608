"""Classic cells with dense recurrent matrices — GRU, LSTM, Elman — whose Jacobians are
dense: solve them with ``method="newton"`` (O(T·D³) combines) or ``"quasi"`` (diagonal only).

GRU and LSTM follow Flax's ``nnx.GRUCell`` / ``nnx.OptimizedLSTMCell`` equations exactly
(gate order and bias placement), so weights can be moved between them:

    GRU:   r = σ(W_ir x + b_r + W_hr h),  z = σ(W_iz x + b_z + W_hz h),
           n = tanh(W_in x + b_n + r ⊙ (W_hn h)),  h' = (1 − z) ⊙ n + z ⊙ h
    LSTM:  [i, f, g, o] = W_i x + W_h h + b;  c' = σ(f) c + σ(i) tanh(g);  h' = σ(o) tanh(c')
           (state [c; h] as one vector of length 2D)
    Elman: h' = tanh(W_h h + W_i x + b)

Kernels are stored input-major like Flax (``x @ W_i``, ``h @ W_h``). Each cell has a
hand-written Jacobian: O(D²) per step instead of autodiff's D JVPs (O(D³)).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from .base import Cell, Params
from .initializers import lecun_normal, orthogonal

_P = jax.lax.Precision.HIGHEST


def _mv(h, w):
    """``h @ w`` at full precision (TF32 on GPUs would blur the Newton fixed point)."""
    return jnp.matmul(h, w, precision=_P)


def _block_diagonals(w_h, gates: int, d: int):
    """Diagonals of the gates' square recurrent blocks ``W_h[:, k·d:(k+1)·d]``."""
    return [jnp.diagonal(w_h[:, k * d:(k + 1) * d]) for k in range(gates)]


@dataclasses.dataclass(frozen=True)
class GRUCell(Cell):
    """Args: in_features, hidden_features; recurrent_scale multiplies the orthogonal
    recurrent init (default 1.0, Flax's)."""

    recurrent_scale: float = 1.0
    structure: ClassVar[str] = "dense"

    def init(self, key, dtype=jnp.float32) -> Params:
        k_i, *k_h = jax.random.split(key, 4)
        d = self.hidden_features
        w_h = jnp.concatenate([orthogonal(k, d, dtype, self.recurrent_scale) for k in k_h], axis=1)
        return {"W_i": lecun_normal(k_i, (self.in_features, 3 * d), self.in_features, dtype),
                "b": jnp.zeros((3 * d,), dtype), "W_h": w_h}

    def project(self, params, x):
        """``x (..., in)`` → ``(..., 3, D)`` = [r, z, n] input pre-activations with bias."""
        y = _mv(x, params["W_i"]) + params["b"]
        return y.reshape(y.shape[:-1] + (3, self.hidden_features))

    def _gates(self, h, u, params):
        hh = _mv(h, params["W_h"]).reshape(3, self.hidden_features)
        r = jax.nn.sigmoid(u[0] + hh[0])
        z = jax.nn.sigmoid(u[1] + hh[1])
        n = jnp.tanh(u[2] + r * hh[2])
        return hh, r, z, n

    def step(self, h, u, params):
        _, _, z, n = self._gates(h, u, params)
        return (1 - z) * n + z * h

    def jacobian(self, h, u, params):
        """``(D, D)``: diag(h − n)·∂z + diag(1 − z)·∂n + diag(z), with ∂g = diag(g')·W_gᵀ."""
        d = self.hidden_features
        hh, r, z, n = self._gates(h, u, params)
        w_r, w_z, w_n = (params["W_h"][:, k * d:(k + 1) * d].T for k in range(3))
        dr = (r * (1 - r))[:, None] * w_r
        dz = (z * (1 - z))[:, None] * w_z
        dn = (1 - n * n)[:, None] * (hh[2][:, None] * dr + r[:, None] * w_n)
        return (h - n)[:, None] * dz + (1 - z)[:, None] * dn + jnp.diag(z)

    def jacobian_diagonal(self, h, u, params):
        """The diagonal of :meth:`jacobian`, ``(D,)``, in O(D)."""
        hh, r, z, n = self._gates(h, u, params)
        w_r, w_z, w_n = _block_diagonals(params["W_h"], 3, self.hidden_features)
        dn = (1 - n * n) * (hh[2] * r * (1 - r) * w_r + r * w_n)
        return (h - n) * z * (1 - z) * w_z + (1 - z) * dn + z


@dataclasses.dataclass(frozen=True)
class LSTMCell(Cell):
    """Args: in_features, hidden_features (= D); the state is [c; h] of length 2D;
    recurrent_scale multiplies the orthogonal recurrent init (default 1.0)."""

    recurrent_scale: float = 1.0
    structure: ClassVar[str] = "dense"

    @property
    def state_shape(self):
        return (2 * self.hidden_features,)

    def init(self, key, dtype=jnp.float32) -> Params:
        k_i, *k_h = jax.random.split(key, 5)
        d = self.hidden_features
        w_h = jnp.concatenate([orthogonal(k, d, dtype, self.recurrent_scale) for k in k_h], axis=1)
        return {"W_i": lecun_normal(k_i, (self.in_features, 4 * d), self.in_features, dtype),
                "b": jnp.zeros((4 * d,), dtype), "W_h": w_h}

    def project(self, params, x):
        """``x (..., in)`` → ``(..., 4, D)`` = [i, f, g, o] input pre-activations with bias."""
        y = _mv(x, params["W_i"]) + params["b"]
        return y.reshape(y.shape[:-1] + (4, self.hidden_features))

    def _gates(self, s, u, params):
        d = self.hidden_features
        c, h = s[:d], s[d:]
        y = u + _mv(h, params["W_h"]).reshape(4, d)
        i, f, o = jax.nn.sigmoid(y[0]), jax.nn.sigmoid(y[1]), jax.nn.sigmoid(y[3])
        g = jnp.tanh(y[2])
        c_new = f * c + i * g
        return c, i, f, g, o, c_new

    def step(self, s, u, params):
        *_, o, c_new = self._gates(s, u, params)
        return jnp.concatenate([c_new, o * jnp.tanh(c_new)])

    def jacobian(self, s, u, params):
        """``(2D, 2D)`` over [c; h]: ∂c'/∂c = diag(f), ∂c'/∂h = Σ_gates diag(·)·W_gᵀ, and
        ∂h'/∂· = diag(tanh c' ⊙ o') ∂o/∂· + diag(o (1 − tanh² c')) ∂c'/∂·."""
        d = self.hidden_features
        c, i, f, g, o, c_new = self._gates(s, u, params)
        w_i, w_f, w_g, w_o = (params["W_h"][:, k * d:(k + 1) * d].T for k in range(4))
        dc_dh = ((c * f * (1 - f))[:, None] * w_f + (g * i * (1 - i))[:, None] * w_i
                 + (i * (1 - g * g))[:, None] * w_g)
        tc = jnp.tanh(c_new)
        dtanh = (o * (1 - tc * tc))[:, None]
        dh_dc = dtanh * jnp.diag(f)
        dh_dh = (tc * o * (1 - o))[:, None] * w_o + dtanh * dc_dh
        top = jnp.concatenate([jnp.diag(f), dc_dh], axis=1)
        return jnp.concatenate([top, jnp.concatenate([dh_dc, dh_dh], axis=1)], axis=0)

    def jacobian_diagonal(self, s, u, params):
        """The diagonal of :meth:`jacobian`, ``(2D,)`` = [f; ∂h'_j/∂h_j], in O(D)."""
        c, i, f, g, o, c_new = self._gates(s, u, params)
        w_i, w_f, w_g, w_o = _block_diagonals(params["W_h"], 4, self.hidden_features)
        dc_dh = c * f * (1 - f) * w_f + g * i * (1 - i) * w_i + i * (1 - g * g) * w_g
        tc = jnp.tanh(c_new)
        return jnp.concatenate([f, tc * o * (1 - o) * w_o + o * (1 - tc * tc) * dc_dh])

    def output(self, states):
        return states[..., self.hidden_features:]


@dataclasses.dataclass(frozen=True)
class ElmanCell(Cell):
    """Args: in_features, hidden_features; recurrent_scale multiplies the orthogonal
    recurrent init (default 0.5: an Elman net with a unit-norm W is not contractive)."""

    recurrent_scale: float = 0.5
    structure: ClassVar[str] = "dense"

    def init(self, key, dtype=jnp.float32) -> Params:
        k_i, k_h = jax.random.split(key)
        d = self.hidden_features
        return {"W_i": lecun_normal(k_i, (self.in_features, d), self.in_features, dtype),
                "b": jnp.zeros((d,), dtype), "W_h": orthogonal(k_h, d, dtype, self.recurrent_scale)}

    def project(self, params, x):
        return _mv(x, params["W_i"]) + params["b"]

    def step(self, h, u, params):
        return jnp.tanh(_mv(h, params["W_h"]) + u)

    def jacobian(self, h, u, params):
        """``(D, D)`` = diag(1 − h'²) W_hᵀ."""
        h_new = self.step(h, u, params)
        return (1 - h_new * h_new)[:, None] * params["W_h"].T

    def jacobian_diagonal(self, h, u, params):
        """The diagonal of :meth:`jacobian`, ``(D,)``."""
        h_new = self.step(h, u, params)
        return (1 - h_new * h_new) * jnp.diagonal(params["W_h"])
