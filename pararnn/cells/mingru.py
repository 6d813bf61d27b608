"""MinGRU: a *linear* diagonal recurrence (Feng et al., 2024, "Were RNNs all we needed?").

The gates read only the input, so the state enters linearly::

    z  = σ(u_z),  ĥ = u_h,  h' = (1 − z) ⊙ h + z ⊙ ĥ

It is the linear-RNN baseline of the synthetic tasks (parity, MQAR): the same layer
interface as ParaGRU, but a linear recurrence cannot track state the way a nonlinear one
can. Its Jacobian ``1 − z`` does not depend on ``h``, so one Newton step solves it exactly.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from .base import Cell, Params, check_divisible, multihead_project
from .initializers import xavier_uniform


@dataclasses.dataclass(frozen=True)
class MinGRUCell(Cell):
    """Args: in_features, hidden_features; num_heads of the input projection (default 2)."""

    num_heads: int = 2
    structure: ClassVar[str] = "diagonal"

    def __post_init__(self):
        super().__post_init__()
        check_divisible("MinGRU", in_features=(self.in_features, self.num_heads),
                        hidden_features=(self.hidden_features, self.num_heads))

    def init(self, key, dtype=jnp.float32) -> Params:
        """``B`` (heads, in/heads, 2H/heads) Xavier uniform; ``b`` (2, H) zero except the
        update gate's −linspace(0, 1) (long to short memory, as ParaGRU)."""
        h, heads = self.hidden_features, self.num_heads
        per_in, per_out = self.in_features // heads, 2 * h // heads
        kernel = xavier_uniform(key, (heads, per_in, per_out), per_in, per_out, dtype)
        bias = jnp.zeros((2, h), dtype).at[0].set(-jnp.linspace(0.0, 1.0, h, dtype=dtype))
        return {"B": kernel, "b": bias}

    def project(self, params, x):
        """``x (..., in)`` → ``u (..., 2, hidden)`` = [u_z, u_h]."""
        return multihead_project(x, params["B"], params["b"], 2)

    def step(self, h, u, params):
        z = jax.nn.sigmoid(u[0])
        return (1 - z) * h + z * u[1]

    def jacobian(self, h, u, params):
        """∂h'/∂h = 1 − z, diagonal ``(hidden,)``, independent of ``h``."""
        return jnp.broadcast_to(1 - jax.nn.sigmoid(u[0]), h.shape)

    jacobian_diagonal = jacobian
