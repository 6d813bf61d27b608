"""How :func:`pararnn.solve` and :func:`pararnn.linear_recurrence` reach the fused kernels:
choosing ``algorithm="fused"``, validating a step for it, and the forward/backward calls.

Kept here so that the solver modules only dispatch (a few lines each).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax

from ..newton_loop import Progress
from ..structure import BLOCK, DIAGONAL, Structure
from .adjoint_kernel import fused_adjoint
from .dispatch import is_cuda_backend
from .lanes import FusedStepError
from .layout import StepPlan, fits_registers
from .newton_kernel import NewtonSettings, fused_newton

__all__ = ["resolve_solve_algorithm", "fused_forward", "fused_backward", "FUSED_STRUCTURES",
           "prefers_fused"]

FUSED_STRUCTURES = (DIAGONAL, BLOCK)
# Channels per program below which a kernel would run mostly empty lanes; "auto" then keeps
# the XLA path (an explicit algorithm="fused" still works for any D).
_AUTO_MIN_LANES = 8


def prefers_fused(structure: Structure, state_shape: tuple[int, ...] | None = None,
                  backend: str | None = None) -> bool:
    """Whether ``algorithm="auto"`` picks the fused kernels: on CUDA GPUs, for diagonal and
    block structures whose channel count (the state's last axis) has a power-of-two factor
    of at least 8 and whose state fits the kernels' registers (``state_shape`` None: the
    structure alone decides)."""
    if structure not in FUSED_STRUCTURES or not is_cuda_backend(backend):
        return False
    if state_shape is None:
        return True
    if not state_shape or state_shape[-1] % _AUTO_MIN_LANES:
        return False
    return fits_registers(structure, state_shape)


def resolve_solve_algorithm(algorithm: str, structure: Structure, step: Callable, h0, xs,
                            params, method: str) -> str:
    """``"fused"`` when requested (validated here: a step or layout the kernel cannot run
    raises :class:`pararnn.kernels.FusedStepError` naming the reason) or when ``"auto"``
    prefers it and the step fuses; otherwise ``algorithm`` unchanged."""
    if algorithm == "fused":
        StepPlan(step, h0, xs, params, structure=structure, quasi=method == "quasi")
        return algorithm
    if algorithm == "auto" and prefers_fused(structure, tuple(h0.shape)):
        try:
            StepPlan(step, h0, xs, params, structure=structure, quasi=method == "quasi")
        except FusedStepError:
            return algorithm
        return "fused"
    return algorithm


def fused_forward(step: Callable, h0, xs: Any, params: Any, consts: Sequence, init, *,
                  structure: Structure, method: str, tol: float, max_iters: int, patience: int,
                  damping) -> tuple[jax.Array, None, Progress]:
    """The Newton iteration of a solve, fused: ``(hs, None, progress)`` like
    :func:`pararnn.newton_loop.iterate` (no Jacobians are kept: the fused adjoint rebuilds
    them on the fly)."""
    settings = NewtonSettings(tol=tol, max_iters=max_iters, patience=patience, damping=damping,
                              quasi=method == "quasi")
    hs, progress = fused_newton(step, h0, xs, params, consts, init, structure=structure,
                                settings=settings)
    return hs, None, progress


def fused_backward(step: Callable, h0, hs, xs: Any, params: Any, consts: Sequence, g_hs, *,
                   structure: Structure) -> jax.Array:
    """λ of the adjoint recurrence by the fused kernel (exact Jacobians, also after a
    quasi-Newton forward)."""
    return fused_adjoint(step, h0, hs, xs, params, g_hs, consts, structure=structure)
