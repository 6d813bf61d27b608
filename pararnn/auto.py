"""The automatic choices: which forward (parallel Newton or sequential scan) and which
backward (parallel adjoint, sequential adjoint, or backpropagation through the scan).

Everything is decided at trace time from the backend, the Jacobian structure and the static
sizes, using crossovers measured by ``benchmarks/modes.py`` and ``benchmarks/solver.py``
(numbers, machines and commands in benchmarks/RESULTS.md, "Defaults"). Forward and backward
are chosen separately: the solver's custom VJP lets a sequential forward have the parallel
adjoint as its backward, and vice versa.

- CPU (2 cores measured): the sequential scan is the faster forward except for a single
  wide diagonal sequence (ParaGRU, batch 1, hidden ≥ 256), where Newton's vectorised
  iterations win. For training, the adjoint beats backpropagation through the scan on every
  measured diagonal and block shape (one JVP and one linear scan); for dense Jacobians
  backpropagation through the scan for narrow states and small batches, the sequential
  adjoint (a reverse scan of state-VJPs, no Jacobians) for one wide sequence or a wide
  batch — never the parallel dense adjoint, whose T·D² Jacobians made the old default 38×
  slower than the scan.
- GPU/TPU: not yet measured by this project (no accelerator was lent to any session). Until
  it is, auto follows the published measurements of ParaRNN and DEER: Newton for diagonal and
  block states once the sequence is long enough to amortise the iterations; dense Jacobians
  only for small states, where their O(D³) combines stay cheap, and quasi-Newton beyond that.
- Memory, on every backend: a parallel pass whose working set
  (:func:`pararnn.working_set.working_set_bytes`) would exceed half the device's memory is
  replaced by its sequential counterpart.
"""

from __future__ import annotations

import jax

from .structure import DENSE, DIAGONAL, Structure
from .working_set import fits, working_set_bytes

__all__ = ["choose_method", "choose_backward", "choose_layer_paths"]

# Accelerator thresholds (provisional, see module docstring).
_ACCEL_MIN_T = 256
_ACCEL_DENSE_NEWTON_MAX_D = 16
_ACCEL_DENSE_QUASI_MAX_D = 256
# CPU: Newton's forward beats the scan for one diagonal sequence at least this wide
# (benchmarks/RESULTS.md, "Defaults": 2.4–2.5× at hidden 256, batch 1).
_CPU_DIAGONAL_NEWTON_MIN_D = 256
# CPU, dense, sequential forward: the sequential adjoint beats backpropagation through the
# scan for one sequence at least this wide, or at least this many state values per step
# (see _cpu_dense_prefers_autodiff).
_CPU_DENSE_ADJOINT_MIN_D = 256
_CPU_DENSE_ADJOINT_MIN_WORK = 4096


def _width(state_shape: tuple[int, ...]) -> int:
    n = 1
    for s in state_shape:
        n *= s
    return n


def choose_method(
    structure: Structure,
    length: int,
    state_shape: tuple[int, ...],
    backend: str | None = None,
    *,
    batch: int = 1,
    dtype=None,
) -> str:
    """The forward ``"auto"`` resolves to: ``"newton"``, ``"quasi"`` or ``"sequential"``.

    Args:
      structure: the declared Jacobian structure.
      length: T, the number of time steps.
      state_shape: the shape of one state.
      backend: ``"cpu"``, ``"gpu"``, ``"tpu"`` (default: ``jax.default_backend()``).
      batch: sequences solved together (a layer's batch; 1 for one ``solve``).
      dtype: the state dtype (for the memory estimate; default float32).
    """
    backend = backend or jax.default_backend()
    width = _width(state_shape)
    if backend == "cpu":
        wide_single = structure is DIAGONAL and batch == 1 and width >= _CPU_DIAGONAL_NEWTON_MIN_D
        method = "newton" if wide_single else "sequential"
    elif length < _ACCEL_MIN_T:
        method = "sequential"
    elif structure is DENSE:
        method = ("newton" if width <= _ACCEL_DENSE_NEWTON_MAX_D else
                  "quasi" if width <= _ACCEL_DENSE_QUASI_MAX_D else "sequential")
    else:
        method = "newton"
    if method != "sequential":
        need = working_set_bytes(structure, length, state_shape, dtype or "float32",
                                 pass_="forward", method=method, batch=batch)
        if not fits(need, backend=backend):
            method = "sequential"
    return method


