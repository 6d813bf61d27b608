"""An Elman RNN layer for the Align rules, solved by :func:`pararnn.solve`.

The cell keeps the *pre-activation* ``z_t`` as its state, so that the deltas the rules need
(δ_t = ∂L/∂z_t) are the adjoint of the solve itself::

    z_t = φ(z_{t−1}) · W_h · s_h + x_t · W_i · s_i + b        (dense recurrence)
    z_t = a ⊙ φ(z_{t−1}) + x_t · W_i · s_i + b                (diagonal recurrence)

with z_{−1} = 0 (so h_{−1} = φ(0) = 0 for relu and tanh). The layer outputs z; the next
layer applies φ. The presynaptic record of the layer is ``(x_t, h_{t−1} = φ(z_{t−1}))`` for
all t, and ``pre(params, record)`` recomputes z linearly in the parameters.

Modes: ``"parallel"`` solves with Newton (parallel scans) and differentiates through the
solve's custom VJP — the adjoint λ_t = g_t + J_{t+1}ᵀ λ_{t+1} as a *parallel reverse scan*;
``"sequential"`` is a plain ``lax.scan`` differentiated by autodiff (BPTT). Feedback
alignment always runs the ``lax.scan`` form, because its backward pass uses the random
feedback weights instead of the Jacobian the solver's VJP is built from.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from ..cells.base import Cell, Params
from ..newton import solve
from .layers import (ACTIVATIONS, PARAMETERIZATIONS, _add, _pre_or_swap, check_choice,
                     forward_scale, weight_init)

RECURRENCES = ("dense", "diagonal")
MODES = ("parallel", "sequential")


def _dphi(activation: str, z: jax.Array) -> jax.Array:
    """φ'(z) for the cell's activation (relu' = 1[z > 0], as JAX's relu gradient)."""
    if activation == "relu":
        return (z > 0).astype(z.dtype)
    if activation == "tanh":
        t = jnp.tanh(z)
        return 1 - t * t
    return jnp.ones_like(z)


@dataclasses.dataclass(frozen=True)
class AlignElmanCell(Cell):
    """A :class:`pararnn.cells.Cell` over pre-activations (see the module docstring).

    Args:
      in_features, hidden_features: sizes.
      activation: φ, ``"relu"`` (the paper's), ``"tanh"`` or ``"identity"``.
      recurrence: ``"dense"`` (W_h (D, D)) or ``"diagonal"`` (a (D,), O(T·D) solves).
      parameterization: ``"ntk"`` (N(0, 1) weights, s = gain/√fan_in) or ``"standard"``.
      gain: scale of the recurrent weights (dense: spectral radius ≈ gain before φ;
        diagonal: a ~ U(−gain, gain), the same in both parameterisations).
    """

    activation: str = "relu"
    recurrence: str = "dense"
    parameterization: str = "ntk"
    gain: float = 1.0


    def __post_init__(self):
        super().__post_init__()
        check_choice(self.activation, ACTIVATIONS, "activation", "AlignElmanCell")
        check_choice(self.recurrence, RECURRENCES, "recurrence", "AlignElmanCell")
        check_choice(self.parameterization, PARAMETERIZATIONS, "parameterization", "AlignElmanCell")
        if not isinstance(self.gain, (int, float)) or not self.gain > 0:
            raise ValueError(f"AlignElmanCell: gain must be a positive number, got {self.gain!r}.")

    def init(self, key: jax.Array, dtype: Any = jnp.float32) -> Params:
        k_i, k_h = jax.random.split(key)
        n, d = self.in_features, self.hidden_features
        if self.recurrence == "dense":
            w_h = weight_init(k_h, (d, d), d, self.parameterization, dtype, self.gain)
        else:
            w_h = jax.random.uniform(k_h, (d,), dtype, -self.gain, self.gain)
        return {"w_i": weight_init(k_i, (n, d), n, self.parameterization, dtype),
                "b": jnp.zeros((d,), dtype), "w_h": w_h}

    @property
    def structure(self) -> str:  # the Cell interface's Jacobian structure, per instance
        return self.recurrence

    @property
    def _rec_scale(self) -> float:
        if self.recurrence == "diagonal":
            return 1.0
        return forward_scale(self.hidden_features, self.parameterization)

    def project(self, params: Params, x: jax.Array) -> jax.Array:
        """``x (..., in)`` → ``(..., D)``: x·W_i·s_i + b."""
        s = forward_scale(self.in_features, self.parameterization)
        return jnp.matmul(x, params["w_i"]) * s + params["b"]

    def recurrent_pre(self, params: Params, h: jax.Array) -> jax.Array:
        """The recurrent term of z for presynaptic ``h (..., D)``; linear in ``params``."""
        if self.recurrence == "diagonal":
            return params["w_h"] * h
        return jnp.matmul(h, params["w_h"]) * self._rec_scale

    def phi(self, z: jax.Array) -> jax.Array:
        return ACTIVATIONS[self.activation](z)

    def step(self, z: jax.Array, u: jax.Array, params: Params) -> jax.Array:
        return self.recurrent_pre(params, self.phi(z)) + u

    def jacobian(self, z: jax.Array, u: jax.Array, params: Params) -> jax.Array:
        """∂z_t/∂z_{t−1}: ``(D, D)`` = s·W_hᵀ·diag(φ'(z)) (dense) or ``(D,)`` a ⊙ φ'(z)."""
        dphi = _dphi(self.activation, z)
        if self.recurrence == "diagonal":
            return params["w_h"] * dphi
        return params["w_h"].T * dphi[None, :] * self._rec_scale


@dataclasses.dataclass(frozen=True)
class RNNLayer:
    """``x (batch, T, in)`` → ``z (batch, T, D)``: the :class:`AlignElmanCell` over time.

    Args:
      cell: the cell.
      mode: ``"parallel"`` (pararnn.solve, Newton; parallel adjoint) or ``"sequential"``
        (``lax.scan``; BPTT by autodiff). Same numbers up to the solver tolerance.
      method: the solver method in parallel mode (``"newton"`` or ``"quasi"``).
    """

    cell: AlignElmanCell
    mode: str = "parallel"
    method: str = "newton"

    def __post_init__(self):
        check_choice(self.mode, MODES, "mode", "RNNLayer")
        check_choice(self.method, ("newton", "quasi"), "method", "RNNLayer")

    @property
    def activation(self) -> str:
        return self.cell.activation

    def init(self, key: jax.Array, dtype: Any = jnp.float32) -> Params:
        return self.cell.init(key, dtype)

    def pre(self, params: Params, record) -> jax.Array:
        """``record = (x (B, T, in), h_prev (B, T, D))`` → z; linear in ``params``."""
        x, h_prev = record
        return self.cell.project(params, x) + self.cell.recurrent_pre(params, h_prev)

    def _solve(self, params: Params, u: jax.Array) -> jax.Array:
        cell, z0 = self.cell, jnp.zeros((self.cell.hidden_features,), u.dtype)
        rec = {"w_h": params["w_h"]}
        if self.mode == "parallel":
            # diagonal recurrence: quasi-Newton is Newton, so the method only matters for dense
            one = lambda u1: solve(cell.step, z0, u1, rec, jacobian=cell.jacobian,
                                   method=self.method)
            # NB: in pararnn 0.1.0 a Newton solve that overflows (seen with a dense tanh
            # recurrence near the edge of chaos, T = 1000) can return NaN states flagged as
            # converged; they then show as NaN outputs — use mode="sequential" there.
            return jax.vmap(one)(u)
        return self._scan(lambda z, u_t: cell.step(z, u_t, rec), u)

    @staticmethod
    def _scan(step, u: jax.Array) -> jax.Array:
        def body(z, u_t):
            z = step(z, u_t)
            return z, z
        z0 = jnp.zeros(u.shape[:1] + u.shape[2:], u.dtype)
        return jnp.swapaxes(lax.scan(body, z0, jnp.swapaxes(u, 0, 1))[1], 0, 1)

    def forward(self, params: Params, x: jax.Array, eps=None, feedback=None):
        cell = self.cell
        if x.ndim != 3 or x.shape[-1] != cell.in_features:
            raise ValueError(f"RNNLayer: input of shape {x.shape}, expected (batch, time, "
                             f"{cell.in_features}).")
        u = _add(_pre_or_swap(cell.project, params, feedback, x), eps)
        if feedback is None:
            z = self._solve(params, u)
        else:  # FA: BPTT through lax.scan with the recurrent feedback weights swapped in
            step = lambda zp, u_t: _pre_or_swap(cell.recurrent_pre, params, feedback,
                                                 cell.phi(zp)) + u_t
            z = self._scan(step, u)
        h_prev = cell.phi(jnp.concatenate([jnp.zeros_like(z[:, :1]), z[:, :-1]], axis=1))
        return z, (x, h_prev)
