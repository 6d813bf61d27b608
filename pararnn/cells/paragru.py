"""ParaGRU: a GRU with diagonal recurrence, so its Jacobian is diagonal (O(T·D) solve).

With ``u = B x + b`` the input projection of all three gates,

    z  = σ(a_z ⊙ h + u_z)
    r  = σ(a_r ⊙ h + u_r)
    ĥ  = tanh(a_h ⊙ (r ⊙ h) + u_h)
    h' = z ⊙ ĥ + (1 − z) ⊙ h

``a = [a_z, a_r, a_h]`` are vectors; ``B`` is block-diagonal over ``num_heads`` heads, each
mapping ``in/heads`` inputs to ``3·hidden/heads`` gate pre-activations.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from .base import Cell, Params, check_divisible, clamp_recurrent, multihead_project
from .initializers import small_recurrent_normal, xavier_uniform


@dataclasses.dataclass(frozen=True)
class ParaGRUCell(Cell):
    """Args: in_features, hidden_features; num_heads of the input projection (default 2);
    max_recurrent_norm: optional bound on the effective |a| (default None: off, as in
    ParaRNN's code; benchmarks/RESULTS.md §16 measured no benefit of 0.5 in training), see
    :func:`pararnn.cells.base.clamp_recurrent`."""

    num_heads: int = 2
    max_recurrent_norm: float | None = None
    structure: ClassVar[str] = "diagonal"
    # One JVP fused with the step by XLA is as fast or faster than this hand-written
    # Jacobian, which recomputes the gates (CPU: 0.5–1.0× at hidden 64–256, RESULTS.md §6).
    solve_with_hand_jacobian: ClassVar[bool] = False

    def __post_init__(self):
        super().__post_init__()
        check_divisible("ParaGRU", in_features=(self.in_features, self.num_heads),
                        hidden_features=(self.hidden_features, self.num_heads))

    def init(self, key, dtype=jnp.float32) -> Params:
        """ParaRNN's init (its ``GRUDiagMH`` defaults; random draws differ, distributions are
        the same): ``a`` (3, H) ~ N(0, (2/√(5H))²); ``B`` (heads, in/heads, 3H/heads) Xavier
        uniform with ParaRNN's fans, U(±√(6 / (in/heads + H))) — fan-out the whole state;
        ``b`` (3, H) zero except the update gate's −linspace(0, 1): channels from long to
        short memory."""
        k_a, k_b = jax.random.split(key)
        h, heads = self.hidden_features, self.num_heads
        per_in, per_out = self.in_features // heads, 3 * h // heads
        a = small_recurrent_normal(k_a, (3, h), h, dtype)
        kernel = xavier_uniform(k_b, (heads, per_in, per_out), per_in, h, dtype)
        bias = jnp.zeros((3, h), dtype).at[0].set(-jnp.linspace(0.0, 1.0, h, dtype=dtype))
        return {"a": a, "B": kernel, "b": bias}

    def project(self, params, x):
        """``x (..., in)`` → ``u (..., 3, hidden)`` = [u_z, u_r, u_h]."""
        return multihead_project(x, params["B"], params["b"], 3)

    def _gates(self, h, u, params):
        a = clamp_recurrent(params["a"], self.max_recurrent_norm)
        z = jax.nn.sigmoid(a[0] * h + u[0])
        r = jax.nn.sigmoid(a[1] * h + u[1])
        cand = jnp.tanh(a[2] * (r * h) + u[2])
        return a, z, r, cand

    def step(self, h, u, params):
        _, z, _, cand = self._gates(h, u, params)
        return z * cand + (1 - z) * h

    def jacobian(self, h, u, params):
        """∂h'/∂h, diagonal, ``(hidden,)``:
        ∂z ⊙ (ĥ − h) + z ⊙ ∂ĥ + (1 − z), with ∂z = a_z z(1−z),
        ∂ĥ = (1 − ĥ²) a_h (r + h ⊙ a_r r(1−r))."""
        a, z, r, cand = self._gates(h, u, params)
        dz = a[0] * z * (1 - z)
        dr = a[1] * r * (1 - r)
        dcand = (1 - cand * cand) * a[2] * (r + h * dr)
        return dz * (cand - h) + z * dcand + (1 - z)

    jacobian_diagonal = jacobian  # the Jacobian is diagonal
