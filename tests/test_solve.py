"""pararnn.solve's forward pass against an independent NumPy float64 loop, for a diagonal
(ParaGRU), a 2×2 block (ParaLSTM) and a dense (GRU) cell."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp

import pararnn
from cells import CELLS, GRU_DENSE, GRU_DIAG, LSTM_BLOCK, numpy_loop

LENGTHS = [1, 2, 3, 17, 1000, 16384]
# float64: Newton stops at residual <= 1e-13 and the cells are contractive, so the states
# agree with the loop to ~1e-13; 1e-10 leaves room for rounding growing over 16k steps.
# float32: ~3 ulps of rounding per step plus tol 1e-5 amplified by 1/(1 - contraction).
TOLERANCE = {jnp.float64: 1e-10, jnp.float32: 1e-4}


def _solve_jit(cell, method, **kw):
    return jax.jit(lambda h0, xs, p: pararnn.solve(
        cell.jax_step, h0, xs, p, jacobian=cell.jacobian, method=method, return_info=True, **kw))


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
@pytest.mark.parametrize("cell", CELLS.values(), ids=CELLS.keys())
@pytest.mark.parametrize("t", LENGTHS)
def test_newton_matches_numpy_loop(cell, t, dtype):
    p, xs, h0 = cell.params(dtype=dtype), cell.inputs(t, dtype=dtype), cell.h0(dtype=dtype)
    want = numpy_loop(cell, h0, xs, p)  # float64 loop on the same (rounded) numbers
    hs, info = _solve_jit(cell, "newton")(h0, xs, p)
    assert hs.shape == (t,) + cell.state_shape and hs.dtype == dtype
    assert bool(info.converged) and not bool(info.fell_back)
    assert int(info.iterations) <= min(t, 8)  # quadratic convergence of a contractive cell
    err = np.abs(np.asarray(hs, np.float64) - want).max()
    assert err <= TOLERANCE[dtype], f"max error {err:.3g}"


@pytest.mark.parametrize("cell", [LSTM_BLOCK, GRU_DENSE], ids=["block", "dense"])
@pytest.mark.parametrize("t", [3, 1000])
def test_quasi_newton_reaches_the_same_fixed_point(cell, t):
    p, xs, h0 = cell.params(), cell.inputs(t), cell.h0()
    hs, info = _solve_jit(cell, "quasi")(h0, xs, p)
    assert bool(info.converged) and not bool(info.fell_back)
    newton_iters = int(_solve_jit(cell, "newton")(h0, xs, p)[1].iterations)
    assert int(info.iterations) >= newton_iters  # diagonal-only J: slower convergence
    np.testing.assert_allclose(hs, numpy_loop(cell, h0, xs, p), rtol=0, atol=1e-10)


def test_info_reports_the_residual_of_the_returned_states():
    cell = GRU_DIAG
    p, xs, h0 = cell.params(), cell.inputs(50), cell.h0()
    hs, info = _solve_jit(cell, "newton")(h0, xs, p)
    hprev = np.concatenate([np.asarray(h0)[None], np.asarray(hs)[:-1]])
    manual = max(np.abs(cell.np_step(hprev[i], np.asarray(xs[i]), {k: np.asarray(v) for k, v in p.items()})
                        - np.asarray(hs[i])).max() for i in range(50))
    np.testing.assert_allclose(float(info.residual), manual, rtol=0, atol=1e-15)
    assert float(info.residual) <= pararnn.default_tol(jnp.float64)


def test_iteration_cap_and_tolerance_are_honoured():
    cell = GRU_DENSE
    p, xs, h0 = cell.params(), cell.inputs(200), cell.h0()
    _, info = _solve_jit(cell, "newton", max_iters=1, fallback="none")(h0, xs, p)
    assert int(info.iterations) == 1 and not bool(info.converged)
    _, loose = _solve_jit(cell, "newton", tol=1e-2)(h0, xs, p)
    _, tight = _solve_jit(cell, "newton", tol=1e-14)(h0, xs, p)
    assert float(loose.residual) <= 1e-2 and float(tight.residual) <= 1e-14
    assert int(loose.iterations) < int(tight.iterations)


def test_initial_guess_is_used():
    cell = GRU_DIAG
    p, xs, h0 = cell.params(), cell.inputs(300), cell.h0()
    want = numpy_loop(cell, h0, xs, p)
    solve = jax.jit(lambda init: pararnn.solve(cell.jax_step, h0, xs, p, init=init, return_info=True))
    hs, info = solve(jnp.asarray(want))  # starting at the answer: nothing to do
    assert int(info.iterations) == 0
    hs, info = solve(jnp.asarray(want) + 0.01)
    assert 0 < int(info.iterations) <= 4
    np.testing.assert_allclose(hs, want, rtol=0, atol=1e-10)


def test_callable_jacobian_and_pytree_inputs():
    # xs as a dict of two leaves, params with an integer leaf, a hand-written diagonal J.
    cell = GRU_DIAG
    p = cell.params()
    xs = cell.inputs(64)
    tree_xs = {"x": xs, "scale": jnp.linspace(0.5, 1.5, 64)}

    def step(h, x, prm):
        return cell.jax_step(h, x["x"] * x["scale"][None], prm["p"]) * (prm["n"] // 2).astype(h.dtype)

    def jac(h, x, prm):
        return jax.jvp(lambda hh: step(hh, x, prm), (h,), (jnp.ones_like(h),))[1]

    prm = {"p": p, "n": jnp.asarray(2, jnp.int32)}
    h0 = cell.h0()
    hs = jax.jit(lambda: pararnn.solve(step, h0, tree_xs, prm, jacobian=jac))()
    want = numpy_loop(cell, h0, np.asarray(xs) * np.linspace(0.5, 1.5, 64)[:, None], p)
    np.testing.assert_allclose(hs, want, rtol=0, atol=1e-10)


def test_eager_call_matches_jit():
    cell = LSTM_BLOCK
    p, xs, h0 = cell.params(), cell.inputs(40), cell.h0()
    eager = pararnn.solve(cell.jax_step, h0, xs, p, jacobian="block")
    jitted = _solve_jit(cell, "newton")(h0, xs, p)[0]
    np.testing.assert_array_equal(eager, jitted)


@pytest.mark.parametrize("method", ["sequential", "auto"])
def test_sequential_and_auto_methods(method):
    cell = GRU_DENSE
    p, xs, h0 = cell.params(), cell.inputs(100), cell.h0()
    hs, info = _solve_jit(cell, method)(h0, xs, p)
    np.testing.assert_allclose(hs, numpy_loop(cell, h0, xs, p), rtol=0, atol=1e-12)
    assert bool(info.converged) and not bool(info.fell_back)


def test_tolerance_is_relative_for_large_states():
    # A state of magnitude ~100: float32 rounding alone is ~1e-5 absolute, so an absolute
    # tol of 1e-5 could not be met; the criterion scales with max(1, max|h|).
    def step(h, x, p):
        return 0.5 * h + 100.0 * jnp.tanh(x + p * h)
    xs = jnp.asarray(np.random.default_rng(0).normal(size=(2000, 8)), jnp.float32)
    h0, p = jnp.zeros(8, jnp.float32), jnp.asarray(0.001, jnp.float32)  # |J| <= 0.6
    hs, info = jax.jit(lambda: pararnn.solve(step, h0, xs, p, return_info=True))()
    assert bool(info.converged) and int(info.iterations) <= 5
    assert float(jnp.max(jnp.abs(hs))) > 100
    assert float(info.residual) <= pararnn.default_tol(jnp.float32) * float(jnp.max(jnp.abs(hs)))
    seq = pararnn.solve(step, h0, xs, p, method="sequential")
    # error <= residual / (1 - 0.6) with residual <= tol·max|h|: absolute 1e-5·max|h| is ample
    np.testing.assert_allclose(hs, seq, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(seq))))


def test_eager_call_with_an_unhashable_step():
    class Step:  # a callable that cannot key the compilation cache
        __hash__ = None

        def __call__(self, h, x, p):
            return GRU_DIAG.jax_step(h, x, p)
    cell = GRU_DIAG
    p, xs, h0 = cell.params(), cell.inputs(30), cell.h0()
    hs = pararnn.solve(Step(), h0, xs, p)
    np.testing.assert_allclose(hs, numpy_loop(cell, h0, xs, p), rtol=0, atol=1e-10)
