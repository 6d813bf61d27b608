"""Steps for the fused-kernel tests: pararnn's ParaGRU, ParaLSTM and MinGRU cells and a
user-written elementwise step, each with an independent NumPy float64 step (written from the
cells' equations) for the reference loop.

The library cells' steps run on projected inputs ``u``; the projection is data preparation
here (done once in float32), the recurrence is what the kernels solve.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import jax
import jax.numpy as jnp

from pararnn.cells import MinGRUCell, ParaGRUCell, ParaLSTMCell

IN_FEATURES = 8


def _sig(v):
    return 1.0 / (1.0 + np.exp(-v))


# The cells' optional soft bound m·tanh(a / m) on recurrent weights (max_recurrent_norm); the
# Para cells default to none, as here.
MAX_RECURRENT_NORM = None


def _clamp(a, m=MAX_RECURRENT_NORM):
    return a if m is None else m * np.tanh(a / m)


def np_paragru(h, u, p):
    a = _clamp(p["a"])
    z = _sig(a[0] * h + u[0])
    r = _sig(a[1] * h + u[1])
    cand = np.tanh(a[2] * (r * h) + u[2])
    return z * cand + (1 - z) * h


def np_paralstm(s, u, p):
    a, q = _clamp(p["a"]), _clamp(p["p"])
    c, h = s
    f = _sig(a[0] * h + u[0] + q[0] * c)
    cand = np.tanh(a[1] * h + u[1])
    c_new = f * c + (1 - f) * cand
    o = _sig(a[2] * h + u[2] + q[1] * c_new)
    return np.stack([c_new, o * np.tanh(c_new)])


def np_mingru(h, u, p):
    z = _sig(u[0])
    return (1 - z) * h + z * u[1]


# A user-written step: per-channel weights from a closed-over array, a shared scalar gain,
# a per-gate pair of shared weights, a per-channel input and a per-time-step scalar input.
def make_user_step(d: int):
    w = jnp.linspace(0.2, 0.9, d, dtype=jnp.float32)

    def user_step(h, x, p):
        return jnp.tanh(w * h + p["gain"] * x["u"] + x["s"]) * p["mix"][0] + p["mix"][1] * h

    def np_step(h, x, p):
        wn = np.linspace(0.2, 0.9, d, dtype=np.float32).astype(np.float64)
        return np.tanh(wn * h + p["gain"] * x["u"] + x["s"]) * p["mix"][0] + p["mix"][1] * h

    return user_step, np_step


@dataclasses.dataclass
class Case:
    name: str
    jacobian: str
    step: Callable
    np_step: Callable
    h0: jax.Array
    xs: object  # pytree, leading axis T
    params: object

    def numpy_loop(self) -> np.ndarray:
        """The float64 sequential reference on the same (float32-rounded) numbers."""
        to64 = lambda tree: jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)
        p, xs, h = to64(self.params), to64(self.xs), np.asarray(self.h0, np.float64)
        t = jax.tree_util.tree_leaves(xs)[0].shape[0]
        out = np.empty((t,) + h.shape)
        for i in range(t):
            h = self.np_step(h, jax.tree_util.tree_map(lambda l: l[i], xs), p)
            out[i] = h
        return out


def make_case(name: str, t: int, d: int = 64, seed: int = 0, dtype=jnp.float32) -> Case:
    """A case with hidden size ``d`` (two programs of 32 channels at d = 64)."""
    k_p, k_x, k_h = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(k_x, (t, IN_FEATURES), jnp.float32)
    cast = lambda tree: jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), tree)
    if name == "user":
        step, np_step = make_user_step(d)
        xs = {"u": jax.random.normal(k_x, (t, d), jnp.float32),
              "s": 0.3 * jax.random.normal(k_h, (t,), jnp.float32)}
        params = {"gain": jnp.asarray(0.7, jnp.float32), "mix": jnp.asarray([0.6, 0.3], jnp.float32)}
        return Case(name, "diagonal", step, np_step, jnp.zeros((d,), dtype), cast(xs), cast(params))
    bound = dict(max_recurrent_norm=MAX_RECURRENT_NORM)
    cell, np_step = {"paragru": (ParaGRUCell(IN_FEATURES, d, **bound), np_paragru),
                     "paralstm": (ParaLSTMCell(IN_FEATURES, d, **bound), np_paralstm),
                     "mingru": (MinGRUCell(IN_FEATURES, d), np_mingru)}[name]
    params = cell.init(k_p)
    u = cell.project(params, x)
    h0 = 0.3 * jax.random.normal(k_h, cell.state_shape, jnp.float32)
    return Case(name, cell.structure, cell.step, np_step, cast(h0), cast(u), cast(params))


CASE_NAMES = ("paragru", "paralstm", "mingru", "user")
