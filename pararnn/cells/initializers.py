"""Parameter initialisers shared by the cells (explicit keys, dtype as asked)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def xavier_uniform(key: jax.Array, shape: tuple[int, ...], fan_in: int, fan_out: int, dtype) -> jax.Array:
    """Glorot/Xavier uniform: U(−l, l) with l = √(6 / (fan_in + fan_out))."""
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return jax.random.uniform(key, shape, dtype, -limit, limit)


def lecun_normal(key: jax.Array, shape: tuple[int, ...], fan_in: int, dtype) -> jax.Array:
    """Truncated-free LeCun normal: N(0, 1/fan_in)."""
    return jax.random.normal(key, shape, dtype) / math.sqrt(fan_in)


def small_recurrent_normal(key: jax.Array, shape: tuple[int, ...], fan_in: int, dtype) -> jax.Array:
    """ParaRNN's init of diagonal recurrent weights: N(0, (2 / √(5·fan_in))²) — small, so
    the recurrence starts contractive and Newton converges in a few iterations."""
    return (2.0 / math.sqrt(5.0 * fan_in)) * jax.random.normal(key, shape, dtype)


def orthogonal(key: jax.Array, n: int, dtype, scale: float = 1.0) -> jax.Array:
    """A random (n, n) orthogonal matrix times ``scale``."""
    return scale * jax.nn.initializers.orthogonal()(key, (n, n), dtype)
