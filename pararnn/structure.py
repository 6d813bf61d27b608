"""Jacobian structures: how one step's Jacobian ∂h_t/∂h_{t-1} is stored and applied.

Every algorithm in :mod:`pararnn.scan` and :mod:`pararnn.newton` is written once against
the small interface below; a structure says how a Jacobian ``A`` acts on a state ``h``.

=========  ==================  ======================  =====================================
name       state ``h``          one Jacobian ``A``       meaning
=========  ==================  ======================  =====================================
diagonal   any shape ``S``      ``S`` (elementwise)      ``A h = A * h``
block      ``(K, N)``           ``(N, K, K)``            ``(A h)[:, n] = A[n] @ h[:, n]``
dense      ``(D,)``             ``(D, D)``               ``A h = A @ h``
=========  ==================  ======================  =====================================

All methods broadcast over any number of leading axes (time, chunks, vmap), so ``A`` of
shape ``(T, N, K, K)`` applies to ``h`` of shape ``(T, K, N)``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["Structure", "DIAGONAL", "BLOCK", "DENSE", "get_structure", "STRUCTURE_NAMES"]

# Dense combines are matrix products; on A100/H100 float32 matmuls default to TF32, which
# raises the error floor of a long product chain to ~1e-3. Ask for full precision.
_PRECISION = lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class Structure:
    """Base class. Subclasses are stateless singletons; compare them with ``is``."""

    name: ClassVar[str] = ""

    def jacobian_shape(self, state_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of one step's Jacobian for a state of ``state_shape``."""
        raise NotImplementedError

    def check_state_shape(self, state_shape: tuple[int, ...], what: str) -> None:
        """Raise ValueError if a state of this shape cannot carry this structure."""
        raise NotImplementedError

    def apply(self, a: jax.Array, h: jax.Array) -> jax.Array:
        """``A h`` with broadcasting over leading axes."""
        raise NotImplementedError

    def compose(self, a2: jax.Array, a1: jax.Array) -> jax.Array:
        """``A2 A1`` (apply ``A1`` first), broadcasting over leading axes."""
        raise NotImplementedError

    def transpose(self, a: jax.Array) -> jax.Array:
        """``Aᵀ`` (the adjoint recurrence runs on transposed Jacobians)."""
        raise NotImplementedError

    def identity(self, state_shape: tuple[int, ...], dtype, lead: tuple[int, ...] = ()) -> jax.Array:
        """Identity Jacobians of shape ``lead + jacobian_shape(state_shape)``."""
        raise NotImplementedError

    def diagonal(self, a: jax.Array) -> jax.Array:
        """The diagonal of ``A`` laid out like the state (what quasi-Newton keeps)."""
        raise NotImplementedError

    def identity_like(self, a: jax.Array) -> jax.Array:
        """Identity Jacobians of ``a``'s shape and dtype."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class _Diagonal(Structure):
    name: ClassVar[str] = "diagonal"

    def jacobian_shape(self, state_shape):
        return tuple(state_shape)

    def check_state_shape(self, state_shape, what):
        # Elementwise: any state shape works, (D,) being the common case.
        return None

    def apply(self, a, h):
        return a * h

    def compose(self, a2, a1):
        return a2 * a1

    def transpose(self, a):
        return a

    def identity(self, state_shape, dtype, lead=()):
        return jnp.ones(tuple(lead) + tuple(state_shape), dtype)

    def diagonal(self, a):
        return a

    def identity_like(self, a):
        return jnp.ones_like(a)


@dataclasses.dataclass(frozen=True)
class _Block(Structure):
    name: ClassVar[str] = "block"

    def jacobian_shape(self, state_shape):
        k, n = state_shape
        return (n, k, k)

    def check_state_shape(self, state_shape, what):
        if len(state_shape) != 2:
            raise ValueError(
                f"{what} must be 2-D (K, N) for jacobian='block' (one K×K block per channel n), "
                f"got shape {tuple(state_shape)}."
            )

    # Blocks up to this size are multiplied as K unrolled elementwise products: XLA lowers the
    # batched K×K einsum to many tiny matmuls, measured 2–100× slower on CPU for K = 2…16
    # (worst at K = 4–6); the elementwise form fuses into one loop over the batch.
    unroll_max: ClassVar[int] = 16

    def apply(self, a, h):
        k = a.shape[-1]
        if k > self.unroll_max:
            return jnp.einsum("...nij,...jn->...in", a, h, precision=_PRECISION)
        # out[i, n] = Σ_j a[n, i, j] h[j, n]
        return sum(jnp.swapaxes(a[..., j], -1, -2) * h[..., j : j + 1, :] for j in range(k))

    def compose(self, a2, a1):
        k = a2.shape[-1]
        if k > self.unroll_max:
            return jnp.einsum("...nij,...njk->...nik", a2, a1, precision=_PRECISION)
        # out[n, i, l] = Σ_j a2[n, i, j] a1[n, j, l]
        return sum(a2[..., :, j, None] * a1[..., None, j, :] for j in range(k))

    def transpose(self, a):
        return jnp.swapaxes(a, -1, -2)

    def identity(self, state_shape, dtype, lead=()):
        k, n = state_shape
        return jnp.broadcast_to(jnp.eye(k, dtype=dtype), tuple(lead) + (n, k, k))

    def diagonal(self, a):
        return jnp.swapaxes(jnp.diagonal(a, axis1=-2, axis2=-1), -1, -2)

    def identity_like(self, a):
        return jnp.broadcast_to(jnp.eye(a.shape[-1], dtype=a.dtype), a.shape)


@dataclasses.dataclass(frozen=True)
class _Dense(Structure):
    name: ClassVar[str] = "dense"

    def jacobian_shape(self, state_shape):
        (d,) = state_shape
        return (d, d)

    def check_state_shape(self, state_shape, what):
        if len(state_shape) != 1:
            raise ValueError(
                f"{what} must be 1-D (D,) for jacobian='dense', got shape {tuple(state_shape)}."
            )

    def apply(self, a, h):
        return jnp.einsum("...ij,...j->...i", a, h, precision=_PRECISION)

    def compose(self, a2, a1):
        return jnp.matmul(a2, a1, precision=_PRECISION)

    def transpose(self, a):
        return jnp.swapaxes(a, -1, -2)

    def identity(self, state_shape, dtype, lead=()):
        (d,) = state_shape
        return jnp.broadcast_to(jnp.eye(d, dtype=dtype), tuple(lead) + (d, d))

    def diagonal(self, a):
        return jnp.diagonal(a, axis1=-2, axis2=-1)

    def identity_like(self, a):
        return jnp.broadcast_to(jnp.eye(a.shape[-1], dtype=a.dtype), a.shape)


DIAGONAL: Structure = _Diagonal()
BLOCK: Structure = _Block()
DENSE: Structure = _Dense()

_BY_NAME = {s.name: s for s in (DIAGONAL, BLOCK, DENSE)}
STRUCTURE_NAMES = tuple(_BY_NAME)


def get_structure(structure: str | Structure, argname: str = "structure") -> Structure:
    """Look up a structure by name; ``argname`` names the argument in the error."""
    if isinstance(structure, Structure):
        return structure
    if isinstance(structure, str) and structure in _BY_NAME:
        return _BY_NAME[structure]
    raise ValueError(f"{argname} must be one of {STRUCTURE_NAMES}, got {structure!r}.")
