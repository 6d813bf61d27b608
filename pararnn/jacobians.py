"""Structured Jacobians of a step function, evaluated at every time step at once.

A step ``step(h, x, params) -> h_next`` is vectorised over time with ``jax.vmap``; its
Jacobian ``∂h_next/∂h`` is extracted in the structure the caller declared:

- ``"diagonal"``: one JVP with a tangent of ones (exact only if the Jacobian is diagonal —
  :func:`check_jacobian` verifies that claim).
- ``"block"``: K JVPs, tangent k = unit vector k of every channel's K-block.
- ``"dense"``: D JVPs (``jacfwd``).
- a callable ``jac(h, x, params)`` returning one step's structured Jacobian directly.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import jax
import jax.numpy as jnp

from .control import match_varying
from .structure import BLOCK, DENSE, DIAGONAL, Structure, get_structure

__all__ = ["JacobianSpec", "linearize", "check_jacobian", "JacobianStructureError"]

StepFn = Callable[..., jax.Array]


class JacobianStructureError(ValueError):
    """A step's Jacobian is not of the structure it was declared with."""


class JacobianSpec:
    """How to get one step's Jacobian: a structure and, optionally, user callables.

    ``structure`` is exact: it is the structure the step's Jacobian really has. A callable
    ``fn(h, x, params, *consts)`` returns one step's Jacobian of that structure;
    ``diag_fn(h, x, params, *consts)`` only its diagonal, state-shaped (what quasi-Newton
    iterates with: O(D) per step instead of the O(D²) of a dense Jacobian).
    """

    def __init__(self, structure: Structure, fn: StepFn | None = None, diag_fn: StepFn | None = None):
        self.structure = structure
        self.fn = fn
        self.diag_fn = diag_fn


def vmap_over_time(fn: StepFn, n_extra: int = 0) -> StepFn:
    """``fn(h, x, params, *extra)`` → the same over a leading time axis of ``h`` and ``x``."""
    return jax.vmap(fn, in_axes=(0, 0, None) + (None,) * n_extra)


