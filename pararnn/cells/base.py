"""The cell interface: a recurrence as pure functions over a parameter dict.

A cell splits one recurrent step into the part that does not depend on the state — the
input projection, done for all time steps at once as one large matmul — and the recurrence
proper, ``step(h, u_t, params)``, which :func:`pararnn.solve` parallelises over time::

    u = cell.project(params, x)            # x (T, in_features) -> u (T, *cell.input_shape)
    hs = pararnn.solve(cell.step, cell.initial_state(), u, params,
                       jacobian=cell.jacobian or cell.structure)
    y = cell.output(hs)                    # (T, *state_shape) -> (T, hidden_features)

Cells are frozen dataclasses holding only static configuration, so they can be closed over
by jitted functions; parameters live in a plain dict of arrays.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp

Params = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Cell:
    """Base class. Subclasses set ``structure`` and implement the methods below.

    Attributes:
      in_features: size of each input vector.
      hidden_features: size of each output vector.
    """

    in_features: int
    hidden_features: int

    #: Jacobian structure of ``step`` w.r.t. the state: "diagonal", "block" or "dense".
    structure: ClassVar[str] = ""

    def __post_init__(self):
        for name in ("in_features", "hidden_features"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{type(self).__name__}: {name} must be a positive int, got {value!r}.")

    # ---- parameters -------------------------------------------------------------------------
    def init(self, key: jax.Array, dtype: Any = jnp.float32) -> Params:
        """Initial parameters: a dict of arrays of ``dtype``."""
        raise NotImplementedError

    # ---- the recurrence ---------------------------------------------------------------------
    @property
    def state_shape(self) -> tuple[int, ...]:
        """Shape of one state ``h``."""
        return (self.hidden_features,)

    def initial_state(self, dtype: Any = jnp.float32) -> jax.Array:
        """The zero state, ``state_shape``."""
        return jnp.zeros(self.state_shape, dtype)

    def project(self, params: Params, x: jax.Array) -> jax.Array:
        """Input projection of every time step: ``x (..., in_features)`` → ``u (..., *input_shape)``."""
        raise NotImplementedError

    def step(self, h: jax.Array, u: jax.Array, params: Params) -> jax.Array:
        """One step: state ``h`` (``state_shape``), projected input ``u`` → next state."""
        raise NotImplementedError

    #: Optional hand-written Jacobian ``jacobian(h, u, params)`` in the layout of
    #: ``structure`` (diagonal ``state_shape``, block ``(N, K, K)``, dense ``(D, D)``);
    #: None means autodiff.
    jacobian: ClassVar[Callable | None] = None

    #: Whether layers pass the hand-written ``jacobian`` to the solver (True) or let it
    #: differentiate ``step`` in the declared structure (False) — whichever measured faster
    #: (``benchmarks/jacobians.py``); both are exact.
    solve_with_hand_jacobian: ClassVar[bool] = True

    #: Optional ``jacobian_diagonal(h, u, params)``: only the diagonal of ∂step/∂h, shaped
    #: like the state; quasi-Newton iterates with it (O(D) instead of O(D²) per step).
    jacobian_diagonal: ClassVar[Callable | None] = None

    def output(self, states: jax.Array) -> jax.Array:
        """Map states ``(..., *state_shape)`` to outputs ``(..., hidden_features)``."""
        return states


def check_divisible(cls_name: str, **sizes_and_divisor) -> None:
    """``check_divisible("ParaGRU", in_features=(12, 5), ...)`` → ValueError naming the size."""
    for name, (value, divisor) in sizes_and_divisor.items():
        if value % divisor:
            raise ValueError(
                f"{cls_name}: {name}={value} must be divisible by num_heads={divisor}."
            )


def clamp_recurrent(a: jax.Array, max_norm: float | None) -> jax.Array:
    """The effective diagonal recurrence ``max_norm · tanh(a / max_norm)``: |·| < max_norm.

    A bound keeps the step contractive, so that Newton keeps converging in a few iterations
    whatever training does to the weights. ParaRNN's own code has none (a third-party config
    lists a norm clip of 0.5), and the Para cells default to none: on the tiny language model
    the 0.5 bound changed neither the loss nor the Newton iterations (benchmarks/RESULTS.md
    §16). The hypernetwork cells keep 0.5 (their recurrence is rescaled every step by an
    unbounded d). A soft clamp rather than ``clip``: ``clip`` has zero gradient outside the
    bound, so a weight that starts (or drifts) there would never move again. For |a| well
    below the bound it is the identity to first order.
    """
    return a if max_norm is None else max_norm * jnp.tanh(a / max_norm)


def multihead_project(x: jax.Array, kernel: jax.Array, bias: jax.Array, gates: int) -> jax.Array:
    """Block-diagonal projection ``x (..., in)`` → ``(..., gates, hidden)``.

    ``kernel`` is ``(heads, in/heads, gates·hidden/heads)``; head g maps input slice g to the
    ``gates`` pre-activations of hidden slice g. ``bias`` is ``(gates, hidden)``. One plain
    matmul per head, each reshaped gate-major and concatenated along the hidden axis: 3–4×
    faster on CPU than one einsum with a head batch axis, which XLA lowers with transposes.
    """
    heads, per_in, per_out = kernel.shape
    parts = [
        jnp.matmul(x[..., g * per_in:(g + 1) * per_in], kernel[g]).reshape(
            x.shape[:-1] + (gates, per_out // gates))
        for g in range(heads)
    ]
    return jnp.concatenate(parts, axis=-1) + bias
