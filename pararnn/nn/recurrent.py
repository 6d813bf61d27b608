"""Flax NNX recurrent layers over :mod:`pararnn.cells`, solved in parallel over time.

Every layer maps ``x (batch, time, in_features)`` to ``y (batch, time, hidden_features)``:
the input projection runs as one matmul over all steps, then the recurrence is solved by
:func:`pararnn.solve` — in parallel (Newton), sequentially (``lax.scan``) or whichever is
faster here (``"auto"``) — with identical results up to the solver tolerance.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from ..adjoint import BACKWARDS
from ..auto import choose_layer_paths
from ..cells import Cell
from ..newton import solve
from ..structure import get_structure

MODES = ("parallel", "sequential", "auto")


@dataclasses.dataclass(frozen=True)
class SolverOptions:
    """Options passed to :func:`pararnn.solve` in parallel mode (see its docs)."""

    method: str = "newton"
    max_iters: int | None = None
    tol: float | None = None
    fallback: str = "sequential"
    algorithm: str = "auto"
    backward: str = "auto"


def _check_mode(mode: Any, where: str) -> str:
    if mode not in MODES:
        raise ValueError(f"{where}: mode must be one of {MODES}, got {mode!r}.")
    return mode


class RecurrentLayer(nnx.Module):
    """Base class: a :class:`pararnn.cells.Cell` with its parameters as ``nnx.Param``.

    Subclasses set ``cell_type`` (and ``default_method``); constructor keyword arguments
    not listed below go to the cell (e.g. ``num_heads``, ``max_recurrent_norm``).

    Args:
      in_features, hidden_features: input and output sizes.
      mode: how the forward pass solves the recurrence: ``"parallel"`` (Newton),
        ``"sequential"`` (``lax.scan``) or ``"auto"`` (default: whichever measured faster
        for this backend, structure and size; :func:`pararnn.auto.choose_layer_paths`).
      method: the parallel method, ``"newton"`` or ``"quasi"``.
      backward: how gradients solve the adjoint: ``"parallel"``, ``"sequential"`` (a VJP
        scan: no Jacobians stored), ``"autodiff"`` (backpropagation through the sequential
        scan; sequential forward only) or ``"auto"`` (default: chosen with the forward).
      max_iters, tol, fallback, algorithm: passed to :func:`pararnn.solve`.
      seq_axis: sequence parallelism: the layer is called inside :func:`jax.shard_map` with
        ``x`` this device's shard of consecutive time steps along the mesh axis
        ``seq_axis`` (see :mod:`pararnn.seq_parallel`); the recurrence is solved across the
        devices (Newton; ``mode="sequential"`` gives a pipelined scan), gradients by the
        split parallel adjoint, and ``return_state`` returns the state after the whole
        sequence on every device.
      dtype: computation dtype (default: promote inputs and parameters).
      param_dtype: parameter dtype (default float32).
      sow_info: record solver statistics (max Newton iterations, whether any sequence fell
        back) as ``nnx.Intermediate`` under ``"solver_info"``, for training metrics; read
        them with ``y, inter = nnx.capture(layer, nnx.Intermediate)(x)``.
      rngs: ``nnx.Rngs`` for the parameter init.
    """

    cell_type: ClassVar[type[Cell]]
    default_method: ClassVar[str] = "newton"

    def __init__(self, in_features: int, hidden_features: int, *, mode: str = "auto",
                 method: str | None = None, max_iters: int | None = None, tol: float | None = None,
                 fallback: str = "sequential", algorithm: str = "auto", backward: str = "auto",
                 seq_axis: str | None = None, dtype: Any = None, param_dtype: Any = jnp.float32,
                 sow_info: bool = False, rngs: nnx.Rngs, **cell_options):
        name = type(self).__name__
        self.mode = _check_mode(mode, name)
        method = method or self.default_method
        if method not in ("newton", "quasi"):
            raise ValueError(f"{name}: method must be 'newton' or 'quasi', got {method!r}.")
        if backward not in BACKWARDS:
            raise ValueError(f"{name}: backward must be one of {BACKWARDS}, got {backward!r}.")
        if backward == "autodiff" and mode == "parallel":
            raise ValueError(f"{name}: backward='autodiff' differentiates through the sequential "
                             f"scan and needs mode='sequential' or 'auto', got mode='parallel'.")
        if seq_axis is not None and not isinstance(seq_axis, str):
            raise TypeError(f"{name}: seq_axis must be a mesh axis name or None, got {seq_axis!r}.")
        if seq_axis is not None and backward not in ("auto", "parallel"):
            raise ValueError(f"{name}: with seq_axis={seq_axis!r} gradients use the parallel "
                             f"adjoint; got backward={backward!r}.")
        self.solver = SolverOptions(method, max_iters, tol, fallback, algorithm, backward)
        self.seq_axis = seq_axis
        self.cell = self.cell_type(in_features, hidden_features, **cell_options)
        self.in_features, self.hidden_features = in_features, hidden_features
        self.dtype, self.param_dtype, self.sow_info = dtype, param_dtype, sow_info
        params = self.cell.init(rngs.params(), param_dtype)
        self.param_names = tuple(params)
        for key, value in params.items():
            setattr(self, key, nnx.Param(value))

    # ---- helpers ----------------------------------------------------------------------------
    def _compute_dtype(self, x: jax.Array):
        if self.dtype is not None:
            return jnp.dtype(self.dtype)
        with jax.numpy_dtype_promotion("standard"):
            return jnp.promote_types(x.dtype, self.param_dtype)

    def _params(self, dtype) -> dict[str, jax.Array]:
        return {k: getattr(self, k)[...].astype(dtype) for k in self.param_names}

    def initial_state(self, batch_size: int, dtype: Any = None) -> jax.Array:
        """Zero states ``(batch_size, *state_shape)``."""
        dtype = dtype or self.dtype or self.param_dtype
        return jnp.zeros((batch_size,) + self.cell.state_shape, dtype)

    @property
    def state_shape(self) -> tuple[int, ...]:
        """Shape of one sequence's state: ``(hidden,)``; ``(2, hidden)`` for ParaLSTM and
        ``(2·hidden,)`` for LSTM (cell and hidden state)."""
        return self.cell.state_shape

    def _states(self, h0, batch: int, dtype) -> jax.Array:
        shape = (batch,) + self.cell.state_shape
        if h0 is None:
            return jnp.zeros(shape, dtype)
        h0 = jnp.asarray(h0)
        if h0.shape == self.cell.state_shape:
            h0 = jnp.broadcast_to(h0, shape)
        if h0.shape != shape:
            raise ValueError(
                f"{type(self).__name__}: h0 must have shape (batch, *state_shape) = {shape} "
                f"(or {self.cell.state_shape} for all sequences), got {h0.shape}."
            )
        return h0.astype(dtype)

    def _check_input(self, x, rank: int, what: str):
        x = jnp.asarray(x)
        expected = "(batch, time, in_features)" if rank == 3 else "(batch, in_features)"
        if x.ndim != rank:
            raise ValueError(
                f"{type(self).__name__}: {what} must have shape {expected} with "
                f"in_features={self.in_features}, got shape {x.shape}."
            )
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"{type(self).__name__}: {what} has {x.shape[-1]} features in its last axis, "
                f"expected in_features={self.in_features} (shape {expected}, got {x.shape})."
            )
        if rank == 3 and x.shape[1] < 1:
            raise ValueError(f"{type(self).__name__}: {what} has no time steps (shape {x.shape}).")
        return x

    # ---- forward ----------------------------------------------------------------------------
    def __call__(self, x: jax.Array, h0: jax.Array | None = None, mode: str | None = None, *,
                 return_state: bool = False):
        """Run the layer over whole sequences.

        Args:
          x: ``(batch, time, in_features)``.
          h0: optional initial states ``(batch, *state_shape)`` (e.g. the final state of a
            previous chunk, for streaming); zeros by default.
          mode: override the layer's mode for this call.
          return_state: also return the final states ``(batch, *state_shape)``, to continue
            from in a later call.

        Returns:
          ``y (batch, time, hidden_features)``, or ``(y, final_state)``.
        """
        x = self._check_input(x, 3, "x")
        mode = _check_mode(self.mode if mode is None else mode, type(self).__name__)
        dtype = self._compute_dtype(x)
        params = self._params(dtype)
        x = x.astype(dtype)
        h0 = self._states(h0, x.shape[0], dtype)
        forward, backward = self.paths(x.shape[0], x.shape[1], mode, dtype)
        cell, opts = self.cell, self.solver
        info = None
        if forward == "sequential" and backward == "autodiff":
            hs = self._scan(params, x, h0)
        elif forward == "sequential":
            # A sequential forward with the adjoint backward: the scan projects inside the
            # loop like _scan, and the backward's one batched VJP differentiates the projection.
            def step_projected(h, x_t, p):
                return cell.step(h, cell.project(p, x_t), p)

            hs = jax.vmap(lambda x_b, h_b: solve(step_projected, h_b, x_b, params,
                                                 jacobian=cell.structure, method="sequential",
                                                 backward=backward, seq_axis=self.seq_axis))(x, h0)
        else:
            u = cell.project(params, x)
            hand = cell.jacobian is not None and cell.solve_with_hand_jacobian
            jacobian = cell.jacobian if hand else cell.structure

            def solve_one(u_b, h_b):
                return solve(cell.step, h_b, u_b, params, jacobian=jacobian, method=forward,
                             max_iters=opts.max_iters, tol=opts.tol, fallback=opts.fallback,
                             algorithm=opts.algorithm, return_info=True, backward=backward,
                             jacobian_diagonal=cell.jacobian_diagonal, seq_axis=self.seq_axis)

            hs, info = jax.vmap(solve_one)(u, h0)
        if self.sow_info:
            self.sow(nnx.Intermediate, "solver_info", {
                "iterations": jnp.zeros((), jnp.int32) if info is None else jnp.max(info.iterations),
                "fell_back": jnp.zeros((), bool) if info is None else jnp.any(info.fell_back)})
        y = cell.output(hs)
        if not return_state:
            return y
        final = hs[:, -1]
        if self.seq_axis is not None:  # the whole sequence's last state, on every device
            last = jax.lax.axis_index(self.seq_axis) == jax.lax.axis_size(self.seq_axis) - 1
            final = jax.lax.psum(jnp.where(last, final, 0), self.seq_axis)
        return y, final

    def paths(self, batch: int, length: int, mode: str | None = None, dtype: Any = None,
              backend: str | None = None) -> tuple[str, str]:
        """``(forward, backward)`` this layer uses for a ``(batch, length, ·)`` input in
        ``mode`` (default: the layer's) on ``backend`` (default: JAX's): forward
        ``"newton"``, ``"quasi"`` or ``"sequential"``; backward ``"parallel"``,
        ``"sequential"`` or ``"autodiff"``."""
        mode = _check_mode(self.mode if mode is None else mode, type(self).__name__)
        dtype = jnp.dtype(dtype or self.dtype or self.param_dtype)
        opts, cell = self.solver, self.cell
        forward = {"parallel": opts.method, "sequential": "sequential", "auto": None}[mode]
        if self.seq_axis is not None:  # split across devices: Newton, the parallel adjoint
            return forward or opts.method, "parallel"
        backward = None if opts.backward == "auto" else opts.backward
        auto_fwd, auto_bwd = choose_layer_paths(
            get_structure(cell.structure), opts.method, length, cell.state_shape, batch,
            dtype=dtype, forward=forward, backward=backward, backend=backend)
        forward = forward or auto_fwd
        backward = backward or auto_bwd
        if backward == "autodiff" and forward != "sequential":
            raise ValueError(f"{type(self).__name__}: backward='autodiff' needs a sequential "
                             f"forward, but mode={mode!r} chose {forward!r}.")
        return forward, backward

    def _scan(self, params, x, h0):
        """The sequential solve: ``lax.scan`` over time with the input projection inside the
        loop, like ``nnx.RNN`` — 3–4× faster on CPU than scanning precomputed projections,
        which are 3–4× larger than ``x`` and must be transposed to time-major first."""
        cell = self.cell
        step = jax.vmap(cell.step, in_axes=(0, 0, None))

        def body(h, x_t):
            h = step(h, cell.project(params, x_t), params)
            return h, h

        _, hs = jax.lax.scan(body, h0, jnp.swapaxes(x, 0, 1))
        return jnp.swapaxes(hs, 0, 1)

    def step(self, h: jax.Array | None, x_t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """One time step for recurrent inference, O(1) memory per token.

        Args:
          h: states ``(batch, *state_shape)`` (None: zeros).
          x_t: ``(batch, in_features)``.

        Returns:
          ``(h_next, y_t)`` with ``y_t (batch, hidden_features)``, equal to the sequence
          call's output at that step.
        """
        x_t = self._check_input(x_t, 2, "x_t")
        dtype = self._compute_dtype(x_t)
        params = self._params(dtype)
        h = self._states(h, x_t.shape[0], dtype)
        u = self.cell.project(params, x_t.astype(dtype))
        h_next = jax.vmap(self.cell.step, in_axes=(0, 0, None))(h, u, params)
        return h_next, self.cell.output(h_next)
