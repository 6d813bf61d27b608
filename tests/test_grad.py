"""Gradients of pararnn.solve (custom VJP: adjoint recurrence + one VJP of the step) against
jax.grad of a plain lax.scan, and against finite differences (check_grads)."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from jax import lax
from jax.test_util import check_grads

import pararnn
from cells import CELLS, GRU_DIAG


def scan_solve(step, h0, xs, params):
    def body(h, x):
        h = step(h, x, params)
        return h, h
    return lax.scan(body, h0, xs)[1]


def weighted_sum_loss(solver, cell, weights):
    def loss(params, xs, h0):
        hs = solver(cell.jax_step, h0, xs, params)
        return jnp.sum(weights * jnp.sin(hs))  # a nonlinear readout of every state
    return loss


# float64 gradients of the custom VJP against jax.grad of the plain scan: measured relative
# errors 0–3e-15 (T ≤ 1000; 5e-14 for the block cell iterated with quasi-Newton, whose
# forward stops at a residual just under tol). A backward pass that used the Jacobian of the
# previous Newton iterate instead of the solution's measured 9e-12–6e-9: 1e-12 separates them.
GRAD_RTOL = 1e-12


def rel_err(got, want):
    got, want = np.asarray(got), np.asarray(want)
    return np.abs(got - want).max() / max(np.abs(want).max(), 1e-300)


# quasi-Newton is Newton for a diagonal cell, so it is only run on the block and dense ones.
CELL_METHODS = [(c, "newton") for c in CELLS.values()] + [
    (c, "quasi") for c in CELLS.values() if c.jacobian != "diagonal"]


@pytest.mark.parametrize("cell,method", CELL_METHODS, ids=[f"{c.name}-{m}" for c, m in CELL_METHODS])
@pytest.mark.parametrize("t", [1, 17, 1000])
def test_grads_match_grad_of_lax_scan_float64(cell, t, method):
    p, xs, h0 = cell.params(), cell.inputs(t), cell.h0()
    weights = jnp.asarray(np.random.default_rng(5).normal(size=(t,) + cell.state_shape))

    def newton(step, h0, xs, params):
        return pararnn.solve(step, h0, xs, params, jacobian=cell.jacobian, method=method)

    grads = jax.jit(jax.grad(weighted_sum_loss(newton, cell, weights), argnums=(0, 1, 2)))(p, xs, h0)
    want = jax.jit(jax.grad(weighted_sum_loss(scan_solve, cell, weights), argnums=(0, 1, 2)))(p, xs, h0)
    for path, g, w in zip(jax.tree_util.tree_leaves_with_path(grads),
                          jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(want)):
        assert rel_err(g, w) <= GRAD_RTOL, (jax.tree_util.keystr(path[0]), rel_err(g, w))


@pytest.mark.parametrize("cell", CELLS.values(), ids=CELLS.keys())
def test_check_grads_finite_differences(cell):
    p, xs, h0 = cell.params(), cell.inputs(6), cell.h0()
    solve = lambda params, xs, h0: pararnn.solve(cell.jax_step, h0, xs, params, jacobian=cell.jacobian)
    # Newton's residual (<= 1e-13) is far below the finite-difference truncation error.
    check_grads(solve, (p, xs, h0), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_grad_wrt_arrays_the_step_closes_over():
    cell = GRU_DIAG
    p, xs, h0 = cell.params(), cell.inputs(200), cell.h0()

    def loss(solver, params):
        step = lambda h, x, unused: cell.jax_step(h, x, params)  # params captured, not passed
        return jnp.sum(solver(step, h0, xs, None) ** 2)

    got = jax.jit(jax.grad(lambda q: loss(pararnn.solve, q)))(p)
    want = jax.jit(jax.grad(lambda q: loss(scan_solve, q)))(p)
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        assert rel_err(g, w) <= GRAD_RTOL


def test_per_example_grads_with_vmap():
    cell = GRU_DIAG
    p, h0 = cell.params(), cell.h0()
    xs = jnp.stack([cell.inputs(100, seed=s) for s in range(3)])
    loss = lambda solver: (lambda params, x: jnp.sum(solver(cell.jax_step, h0, x, params) ** 2))
    got = jax.jit(jax.vmap(jax.grad(loss(pararnn.solve)), in_axes=(None, 0)))(p, xs)
    want = jax.jit(jax.vmap(jax.grad(loss(scan_solve)), in_axes=(None, 0)))(p, xs)
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        assert rel_err(g, w) <= GRAD_RTOL


def test_grad_under_jax_checkpoint():
    cell = CELLS["lstm_block"]
    p, xs, h0 = cell.params(), cell.inputs(300), cell.h0()
    solve = lambda params: pararnn.solve(cell.jax_step, h0, xs, params, jacobian="block")
    loss = lambda params: jnp.sum(jax.checkpoint(solve)(params) ** 2)
    got = jax.jit(jax.grad(loss))(p)
    want = jax.jit(jax.grad(lambda q: jnp.sum(scan_solve(cell.jax_step, h0, xs, q) ** 2)))(p)
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        assert rel_err(g, w) <= GRAD_RTOL
