"""pararnn: nonlinear RNNs trained in parallel over the sequence, in JAX.

The core is :func:`solve`, which computes all states of ``h_t = step(h_{t-1}, x_t, params)``
with Newton iterations whose linear steps are parallel scans (:func:`linear_recurrence`),
and differentiates the result exactly.
"""

from .jacobians import JacobianStructureError, check_jacobian
from .newton import ConvergenceError, SolveInfo, default_max_iters, default_tol, solve
from .scan import linear_recurrence
from .sharded import solve_sharded

__version__ = "0.1.0"

__all__ = [
    "solve",
    "solve_sharded",
    "linear_recurrence",
    "check_jacobian",
    "SolveInfo",
    "ConvergenceError",
    "JacobianStructureError",
    "default_tol",
    "default_max_iters",
]
