"""Feedforward layers for the Align rules: pure functions over parameter dicts.

Every layer splits into its *local* part ``pre(params, record) -> z`` — linear in
``params`` with the layer's presynaptic ``record`` (its input) held fixed — and an
elementwise ``activation`` that the *next* layer applies to ``z``. The learning rules only
need three things from a layer (see :mod:`pararnn.align.stack`):

- ``forward(params, a, eps, feedback)``: ``z = pre(params, a) + eps`` and the record ``a``;
  ``eps`` (zeros) marks where the deltas δ = ∂L/∂z are read off, ``feedback`` (optional)
  swaps the weights used in the backward pass for fixed random ones (feedback alignment);
- ``pre``: the local gradient of a rule is ``VJP_params pre(params, record)`` applied to
  that rule's δ;
- ``init(key, dtype)``.

Parameterisations: ``"ntk"`` (weights N(0, 1), the pre-activation scaled by
1/√fan_in, as in Boopathy & Fiete) or ``"standard"`` (weights N(0, 1/fan_in), no scale).
Biases start at zero in both.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

Params = dict[str, jax.Array]

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "identity": lambda z: z,
}
PARAMETERIZATIONS = ("ntk", "standard")


def check_choice(value: Any, choices, name: str, where: str) -> None:
    if value not in choices:
        raise ValueError(f"{where}: {name} must be one of {tuple(choices)}, got {value!r}.")


def check_positive_int(value: Any, name: str, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}: {name} must be a positive int, got {value!r}.")


def weight_init(key, shape, fan_in: int, parameterization: str, dtype, gain: float = 1.0):
    """N(0, gain²) for NTK (the forward pass divides by √fan_in), N(0, gain²/fan_in) else."""
    w = gain * jax.random.normal(key, shape, dtype)
    return w if parameterization == "ntk" else w / math.sqrt(fan_in)


def forward_scale(fan_in: int, parameterization: str) -> float:
    return 1.0 / math.sqrt(fan_in) if parameterization == "ntk" else 1.0


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def feedback_swap(pre: Callable, params: Any, feedback: Any, record: Any) -> jax.Array:
    """``pre(params, record)`` forward; backward to ``record`` through ``pre(feedback, ·)``.

    The forward value is exact (no ``x + y − y`` rounding); the cotangents of ``params``
    and ``feedback`` are zero — feedback alignment reads only the deltas from this pass
    and takes the weight updates locally.
    """
    return pre(params, record)


def _swap_fwd(pre, params, feedback, record):
    return pre(params, record), (params, feedback, record)


def _swap_bwd(pre, residuals, g):
    params, feedback, record = residuals
    _, vjp = jax.vjp(lambda r: pre(feedback, r), record)
    zeros = lambda t: jax.tree_util.tree_map(jnp.zeros_like, t)
    return zeros(params), zeros(feedback), vjp(g)[0]


feedback_swap.defvjp(_swap_fwd, _swap_bwd)


def _pre_or_swap(pre, params, feedback, record):
    return pre(params, record) if feedback is None else feedback_swap(pre, params, feedback, record)


def _add(z: jax.Array, eps: jax.Array | None) -> jax.Array:
    return z if eps is None else z + eps


@dataclasses.dataclass(frozen=True)
class Dense:
    """``z = a @ w · s + b`` on the last axis of ``a`` (``(..., in) → (..., out)``).

    Args:
      in_features, out_features: sizes.
      activation: applied by the *next* layer to this layer's ``z`` (ignored for the last).
      parameterization: ``"ntk"`` or ``"standard"``.
      flatten: flatten every axis after the batch axis first (after a conv layer).
    """

    in_features: int
    out_features: int
    activation: str = "relu"
    parameterization: str = "ntk"
    flatten: bool = False

    def __post_init__(self):
        for name in ("in_features", "out_features"):
            check_positive_int(getattr(self, name), name, "Dense")
        check_choice(self.activation, ACTIVATIONS, "activation", "Dense")
        check_choice(self.parameterization, PARAMETERIZATIONS, "parameterization", "Dense")

    def init(self, key: jax.Array, dtype: Any = jnp.float32) -> Params:
        w = weight_init(key, (self.in_features, self.out_features), self.in_features,
                        self.parameterization, dtype)
        return {"w": w, "b": jnp.zeros((self.out_features,), dtype)}

    def pre(self, params: Params, a: jax.Array) -> jax.Array:
        """``a (..., in)`` → ``z (..., out)``; linear in ``params``."""
        s = forward_scale(self.in_features, self.parameterization)
        return jnp.matmul(a, params["w"]) * s + params["b"]

    def forward(self, params: Params, a: jax.Array, eps=None, feedback=None):
        if self.flatten:
            a = a.reshape(a.shape[0], -1)
        if a.shape[-1] != self.in_features:
            raise ValueError(f"Dense: input of shape {a.shape} has last axis {a.shape[-1]}, "
                             f"expected in_features={self.in_features}.")
        return _add(_pre_or_swap(self.pre, params, feedback, a), eps), a


@dataclasses.dataclass(frozen=True)
class Conv2D:
    """``z = conv(a, w) · s + b``, NHWC, stride 1, ``"SAME"`` padding, fan_in = k²·c_in.

    ``a (batch, H, W, in_channels)`` → ``z (batch, H, W, out_channels)``.
    """

    in_channels: int
    out_channels: int
    kernel_size: int = 3
    activation: str = "relu"
    parameterization: str = "ntk"

    def __post_init__(self):
        for name in ("in_channels", "out_channels", "kernel_size"):
            check_positive_int(getattr(self, name), name, "Conv2D")
        check_choice(self.activation, ACTIVATIONS, "activation", "Conv2D")
        check_choice(self.parameterization, PARAMETERIZATIONS, "parameterization", "Conv2D")

    @property
    def fan_in(self) -> int:
        return self.kernel_size * self.kernel_size * self.in_channels

    def init(self, key: jax.Array, dtype: Any = jnp.float32) -> Params:
        k = self.kernel_size
        w = weight_init(key, (k, k, self.in_channels, self.out_channels), self.fan_in,
                        self.parameterization, dtype)
        return {"w": w, "b": jnp.zeros((self.out_channels,), dtype)}

    def pre(self, params: Params, a: jax.Array) -> jax.Array:
        z = jax.lax.conv_general_dilated(a, params["w"], (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return z * forward_scale(self.fan_in, self.parameterization) + params["b"]

    def forward(self, params: Params, a: jax.Array, eps=None, feedback=None):
        if a.ndim != 4 or a.shape[-1] != self.in_channels:
            raise ValueError(f"Conv2D: input of shape {a.shape}, expected (batch, H, W, "
                             f"{self.in_channels}).")
        return _add(_pre_or_swap(self.pre, params, feedback, a), eps), a
