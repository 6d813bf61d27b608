"""How much memory a parallel solve needs, and whether it fits the device.

The parallel paths hold arrays a sequential scan never materialises: the Newton iterate and
its step outputs, the T structured Jacobians (T·D² for dense ones) and the scan's copies of
them. :func:`working_set_bytes` estimates that peak from the sizes alone (a deliberately
simple count, checked against XLA's ``memory_analysis`` in benchmarks/RESULTS.md), so the
automatic choices can avoid a path that cannot fit and an explicit choice that certainly
cannot fit fails with a clear error before XLA runs out of memory.
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp

from .structure import BLOCK, DENSE, Structure

__all__ = ["working_set_bytes", "device_memory_bytes", "check_fits", "WorkingSetError"]

# Counts of T-long arrays alive at the peak, measured against XLA's memory_analysis on CPU
# (benchmarks/RESULTS.md, "Memory guard"): the Newton loop holds the iterate, its step
# outputs, a candidate and its outputs, the Jacobians and the tree scan's working copies of
# (A, b); the adjoint holds the shifted transposed Jacobians and the scan's copies.
_FORWARD_STATES, _FORWARD_JACOBIANS = 8, 3
_BACKWARD_STATES, _BACKWARD_JACOBIANS = 6, 3


class WorkingSetError(MemoryError):
    """An explicitly requested parallel path cannot fit in the device's memory."""


def _jacobian_elems(structure: Structure, state_shape: tuple[int, ...], quasi: bool) -> int:
    n = math.prod(state_shape)
    if quasi:
        return n
    if structure is DENSE:
        return n * n
    if structure is BLOCK:
        return n * state_shape[0]
    return n


def working_set_bytes(structure: Structure, length: int, state_shape: tuple[int, ...], dtype,
                      *, pass_: str, method: str = "newton", batch: int = 1) -> int:
    """Peak bytes of the parallel ``pass_`` (``"forward"`` Newton/quasi iterations, or
    ``"backward"`` parallel adjoint) for ``batch`` sequences of ``length`` steps.

    Half-precision states are solved with float32 scans, so they count as 4 bytes."""
    itemsize = max(jnp.dtype(dtype).itemsize, 4)
    states = batch * length * math.prod(state_shape)
    if pass_ == "forward":
        jac = batch * length * _jacobian_elems(structure, state_shape, method == "quasi")
        count = _FORWARD_STATES * states + _FORWARD_JACOBIANS * jac
    elif pass_ == "backward":
        jac = batch * length * _jacobian_elems(structure, state_shape, False)
        count = _BACKWARD_STATES * states + _BACKWARD_JACOBIANS * jac
    else:
        raise ValueError(f"pass_ must be 'forward' or 'backward', got {pass_!r}.")
    return itemsize * count


def device_memory_bytes(backend: str | None = None) -> int | None:
    """Memory of one device of ``backend`` (default: JAX's default): the accelerator's
    ``bytes_limit``, or the host's physical memory for the CPU; None if unknown."""
    try:
        device = jax.local_devices(backend=backend)[0]
    except RuntimeError:
        return None
    stats = None
    try:
        stats = device.memory_stats()
    except Exception:  # not every backend implements it
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    if device.platform == "cpu":
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return None
    return None


def fits(nbytes: int, fraction: float = 0.5, backend: str | None = None) -> bool:
    """Whether ``nbytes`` stays within ``fraction`` of the device's memory (True if unknown)."""
    total = device_memory_bytes(backend)
    return total is None or nbytes <= fraction * total


def check_fits(nbytes: int, what: str, sizes: str, alternative: str,
               backend: str | None = None) -> None:
    """Raise :class:`WorkingSetError` if ``nbytes`` exceeds the device's whole memory."""
    total = device_memory_bytes(backend)
    if total is not None and nbytes > total:
        raise WorkingSetError(
            f"{what} needs about {nbytes / 2**30:.1f} GiB ({sizes}), more than the device's "
            f"{total / 2**30:.1f} GiB. {alternative}")
