"""HyperGRU and HyperLSTM: Flax NNX layers over :mod:`pararnn.hyper.cells`, interface as
:mod:`pararnn.nn` (``layer(x, h0=None, mode=None)``, x (batch, time, in) → (batch, time, hidden)).

How the parallel mode solves the two coupled recurrences depends on ``coupling``:

- ``"decoupled"`` (default): the hyper cell reads ``x_t`` only, so the layer solves the hyper
  recurrence first (ParaGRU: diagonal, ParaLSTM: 2×2 block Jacobian, exact Newton), computes
  the scalings ``d_t`` of all steps in one batched op, then solves the main recurrence
  given them (diagonal/block again). Both solves are O(T·D) and converge in a few Newton
  iterations; gradients flow through both solves' implicit-function VJPs.
- ``"coupled"`` (Ha et al. exactly, the hyper cell also reads ``h_{t−1}``): one solve of
  the joint state, whose Jacobian is dense — quasi-Newton by default (O(T·D) iterations with
  the two cells' own diagonals, more of them), or ``method="newton"`` (dense D×D Jacobians,
  D = hidden + hyper). Gradients need the exact dense Jacobian: O(T·D²) memory.

benchmarks/hyper_solve.py measures both against their sequential scans (RESULTS section of
issue 10): iterations and forward+backward time.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ..auto import choose_method
from ..newton import solve
from ..nn.recurrent import RecurrentLayer, _check_mode
from ..structure import get_structure
from .cells import HyperGRUCell, HyperLSTMCell, _HyperCell

_HYPER_ONLY = ("Wz", "bz", "Wd")


class _HyperLayer(RecurrentLayer):
    """Base of HyperGRU / HyperLSTM.

    Args:
      in_features, hidden_features: input and output sizes.
      hyper_features: hidden size of the hyper cell (default 16).
      embedding_features: size of the hyper embeddings z (default 8).
      coupling: ``"decoupled"`` (default) or ``"coupled"``, see the module docstring.
      method: ``"newton"`` or ``"quasi"``; default newton when decoupled, quasi when coupled.
      mode, max_iters, tol, fallback, algorithm, dtype, param_dtype, sow_info, rngs,
      num_heads, max_recurrent_norm: as :class:`pararnn.nn.RecurrentLayer`.

    The state (``h0``, ``return_state``, :meth:`step`) is the joint ``[main, hyper]`` vector
    of ``state_shape``; the output is the main cell's ``h``.
    """

    cell: _HyperCell

    def __init__(self, in_features: int, hidden_features: int, *, hyper_features: int = 16,
                 embedding_features: int = 8, coupling: str = "decoupled",
                 method: str | None = None, rngs: nnx.Rngs, **options: Any):
        if method is None:
            method = "quasi" if coupling == "coupled" else "newton"
        super().__init__(in_features, hidden_features, method=method, rngs=rngs,
                         hyper_features=hyper_features, embedding_features=embedding_features,
                         coupling=coupling, **options)

    def __call__(self, x: jax.Array, h0: jax.Array | None = None, mode: str | None = None, *,
                 return_state: bool = False):
        """``x (batch, time, in_features)`` → ``y (batch, time, hidden_features)`` (and the
        final joint states ``(batch, *state_shape)`` with ``return_state``)."""
        if self.cell.coupled:
            return super().__call__(x, h0, mode, return_state=return_state)
        x = self._check_input(x, 3, "x")
        mode = _check_mode(self.mode if mode is None else mode, type(self).__name__)
        cell, opts = self.cell, self.solver
        method = {"parallel": opts.method, "sequential": "sequential", "auto": "auto"}[mode]
        if method == "auto":
            method = choose_method(get_structure(cell.main.structure), x.shape[1], cell.main_shape)
        if method == "sequential":  # the joint step under lax.scan
            return super().__call__(x, h0, "sequential", return_state=return_state)
        dtype = self._compute_dtype(x)
        params = self._params(dtype)
        x = x.astype(dtype)
        h0 = self._states(h0, x.shape[0], dtype)
        bx, hx = cell.project(params, x)
        hyper_params = cell._sub(params, "hyper_")
        main_params = {k: v for k, v in params.items()
                       if not k.startswith("hyper_") and k not in _HYPER_ONLY}
        kw = dict(method=method, max_iters=opts.max_iters, tol=opts.tol, fallback=opts.fallback,
                  algorithm=opts.algorithm, return_info=True)

        def solve_one(bx_b, hx_b, s0):
            m0, y0 = cell.split_state(s0)
            hyper_jac = cell.hyper.jacobian if cell.hyper.solve_with_hand_jacobian else cell.hyper.structure
            hyp, info_h = solve(cell.hyper.step, y0, hx_b, hyper_params, jacobian=hyper_jac,
                                jacobian_diagonal=cell.hyper.jacobian_diagonal, **kw)
            a_eff, u = cell.main_inputs(params, cell.scalings(params, hyp), bx_b)
            main_jac = _main_jacobian if cell.main.solve_with_hand_jacobian else cell.main.structure
            main, info_m = solve(_MainStep(cell), m0, (a_eff, u), main_params,
                                 jacobian=_MainJacobian(cell, main_jac),
                                 jacobian_diagonal=_MainJacobian(cell, _main_jacobian_diagonal), **kw)
            return cell.join_state(main, hyp), (info_h, info_m)

        hs, (info_h, info_m) = jax.vmap(solve_one)(bx, hx, h0)
        if self.sow_info:
            self.sow(nnx.Intermediate, "solver_info", {
                "iterations": jnp.maximum(jnp.max(info_h.iterations), jnp.max(info_m.iterations)),
                "hyper_iterations": jnp.max(info_h.iterations),
                "main_iterations": jnp.max(info_m.iterations),
                "fell_back": jnp.any(info_h.fell_back) | jnp.any(info_m.fell_back)})
        y = cell.output(hs)
        return (y, hs[:, -1]) if return_state else y


# Hashable callables (frozen cell inside) so that eager solves hit the compilation cache.
class _MainStep:
    def __init__(self, cell: _HyperCell):
        self.cell = cell

    def __call__(self, s, inp, params):
        return self.cell.main_step(s, inp, params)

    def __hash__(self):
        return hash((type(self), self.cell))

    def __eq__(self, other):
        return type(other) is type(self) and other.cell == self.cell


def _main_jacobian(cell, s, inp, params):
    return cell.main.jacobian(s, inp[1], cell.main_params(params, inp[0]))


def _main_jacobian_diagonal(cell, s, inp, params):
    return cell.main.jacobian_diagonal(s, inp[1], cell.main_params(params, inp[0]))


class _MainJacobian:
    """A structure name passes through; a function ``fn(cell, s, inp, params)`` is bound."""

    def __new__(cls, cell, fn):
        if isinstance(fn, str):
            return fn
        self = super().__new__(cls)
        self.cell, self.fn = cell, fn
        return self

    def __call__(self, s, inp, params):
        return self.fn(self.cell, s, inp, params)

    def __hash__(self):
        return hash((type(self), self.cell, self.fn))

    def __eq__(self, other):
        return type(other) is type(self) and (other.cell, other.fn) == (self.cell, self.fn)


class HyperGRU(_HyperLayer):
    """A ParaGRU whose recurrent, input and bias terms are modulated at every step by a small
    ParaGRU hypernetwork (Ha et al. 2016). Joint state ``(hidden + hyper_features,)``.

    >>> import jax.numpy as jnp; from flax import nnx
    >>> layer = HyperGRU(8, 16, hyper_features=8, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((2, 50, 8))).shape
    (2, 50, 16)
    """

    cell_type = HyperGRUCell


class HyperLSTM(_HyperLayer):
    """A ParaLSTM modulated by a small ParaLSTM hypernetwork (Ha et al. 2016). Joint state
    ``(2·hidden + 2·hyper_features,)`` = [c, h main; c, h hyper]."""

    cell_type = HyperLSTMCell


__all__ = ["HyperGRU", "HyperLSTM"]
