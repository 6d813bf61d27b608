"""Linear interpolation of parameters and the loss barrier along the segment between them."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np
import jax
import jax.numpy as jnp

from .paths import flatten, path_string


def _check_same_structure(params_a, params_b, what="params_b"):
    sa, sb = jax.tree_util.tree_structure(params_a), jax.tree_util.tree_structure(params_b)
    if sa != sb:
        raise ValueError(f"{what} must have the same pytree structure as params_a; got\n  {sb}\nvs\n  {sa}.")
    fa, _ = flatten(params_a)
    fb, _ = flatten(params_b)
    for (path, a), b in zip(fa.items(), fb.values()):
        if jnp.shape(a) != jnp.shape(b):
            raise ValueError(f"parameter {path!r}: shape {jnp.shape(b)} in {what}, {jnp.shape(a)} in params_a.")


def interpolate(params_a: Any, params_b: Any, alpha: float | jax.Array) -> Any:
    """θ_α = α·θ_a + (1 − α)·θ_b for every leaf of two pytrees of the same structure.

    ``alpha = 1`` returns θ_a and ``alpha = 0`` returns θ_b exactly (``1·a + 0·b`` is exact in
    floating point). ``alpha`` is cast to each leaf's dtype, so float32 parameters stay
    float32 (and strict dtype promotion is respected). Non-float leaves (integer counters)
    must be equal in both trees and are passed through.
    """
    _check_same_structure(params_a, params_b)

    def mix(path, a, b):
        a, b = jnp.asarray(a), jnp.asarray(b)
        if not jnp.issubdtype(a.dtype, jnp.inexact):
            if isinstance(a, jax.core.Tracer) or isinstance(b, jax.core.Tracer):
                raise TypeError(f"parameter {path_string(path)!r} has non-float dtype {a.dtype}: under "
                                f"jit its equality cannot be checked; interpolate outside jit or pass "
                                f"only the float parameters.")
            if not bool(jnp.all(a == b)):
                raise TypeError(f"parameter {path_string(path)!r} has non-float dtype {a.dtype} and differs "
                                f"between the two models; only float leaves can be interpolated.")
            return a
        if a.dtype != b.dtype:
            raise TypeError(f"parameter {path_string(path)!r}: dtype {b.dtype} in params_b, {a.dtype} in params_a.")
        w = jnp.asarray(alpha).astype(a.dtype)
        return w * a + (jnp.ones((), a.dtype) - w) * b

    return jax.tree_util.tree_map_with_path(mix, params_a, params_b)


@dataclasses.dataclass(frozen=True)
class Barrier:
    """Result of :func:`loss_barrier`.

    Attributes:
      alphas: (K,) the interpolation weights α (weight of θ_a).
      losses: (K,) L(θ_α).
      linear: (K,) the chord α·L(θ_a) + (1 − α)·L(θ_b).
      barrier: max over α of ``losses − linear`` (0 for a convex path; the endpoints
        contribute 0 when they are among ``alphas``).
      loss_a, loss_b: L(θ_a), L(θ_b).
    """

    alphas: np.ndarray
    losses: np.ndarray
    linear: np.ndarray
    barrier: float
    loss_a: float
    loss_b: float

    @property
    def alpha_at_max(self) -> float:
        """The α where the barrier is attained."""
        return float(self.alphas[int(np.argmax(self.losses - self.linear))])


def loss_barrier(loss_fn: Callable[[Any], jax.Array], params_a: Any, params_b: Any,
                 alphas: jax.Array | np.ndarray | None = None) -> Barrier:
    """The loss along the segment θ_α = α θ_a + (1 − α) θ_b and its barrier.

    Args:
      loss_fn: ``loss_fn(params) -> scalar`` (jit it yourself for speed; it is called once
        per alpha plus once per endpoint).
      params_a, params_b: pytrees of the same structure.
      alphas: (K,) weights of θ_a in [0, 1]; default ``jnp.linspace(0, 1, 11)``.

    Returns:
      :class:`Barrier` with ``barrier = max_α L(θ_α) − (α L(θ_a) + (1 − α) L(θ_b))``.
    """
    alphas = np.asarray(jnp.linspace(0.0, 1.0, 11) if alphas is None else alphas, dtype=np.float64)
    if alphas.ndim != 1 or alphas.size < 1:
        raise ValueError(f"alphas must be a non-empty 1-D array, got shape {alphas.shape}.")
    if not np.all(np.isfinite(alphas)):
        raise ValueError(f"alphas must be finite, got {alphas}.")

    def evaluate(p) -> float:
        value = jnp.asarray(loss_fn(p))
        if value.shape != ():
            raise ValueError(f"loss_fn must return a scalar, got shape {value.shape}.")
        return float(value)

    loss_a, loss_b = evaluate(params_a), evaluate(params_b)
    losses = np.array([evaluate(interpolate(params_a, params_b, float(a))) for a in alphas])
    linear = alphas * loss_a + (1.0 - alphas) * loss_b
    return Barrier(alphas=alphas, losses=losses, linear=linear, barrier=float(np.max(losses - linear)),
                   loss_a=loss_a, loss_b=loss_b)