def _cpu_dense_prefers_autodiff(width: int, batch: int) -> bool:
    """CPU, dense Jacobian, sequential forward: backpropagation through the scan (it keeps the
    forward's per-step residuals, O(T·B·D)) beats the sequential adjoint (which recomputes
    each step's VJP) except for one wide sequence or a wide batch, where the adjoint's
    larger batched VJPs win. Measured (benchmarks/RESULTS.md "Defaults", modes.py): GRU D 64
    autodiff 0.5–0.7× the adjoint's time, D 256 batch 8 0.4–0.7×, D 256 batch 1 1.0–1.4×;
    LSTM state 128 0.4–0.9×, state 512 batch 1 1.33×, batch 8 0.9–1.4×."""
    return not ((batch == 1 and width >= _CPU_DENSE_ADJOINT_MIN_D)
                or width * batch >= _CPU_DENSE_ADJOINT_MIN_WORK)


def choose_backward(
    structure: Structure,
    method: str,
    length: int,
    state_shape: tuple[int, ...],
    backend: str | None = None,
    *,
    batch: int = 1,
    dtype=None,
) -> str:
    """The backward ``"auto"`` resolves to: ``"parallel"`` or ``"sequential"`` (the adjoint
    solved by a parallel scan, or by a reverse scan of VJPs without Jacobians), or
    ``"autodiff"`` (backpropagation through the scan; only after a sequential forward).

    Args:
      structure, length, state_shape, backend, batch, dtype: as in :func:`choose_method`.
      method: the forward method (``"newton"``, ``"quasi"`` or ``"sequential"``).
    """
    backend = backend or jax.default_backend()
    width = _width(state_shape)
    if structure is DENSE:
        small = backend != "cpu" and width <= _ACCEL_DENSE_NEWTON_MAX_D
        backward = "parallel" if small else "sequential"
        if backend == "cpu" and method == "sequential" and _cpu_dense_prefers_autodiff(width, batch):
            backward = "autodiff"
    else:
        backward = "parallel"
    if backward == "parallel":
        need = working_set_bytes(structure, length, state_shape, dtype or "float32",
                                 pass_="backward", batch=batch)
        if not fits(need, backend=backend):
            backward = "sequential"
    return backward


def choose_layer_paths(
    structure: Structure,
    method: str,
    length: int,
    state_shape: tuple[int, ...],
    batch: int,
    *,
    dtype=None,
    forward: str | None = None,
    backward: str | None = None,
    backend: str | None = None,
) -> tuple[str, str]:
    """``(forward, backward)`` for a layer's batched solve; a given ``forward``/``backward``
    is kept and the other chosen to go with it.

    Args:
      structure, length, state_shape, backend: as in :func:`choose_method`.
      method: the layer's parallel method (``"newton"``/``"quasi"``): what its
        ``mode="parallel"`` uses; ``mode="auto"`` (``forward=None``) picks its own.
      batch: the number of sequences solved together.
      dtype: the computation dtype.
      forward: ``"newton"``, ``"quasi"``, ``"sequential"`` or None (choose).
      backward: ``"parallel"``, ``"sequential"``, ``"autodiff"`` or None (choose).
    """
    backend = backend or jax.default_backend()
    if forward is None:
        forward = choose_method(structure, length, state_shape, backend, batch=batch, dtype=dtype)
    if backward is None:
        backward = choose_backward(structure, forward, length, state_shape, backend,
                                   batch=batch, dtype=dtype)
    return forward, backward
