"""Accelerator kernels behind ``algorithm="fused"`` (Pallas; Triton on CUDA GPUs, interpret
mode elsewhere).

- :func:`fused_newton`: the whole Newton solve of a diagonal or 2×2-block step in one kernel.
- :func:`fused_adjoint`: the adjoint recurrence of its backward pass, Jacobians on the fly.
- :func:`fused_linear_recurrence`: ``h_t = A_t h_{t−1} + b_t`` for diagonal / block ``A``.

They import :mod:`pararnn.structure` and :mod:`pararnn.newton_loop` (for the iteration's rules),
never the layers. See :mod:`pararnn.kernels.newton_kernel` for the design.
"""

from .dispatch import TRITON_CUSTOM_CALL, KernelOptions, is_cuda_backend
from .lanes import FusedStepError
from .layout import StepPlan
from .newton_kernel import NewtonSettings, fused_newton

__all__ = ["fused_newton", "NewtonSettings", "StepPlan", "FusedStepError", "KernelOptions",
           "TRITON_CUSTOM_CALL", "is_cuda_backend"]
