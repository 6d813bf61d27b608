"""HyperGRU / HyperLSTM cells (after Ha, Dai & Le 2016) as pure functions over a parameter dict.

A small *hyper* cell runs alongside the *main* cell. Each step, the hyper cell updates its
state ``ĥ`` and emits, through an embedding ``z = W_z ĥ + b_z`` and a linear map ``W_d``,
scaling vectors that modulate every gate ``g`` of the main cell:

    pre_g = clamp(d^h_g ⊙ a_g) ⊙ h  +  d^x_g ⊙ (B x)_g  +  b_g + d^b_g

(``a_g`` the main cell's diagonal recurrent weights, ``B`` its input projection). Both cells
are the parallel-friendly diagonal-recurrence cells of :mod:`pararnn.cells` — ParaGRU for
HyperGRU, ParaLSTM (state ``[c, h]``) for HyperLSTM — and the modulated recurrence keeps
their bound ``|clamp(d^h ⊙ a)| < max_recurrent_norm``, so the main cell stays contractive
whatever the hyper cell emits.

``coupling`` says what the hyper cell reads:

- ``"coupled"`` (Ha et al. exactly): ``[x_t, h_{t−1}]``, the main cell's previous output. The
  two recurrences are then one system over the joint state ``[main, hyper]``, whose Jacobian
  is dense (the main state feeds the hyper cell through a matrix and comes back through
  ``d``): solved with quasi-Newton (``jacobian_diagonal`` below) or dense Newton.
- ``"decoupled"``: ``x_t`` only. The hyper recurrence no longer depends on the main one, so
  the layer solves it first (diagonal/block Jacobian), computes all scalings ``d_t`` at
  once, then solves the main recurrence given them (diagonal/block again): two exact
  Newton solves of O(T·D) work. See :mod:`pararnn.hyper.layers` and benchmarks/hyper_solve.py.

The joint state is one flat vector ``[main state (flattened), hyper state (flattened)]`` —
``(hidden + hyper,)`` for HyperGRU, ``(2·hidden + 2·hyper,)`` for HyperLSTM — so that streaming,
``h0`` and one-step inference work as in :mod:`pararnn.nn`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp

from ..cells import Cell, ParaGRUCell, ParaLSTMCell
from ..cells.base import Params, multihead_project

COUPLINGS = ("decoupled", "coupled")
_KINDS = 3  # scaling kinds: d^h (recurrence), d^x (input), d^b (bias)
_GATES = 3  # gates of both ParaGRU (z, r, ĥ) and ParaLSTM (f, ĉ, o)


@dataclasses.dataclass(frozen=True)
class _HyperCell(Cell):
    """Base of the two hyper cells. Args beyond ``in_features, hidden_features``:

    hyper_features: hidden size of the hyper cell (Ha et al.: much smaller than hidden).
    embedding_features: size of each of the three embeddings ``z`` (kinds h, x, b).
    coupling: ``"decoupled"`` or ``"coupled"`` (module docstring).
    num_heads: heads of the main cell's block-diagonal input projection.
    max_recurrent_norm: bound on the modulated recurrence ``|clamp(d^h ⊙ a)|`` (0.5).
    """

    hyper_features: int = 16
    embedding_features: int = 8
    coupling: str = "decoupled"
    num_heads: int = 2
    max_recurrent_norm: float | None = 0.5
    structure: ClassVar[str] = "dense"  # the joint state, see module docstring
    main_type: ClassVar[type[Cell]]
    # autodiff builds the dense Jacobian of the joint step (coupled mode, "newton")
    solve_with_hand_jacobian: ClassVar[bool] = False

    def __post_init__(self):
        super().__post_init__()
        name = type(self).__name__
        for key in ("hyper_features", "embedding_features"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: {key} must be a positive int, got {v!r}.")
        if self.coupling not in COUPLINGS:
            raise ValueError(f"{name}: coupling must be one of {COUPLINGS}, got {self.coupling!r}.")
        # the sub-cells validate num_heads and max_recurrent_norm
        object.__setattr__(self, "main", self.main_type(
            self.in_features, self.hidden_features, num_heads=self.num_heads,
            max_recurrent_norm=self.max_recurrent_norm))
        hyper_in = self.in_features + (self.hidden_features if self.coupled else 0)
        object.__setattr__(self, "hyper", self.main_type(
            hyper_in, self.hyper_features, num_heads=1, max_recurrent_norm=self.max_recurrent_norm))

    @property
    def coupled(self) -> bool:
        return self.coupling == "coupled"

    # ---- shapes -----------------------------------------------------------------------------
    @property
    def main_shape(self) -> tuple[int, ...]:
        return self.main.state_shape

    @property
    def hyper_shape(self) -> tuple[int, ...]:
        return self.hyper.state_shape

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (math.prod(self.main_shape) + math.prod(self.hyper_shape),)

    def split_state(self, s: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Joint state ``(..., D)`` → (main ``(..., *main_shape)``, hyper ``(..., *hyper_shape)``)."""
        m = math.prod(self.main_shape)
        lead = s.shape[:-1]
        return s[..., :m].reshape(lead + self.main_shape), s[..., m:].reshape(lead + self.hyper_shape)

    def join_state(self, main: jax.Array, hyper: jax.Array) -> jax.Array:
        """Inverse of :meth:`split_state`."""
        lead = main.shape[:main.ndim - len(self.main_shape)]
        return jnp.concatenate([main.reshape(lead + (-1,)), hyper.reshape(lead + (-1,))], -1)

    # ---- parameters -------------------------------------------------------------------------
    def init(self, key: jax.Array, dtype=jnp.float32) -> Params:
        """Main and hyper cells as in :mod:`pararnn.cells` (hyper keys prefixed ``hyper_``);
        ``Wz`` (hyper, 3, E) small normal and ``bz`` (3, E) ones, so ``z ≈ 1``; ``Wd``
        (3, E, 3, hidden): ``1/E`` for the multiplicative kinds h, x (so ``d^h = d^x = 1``
        at ``z = 1``: the layer starts as its plain Para cell, slightly perturbed) and 0 for
        the additive bias kind — Ha et al.'s "start near constant" init."""
        k_main, k_hyp, k_z = jax.random.split(key, 3)
        params = dict(self.main.init(k_main, dtype))
        params.update({f"hyper_{k}": v for k, v in self.hyper.init(k_hyp, dtype).items()})
        nh, e, h = self.hyper_features, self.embedding_features, self.hidden_features
        params["Wz"] = (0.1 / math.sqrt(nh)) * jax.random.normal(k_z, (nh, _KINDS, e), dtype)
        params["bz"] = jnp.ones((_KINDS, e), dtype)
        wd = jnp.full((_KINDS, e, _GATES, h), 1.0 / e, dtype)
        params["Wd"] = wd.at[2].set(0.0)
        return params

    def _sub(self, params: Params, prefix: str) -> Params:
        n = len(prefix)
        return {k[n:]: v for k, v in params.items() if k.startswith(prefix)}

    # ---- the recurrence ---------------------------------------------------------------------
    def project(self, params: Params, x: jax.Array):
        """``x (..., in)`` → ``(Bx (..., 3, hidden), hyper pre-activation part (..., 3, hyper))``:
        the parts of both cells' gate inputs that do not depend on any state."""
        bx = multihead_project(x, params["B"], jnp.zeros_like(params["b"]), _GATES)
        kernel = params["hyper_B"][0, :self.in_features]
        hx = (x @ kernel).reshape(x.shape[:-1] + (_GATES, self.hyper_features)) + params["hyper_b"]
        return bx, hx

    def hyper_input(self, params: Params, main: jax.Array, hx: jax.Array) -> jax.Array:
        """The hyper cell's gate input: ``hx`` plus, when coupled, ``W_h·h_{t−1}`` of the main
        cell's output ``h`` (``main`` a main state ``(..., *main_shape)``)."""
        if not self.coupled:
            return hx
        h = self.main.output(main)
        kernel = params["hyper_B"][0, self.in_features:]
        return hx + (h @ kernel).reshape(h.shape[:-1] + (_GATES, self.hyper_features))

    def scalings(self, params: Params, hyper: jax.Array) -> jax.Array:
        """Hyper states ``(..., *hyper_shape)`` → ``d (..., 3 kinds, 3 gates, hidden)``."""
        ho = self.hyper.output(hyper)
        z = jnp.einsum("...j,jke->...ke", ho, params["Wz"]) + params["bz"]
        return jnp.einsum("...ke,kegh->...kgh", z, params["Wd"])

    def main_inputs(self, params: Params, d: jax.Array, bx: jax.Array):
        """Scalings ``d`` and ``Bx`` → the main cell's per-step (recurrent weights, gate
        input): ``(d^h ⊙ a (..., 3, hidden), d^x ⊙ Bx + b + d^b (..., 3, hidden))``."""
        a_eff = d[..., 0, :, :] * params["a"]
        u = d[..., 1, :, :] * bx + params["b"] + d[..., 2, :, :]
        return a_eff, u

    def main_params(self, params: Params, a_eff: jax.Array) -> Params:
        """The main Para cell's parameter dict with the modulated recurrence ``a_eff``."""
        return {**params, "a": a_eff}

    def main_step(self, s: jax.Array, inp, params: Params) -> jax.Array:
        """The main recurrence given this step's ``(a_eff, u)``: diagonal/block Jacobian."""
        a_eff, u = inp
        return self.main.step(s, u, self.main_params(params, a_eff))

    def hyper_step(self, s: jax.Array, pre: jax.Array, params: Params) -> jax.Array:
        return self.hyper.step(s, pre, self._sub(params, "hyper_"))

    def step(self, s: jax.Array, u, params: Params) -> jax.Array:
        """One step of the joint state ``s (D,)``: hyper cell first (it reads ``x_t`` and,
        coupled, ``h_{t−1}``), then the main cell modulated by its scalings."""
        bx, hx = u
        main, hyper = self.split_state(s)
        hyper = self.hyper_step(hyper, self.hyper_input(params, main, hx), params)
        a_eff, u_main = self.main_inputs(params, self.scalings(params, hyper), bx)
        main = self.main_step(main, (a_eff, u_main), params)
        return self.join_state(main, hyper)

    def jacobian_diagonal(self, s: jax.Array, u, params: Params) -> jax.Array:
        """The diagonal of the two cells' own Jacobians (main given ``d``, hyper given
        ``h_{t−1}``), dropping the cross terms through ``d`` and ``W_h``: a quasi-Newton
        approximation for ``method="quasi"`` — it changes how fast the iteration converges,
        never its fixed point, and gradients use the exact Jacobian. O(D) per step."""
        bx, hx = u
        main, hyper = self.split_state(s)
        pre = self.hyper_input(params, main, hx)
        hp = self._sub(params, "hyper_")
        j_hyp = self.hyper.jacobian_diagonal(hyper, pre, hp)
        hyper = self.hyper.step(hyper, pre, hp)
        a_eff, u_main = self.main_inputs(params, self.scalings(params, hyper), bx)
        j_main = self.main.jacobian_diagonal(main, u_main, self.main_params(params, a_eff))
        return self.join_state(j_main, j_hyp)

    def output(self, states: jax.Array) -> jax.Array:
        return self.main.output(self.split_state(states)[0])


@dataclasses.dataclass(frozen=True)
class HyperGRUCell(_HyperCell):
    """ParaGRU main cell modulated by a ParaGRU hyper cell. Joint state ``(hidden + hyper,)``."""

    main_type: ClassVar[type[Cell]] = ParaGRUCell


@dataclasses.dataclass(frozen=True)
class HyperLSTMCell(_HyperCell):
    """ParaLSTM main cell modulated by a ParaLSTM hyper cell (peepholes not modulated).
    Joint state ``(2·hidden + 2·hyper,)`` = [c, h of the main cell, c, h of the hyper cell]."""

    main_type: ClassVar[type[Cell]] = ParaLSTMCell


__all__ = ["HyperGRUCell", "HyperLSTMCell", "COUPLINGS"]
