"""What :func:`pararnn.solve` returns and raises, and its resolved configuration."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np
import jax

from .seq_parallel import SeqAxis
from .structure import Structure

__all__ = ["SolveInfo", "ConvergenceError", "SolveConfig", "not_converged_message"]


class SolveInfo(NamedTuple):
    """What a solve did. A pytree: it passes through jit/vmap/pmap (gaining batch axes).

    Attributes:
      iterations: int32, Newton (or quasi-Newton) iterations taken, rejected damped steps
        included; 0 for ``"sequential"``.
      residual: ``max_t max|hs[t] − step(hs[t−1], xs[t])|`` of the returned states.
      converged: whether the Newton iterate reached ``residual <= tol · max(1, max|hs|)``.
      fell_back: whether the returned states come from the sequential fallback.
      damping: the largest damping ``λ`` the iteration used (its Jacobians were attenuated
        by ``1/(1+λ)``); 0 when it ran undamped throughout.
      stalled: whether the iteration stopped early because the residual stopped falling
        (see :mod:`pararnn.newton_loop`), rather than at the iteration budget.
      rejected: int32, damped steps rejected because they made the residual blow up.

    Under ``seq_axis`` every field describes the whole sequence (the same on every device).
    """

    iterations: jax.Array
    residual: jax.Array
    converged: jax.Array
    fell_back: jax.Array
    damping: jax.Array
    stalled: jax.Array
    rejected: jax.Array


class ConvergenceError(RuntimeError):
    """Newton did not converge and ``fallback="raise"`` was requested."""


@dataclasses.dataclass(frozen=True)
class SolveConfig:
    """A solve's resolved, static options (hashable: it keys jit caches)."""

    structure: Structure
    method: str  # "newton" | "quasi" | "sequential"
    max_iters: int
    patience: int
    damping: str | float
    tol: float
    fallback: str
    algorithm: str
    raise_in_graph: bool
    backward: str  # "parallel" | "sequential" | "autodiff"
    want_residual: bool  # the sequential forward skips it when nobody reads the info
    seq: SeqAxis | None = None  # the mesh axis the sequence is split over, if any


def not_converged_message(residual, iterations, tol, stalled=False) -> str:
    why = (" (stalled: the residual stopped falling; raise patience= to keep trying)"
           if bool(np.any(stalled)) else " (or NaN/Inf appeared)")
    return (
        f"pararnn.solve: Newton did not converge: residual {float(np.max(residual)):.3g} > tol "
        f"{tol:.3g} after {int(np.max(iterations))} iterations{why}. Use "
        f"fallback='sequential' to get the sequential answer instead, raise max_iters, or use a "
        f"more contractive cell."
    )
