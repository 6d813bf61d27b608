"""Test cells, each written twice: a JAX step for pararnn.solve and an independent NumPy
float64 step for the reference loop. Parameters are drawn so the cells are contractive
(as trained recurrent cells are), with seeded NumPy generators."""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import jax
import jax.numpy as jnp


def _np_sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


@dataclasses.dataclass
class Cell:
    name: str
    jacobian: str
    state_shape: tuple
    in_features: int
    jax_step: Callable
    np_step: Callable
    make_params: Callable[[np.random.Generator], dict]

    def params(self, seed=0, dtype=np.float64):
        p = self.make_params(np.random.default_rng(seed))
        return {k: jnp.asarray(v, dtype) for k, v in p.items()}

    def inputs(self, t, seed=1, dtype=np.float64):
        return jnp.asarray(np.random.default_rng(seed).normal(size=(t, self.in_features)), dtype)

    def h0(self, seed=2, dtype=np.float64):
        return jnp.asarray(0.5 * np.random.default_rng(seed).normal(size=self.state_shape), dtype)


def numpy_loop(cell: Cell, h0, xs, params) -> np.ndarray:
    """Sequential float64 reference: hs[t] = step(hs[t-1], xs[t])."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    h = np.asarray(h0, np.float64)
    xs = np.asarray(xs, np.float64)
    out = np.empty((xs.shape[0],) + h.shape)
    for t in range(xs.shape[0]):
        h = cell.np_step(h, xs[t], p)
        out[t] = h
    return out


# ---- diagonal: the ParaGRU equations -------------------------------------------------------
D_DIAG, IN = 4, 3


def _gru_diag_params(rng):
    return dict(a=0.6 * rng.normal(size=(3, D_DIAG)), w=rng.normal(size=(3, D_DIAG, IN)) / np.sqrt(IN),
                b=0.1 * rng.normal(size=(3, D_DIAG)))


def _gru_diag_jax(h, x, p):
    u = p["w"] @ x + p["b"]
    z = jax.nn.sigmoid(p["a"][0] * h + u[0])
    r = jax.nn.sigmoid(p["a"][1] * h + u[1])
    cand = jnp.tanh(p["a"][2] * (r * h) + u[2])
    return z * cand + (1 - z) * h


def _gru_diag_np(h, x, p):
    u = np.einsum("gdi,i->gd", p["w"], x) + p["b"]
    z = _np_sigmoid(p["a"][0] * h + u[0])
    r = _np_sigmoid(p["a"][1] * h + u[1])
    cand = np.tanh(p["a"][2] * (r * h) + u[2])
    return z * cand + (1 - z) * h


# ---- block 2×2: the ParaLSTM equations, state [c, h] of shape (2, N) -------------------------
N_BLOCK = 3


def _lstm_block_params(rng):
    n = N_BLOCK
    return dict(a_f=0.5 * rng.normal(size=n), a_c=0.5 * rng.normal(size=n), a_o=0.5 * rng.normal(size=n),
                p_f=0.5 * rng.normal(size=n), p_o=0.5 * rng.normal(size=n),
                w=rng.normal(size=(3, n, IN)) / np.sqrt(IN), b=0.1 * rng.normal(size=(3, n)))


def _lstm_block_jax(s, x, p):
    c, h = s[0], s[1]
    u = p["w"] @ x + p["b"]
    f = jax.nn.sigmoid(p["a_f"] * h + u[0] + p["p_f"] * c)
    cand = jnp.tanh(p["a_c"] * h + u[1])
    c_new = f * c + (1 - f) * cand
    o = jax.nn.sigmoid(p["a_o"] * h + u[2] + p["p_o"] * c_new)
    return jnp.stack([c_new, o * jnp.tanh(c_new)])


def _lstm_block_np(s, x, p):
    c, h = s[0], s[1]
    u = np.einsum("gni,i->gn", p["w"], x) + p["b"]
    f = _np_sigmoid(p["a_f"] * h + u[0] + p["p_f"] * c)
    cand = np.tanh(p["a_c"] * h + u[1])
    c_new = f * c + (1 - f) * cand
    o = _np_sigmoid(p["a_o"] * h + u[2] + p["p_o"] * c_new)
    return np.stack([c_new, o * np.tanh(c_new)])


# ---- dense: a standard GRU with full recurrent matrices -------------------------------------
D_DENSE = 4


def _gru_dense_params(rng):
    d = D_DENSE
    return dict(wh=0.5 * rng.normal(size=(3, d, d)) / np.sqrt(d), wx=rng.normal(size=(3, d, IN)) / np.sqrt(IN),
                b=0.1 * rng.normal(size=(3, d)))


def _gru_dense_jax(h, x, p):
    u = p["wx"] @ x + p["b"]
    z = jax.nn.sigmoid(p["wh"][0] @ h + u[0])
    r = jax.nn.sigmoid(p["wh"][1] @ h + u[1])
    cand = jnp.tanh(p["wh"][2] @ (r * h) + u[2])
    return z * cand + (1 - z) * h


def _gru_dense_np(h, x, p):
    u = np.einsum("gdi,i->gd", p["wx"], x) + p["b"]
    z = _np_sigmoid(p["wh"][0] @ h + u[0])
    r = _np_sigmoid(p["wh"][1] @ h + u[1])
    cand = np.tanh(p["wh"][2] @ (r * h) + u[2])
    return z * cand + (1 - z) * h


GRU_DIAG = Cell("gru_diag", "diagonal", (D_DIAG,), IN, _gru_diag_jax, _gru_diag_np, _gru_diag_params)
LSTM_BLOCK = Cell("lstm_block", "block", (2, N_BLOCK), IN, _lstm_block_jax, _lstm_block_np, _lstm_block_params)
GRU_DENSE = Cell("gru_dense", "dense", (D_DENSE,), IN, _gru_dense_jax, _gru_dense_np, _gru_dense_params)
CELLS = {c.name: c for c in (GRU_DIAG, LSTM_BLOCK, GRU_DENSE)}