def linearize(
    step: StepFn,
    spec: JacobianSpec,
    hprev: jax.Array,
    xs: Any,
    params: Any,
    consts: tuple = (),
    jac_consts: tuple = ((), ()),
    *,
    diagonal_only: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """Evaluate the step and its Jacobian at every time step.

    Args:
      step: ``step(h, x, params, *consts)``.
      spec: the Jacobian structure and optional callables; ``jac_consts`` is the pair of
        extra-argument tuples for ``spec.fn`` and ``spec.diag_fn``.
      hprev: ``(T, *S)``: the state each step starts from.
      xs: pytree of ``(T, ...)`` inputs.
      diagonal_only: return only the diagonal (quasi-Newton), laid out like the state.

    Returns:
      ``(fh, J)`` with ``fh`` ``(T, *S)`` the step outputs and ``J`` of shape
      ``(T, *jacobian_shape)`` (or ``(T, *S)`` when ``diagonal_only``).
    """
    st = spec.structure
    f_all = vmap_over_time(step, len(consts))

    def f_of_h(h):
        return f_all(h, xs, params, *consts)

    if diagonal_only and spec.diag_fn is not None:
        diag = vmap_over_time(spec.diag_fn, len(jac_consts[1]))(hprev, xs, params, *jac_consts[1])
        return f_of_h(hprev), diag
    if spec.fn is not None:
        fh = f_of_h(hprev)
        jac = vmap_over_time(spec.fn, len(jac_consts[0]))(hprev, xs, params, *jac_consts[0])
        return fh, (st.diagonal(jac) if diagonal_only else jac)
    if st is DIAGONAL:
        return jax.jvp(f_of_h, (hprev,), (jnp.ones_like(hprev),))
    if st is BLOCK or st is DENSE:
        per_step = _step_and_jacobian(step, st, diagonal_only)
        return vmap_over_time(per_step, len(consts))(hprev, xs, params, *consts)
    raise AssertionError(st)


def _step_and_jacobian(step: StepFn, st: Structure, diagonal_only: bool) -> StepFn:
    """One step's output and its block or dense Jacobian, by forward mode on that step alone
    (K or D JVPs of one step, the tangents batched: ``jax.jacfwd``'s route, with the step's
    output taken from the same pass), to be vmapped over time. Measured 2–9× faster on CPU
    than linearising the whole vmapped sequence and pushing K or D sequence-long tangents
    through it, which ends in a (K, T, …) → (T, …, K) transpose of the largest array of the
    solve (benchmarks/RESULTS.md, "Dense Jacobian routes"); and, unlike ``jax.linearize``
    followed by a vmapped push, never slower than ``vmap(jacfwd(step))``."""

    def one(h, x, params, *consts):
        def f(h):
            return step(h, x, params, *consts)

        def along(tangent):
            return jax.jvp(f, (h,), (tangent,))

        if st is DENSE:
            # column j of J is the JVP along e_j: out_axes=1 lays J out (D_row, D_col) directly
            basis = match_varying(jnp.eye(h.shape[0], dtype=h.dtype), h)
            y, jac = jax.vmap(along, out_axes=(None, 1))(basis)
            return y, (jnp.diagonal(jac) if diagonal_only else jac)
        k, n = h.shape
        # tangent k' sets entry k' of every channel's K-block: cols[k', i, n] = J_n[i, k']
        basis = jnp.broadcast_to(jnp.eye(k, dtype=h.dtype)[:, :, None], (k, k, n))
        y, cols = jax.vmap(along, out_axes=(None, 0))(match_varying(basis, h))
        if diagonal_only:
            return y, jnp.stack([cols[j, j] for j in range(k)])  # (K, N), like the state
        return y, jnp.transpose(cols, (2, 1, 0))  # (N, K_row, K_col)

    return one


def _off_structure_mask(structure: Structure, state_shape: tuple[int, ...]) -> np.ndarray:
    """Boolean mask over the flattened (P, P) Jacobian: True where the structure forbids
    a non-zero entry."""
    p = int(np.prod(state_shape))
    if structure is DIAGONAL:
        return ~np.eye(p, dtype=bool)
    if structure is BLOCK:
        k, n = state_shape
        chan = np.broadcast_to(np.arange(n)[None, :], (k, n)).reshape(-1)
        return chan[:, None] != chan[None, :]
    return np.zeros((p, p), dtype=bool)


def _structured_to_full(structure: Structure, jac: np.ndarray, state_shape) -> np.ndarray:
    """Expand one step's structured Jacobian into the flattened (P, P) dense matrix."""
    p = int(np.prod(state_shape))
    if structure is DIAGONAL:
        return np.diag(np.reshape(jac, (p,)))
    if structure is BLOCK:
        k, n = state_shape
        full = np.zeros((k, n, k, n), dtype=jac.dtype)
        for c in range(n):
            full[:, c, :, c] = jac[c]
        return full.reshape(p, p)
    return np.asarray(jac)


def _unflatten_index(flat: int, state_shape) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(flat, state_shape))


