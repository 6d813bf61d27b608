"""``method="auto"``: choose between the parallel Newton solve and the sequential scan.

The choice is made at trace time from the backend and the static sizes, using crossovers
measured by ``benchmarks/solver.py`` (numbers and machines in benchmarks/RESULTS.md):

- CPU: with few cores the sequential ``lax.scan`` wins at every measured size and structure
  (the parallel solve does several Newton passes of ~3× the sequential work each), so auto
  picks ``"sequential"``.
- GPU/TPU: not yet measured by this project. Until it is, auto follows the published
  measurements of ParaRNN and DEER: Newton for diagonal and small block states once the
  sequence is long enough to amortise the iterations; dense Jacobians only for small states,
  where their O(D³) combines stay cheap, and with quasi-Newton beyond that.
"""

from __future__ import annotations

import jax

from .structure import BLOCK, DENSE, DIAGONAL, Structure

__all__ = ["choose_method"]

# Accelerator thresholds (provisional, see module docstring).
_ACCEL_MIN_T = 256
_ACCEL_DENSE_NEWTON_MAX_D = 16
_ACCEL_DENSE_QUASI_MAX_D = 256


def choose_method(
    structure: Structure,
    length: int,
    state_shape: tuple[int, ...],
    backend: str | None = None,
) -> str:
    """The method ``"auto"`` resolves to: ``"newton"``, ``"quasi"`` or ``"sequential"``.

    Args:
      structure: the declared Jacobian structure.
      length: T, the number of time steps.
      state_shape: the shape of one state.
      backend: ``"cpu"``, ``"gpu"``, ``"tpu"`` (default: ``jax.default_backend()``).
    """
    backend = backend or jax.default_backend()
    if backend == "cpu" or length < _ACCEL_MIN_T:
        return "sequential"
    if structure is DIAGONAL or structure is BLOCK:
        return "newton"
    if structure is DENSE:
        d = state_shape[0]
        if d <= _ACCEL_DENSE_NEWTON_MAX_D:
            return "newton"
        if d <= _ACCEL_DENSE_QUASI_MAX_D:
            return "quasi"
        return "sequential"
    raise AssertionError(structure)