def check_jacobian(
    step: StepFn,
    h0: jax.Array,
    x: Any,
    params: Any,
    jacobian: str | StepFn = "diagonal",
    *,
    atol: float | None = None,
    num_points: int = 3,
    seed: int = 0,
) -> float:
    """Check that ``step``'s Jacobian ∂step/∂h has the declared structure.

    Declaring a dense cell ``"diagonal"`` makes :func:`pararnn.solve` converge to a wrong
    answer, or not at all; call this once per cell (it is cheap: one dense Jacobian per
    point). The Jacobian is evaluated at ``h0`` and at ``num_points - 1`` random states
    near it (a structure can hide at a single point, e.g. at ``h = 0``).

    Args:
      step: ``step(h, x, params) -> h_next``.
      h0: one state: ``(D,)`` for diagonal/dense, ``(K, N)`` for block.
      x: one time slice of the inputs (no time axis).
      params: the step's parameters.
      jacobian: ``"diagonal"``, ``"block"``, ``"dense"`` or a callable ``jac(h, x, params)``
        whose values are also compared with autodiff.
      atol: largest allowed magnitude of a forbidden entry (and of the error of a callable
        Jacobian); default ``1e3 · eps(dtype) · max(1, max|J|)``.

    Returns:
      The largest forbidden-entry magnitude found (0.0 for an exact structure).

    Raises:
      JacobianStructureError: naming the largest off-structure entry (its indices, value,
        and the state it was evaluated at), or the largest disagreement of a callable.
    """
    h0 = jnp.asarray(h0)
    if not jnp.issubdtype(h0.dtype, jnp.floating):
        raise TypeError(f"check_jacobian: h0 must have a floating dtype, got {h0.dtype}.")
    if callable(jacobian):
        jac_fn = jacobian
        out = jax.eval_shape(jac_fn, h0, x, params)
        structure = infer_structure(out.shape, h0.shape, "jacobian")
    else:
        jac_fn = None
        structure = get_structure(jacobian, "jacobian")
    structure.check_state_shape(h0.shape, "h0")
    state_shape = h0.shape
    p = int(np.prod(state_shape))
    eps = float(jnp.finfo(h0.dtype).eps)
    mask = _off_structure_mask(structure, state_shape)
    keys = jax.random.split(jax.random.key(seed), max(num_points - 1, 0))
    points = [h0] + [h0 + 0.5 * jax.random.normal(k, h0.shape, h0.dtype) for k in keys]
    worst = 0.0
    for which, h in enumerate(points):
        full = np.asarray(jax.jacfwd(step)(h, x, params), dtype=np.float64).reshape(p, p)
        tol = atol if atol is not None else 1e3 * eps * max(1.0, float(np.abs(full).max()))
        where = "h0" if which == 0 else f"h0 + random perturbation #{which}"
        off = np.where(mask, np.abs(full), 0.0)
        flat = int(np.argmax(off))
        worst = max(worst, float(off.reshape(-1)[flat]))
        if off.reshape(-1)[flat] > tol:
            i, j = divmod(flat, p)
            raise JacobianStructureError(
                f"step's Jacobian is not {structure.name!r}: entry "
                f"∂h_next{list(_unflatten_index(i, state_shape))}/∂h{list(_unflatten_index(j, state_shape))}"
                f" = {full[i, j]:.3g} (at {where}) must be zero for that structure "
                f"(tolerance {tol:.2g}). Declare jacobian='dense' (or 'block' if the coupling "
                f"stays within channels) instead."
            )
        if jac_fn is not None:
            given = _structured_to_full(structure, np.asarray(jac_fn(h, x, params), np.float64), state_shape)
            err = np.abs(given - np.where(mask, 0.0, full))
            flat = int(np.argmax(err))
            if err.reshape(-1)[flat] > tol:
                i, j = divmod(flat, p)
                raise JacobianStructureError(
                    f"the jacobian callable disagrees with autodiff at {where}: entry "
                    f"[{list(_unflatten_index(i, state_shape))}, {list(_unflatten_index(j, state_shape))}] "
                    f"is {given[i, j]:.6g}, autodiff gives {full[i, j]:.6g} (tolerance {tol:.2g})."
                )
    return worst


def infer_structure(jac_shape: tuple[int, ...], state_shape: tuple[int, ...], argname: str) -> Structure:
    """The structure a callable Jacobian's output shape implies for this state shape."""
    jac_shape, state_shape = tuple(jac_shape), tuple(state_shape)
    if len(state_shape) == 2 and jac_shape == BLOCK.jacobian_shape(state_shape):
        return BLOCK
    if jac_shape == state_shape:
        return DIAGONAL
    if len(state_shape) == 1 and jac_shape == DENSE.jacobian_shape(state_shape):
        return DENSE
    expected = [state_shape]
    if len(state_shape) == 1:
        expected.append(DENSE.jacobian_shape(state_shape))
    if len(state_shape) == 2:
        expected.append(BLOCK.jacobian_shape(state_shape))
    raise ValueError(
        f"{argname} returned an array of shape {jac_shape} for a state of shape {state_shape}; "
        f"expected one of {expected} (diagonal, dense (D, D) or block (N, K, K))."
    )
