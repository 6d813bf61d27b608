"""Bad input to pararnn.solve fails at trace time with an error that names the argument,
the shape or value seen, and what was expected."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp

import pararnn
from cells import GRU_DIAG, LSTM_BLOCK

CELL = GRU_DIAG
P, XS, H0 = CELL.params(), CELL.inputs(8), CELL.h0()


def solve(**overrides):
    kw = dict(step=CELL.jax_step, h0=H0, xs=XS, params=P)
    kw.update(overrides)
    return pararnn.solve(kw.pop("step"), kw.pop("h0"), kw.pop("xs"), kw.pop("params"), **kw)


@pytest.mark.parametrize("overrides,error,pattern", [
    (dict(method="newtn"), ValueError, r"method must be one of \('newton', 'quasi', 'sequential', 'auto'\), got 'newtn'"),
    (dict(fallback="ignore"), ValueError, r"fallback must be one of .* got 'ignore'"),
    (dict(jacobian="diag"), ValueError, r"jacobian must be one of \('diagonal', 'block', 'dense'\) or a callable"),
    (dict(algorithm="fast"), ValueError, r"algorithm must be one of"),
    (dict(h0=jnp.zeros(4, jnp.int32)), TypeError, r"h0 must have a floating dtype .* got int32"),
    (dict(h0=jnp.zeros(5)), ValueError, r"calling step\(h0, xs\[0\], params\) with h0 float64\[5\] and xs\[0\] float64\[3\] failed"),
    (dict(step=lambda h, x, p: CELL.jax_step(h, x, p)[:3]), ValueError, r"step\(h0, xs\[0\], params\) returned float64\[3\] but h0 is float64\[4\]"),
    (dict(step=lambda h, x, p: CELL.jax_step(h, x, p).astype(jnp.float32)), ValueError, r"returned float32\[4\] but h0 is float64\[4\]"),
    (dict(xs={"a": XS, "b": jnp.zeros((7, 2))}), ValueError, r"same leading \(time\) axis T; got xs\['a'\] \(8, 3\), xs\['b'\] \(7, 2\)"),
    (dict(xs={}), ValueError, r"xs must be a pytree with at least one array"),
    (dict(xs=jnp.zeros((0, 3))), ValueError, r"T = 0 time steps"),
    (dict(xs=jnp.asarray(1.0)), ValueError, r"xs must have a leading time axis"),
    (dict(init=jnp.zeros((8, 5))), ValueError, r"init must have shape \(T, \*h0.shape\) = \(8, 4\), got \(8, 5\)"),
    (dict(max_iters=-1), ValueError, r"max_iters must be a non-negative int, got -1"),
    (dict(max_iters=2.5), ValueError, r"max_iters must be a non-negative int, got 2.5"),
    (dict(tol=-1e-3), ValueError, r"tol must be a non-negative Python float, got -0.001"),
    (dict(step=lambda h, x, p: (h, h)), TypeError, r"step must return one array"),
    (dict(step="not a function"), TypeError, r"step must be callable"),
    (dict(jacobian=lambda h, x, p: jnp.ones((3,))), ValueError, r"jacobian callable returned an array of shape \(3,\) for a state of shape \(4,\)"),
    (dict(jacobian=lambda h, x, p: h @ jnp.ones((5, 5))), ValueError, r"calling jacobian\(h0, xs\[0\], params\) with h0 float64\[4\]"),
    (dict(jacobian_diagonal=lambda h, x, p: h[:2]), ValueError, r"jacobian_diagonal must return an array shaped and typed like h0 \(float64\[4\]\), got float64\[2\]"),
    (dict(h0=jnp.zeros(4, jnp.float8_e4m3fn)), TypeError, r"h0 must have a floating dtype \(float64, float32, float16, bfloat16\), got float8_e4m3fn"),
    (dict(init=jnp.zeros((8, 4), jnp.int32)), TypeError, r"init must be a floating-point initial guess"),
])
def test_bad_arguments_are_named(overrides, error, pattern):
    with pytest.raises(error, match=pattern):
        solve(**overrides)


def test_numpy_integer_max_iters_is_accepted():
    hs = solve(max_iters=np.int32(5))
    assert hs.shape == (8, 4)


def test_block_h0_must_be_2d():
    with pytest.raises(ValueError, match=r"h0 must be 2-D \(K, N\) for jacobian='block'.*got shape \(4,\)"):
        solve(jacobian="block")


def test_dense_h0_must_be_1d():
    h0 = LSTM_BLOCK.h0()
    with pytest.raises(ValueError, match=r"h0 must be 1-D \(D,\) for jacobian='dense', got shape \(2, 3\)"):
        pararnn.solve(LSTM_BLOCK.jax_step, h0, XS, LSTM_BLOCK.params(), jacobian="dense")


def test_errors_are_raised_at_trace_time():
    # Under jit the shape error is a ValueError from tracing, not a runtime failure.
    with pytest.raises(ValueError, match="returned float64"):
        jax.jit(lambda x: pararnn.solve(lambda h, x, p: CELL.jax_step(h, x, p)[:3], H0, x, P))(XS)
    step = lambda h, x, p: CELL.jax_step(h, x["a"], p)
    with pytest.raises(ValueError, match="same leading"):
        jax.jit(lambda x: pararnn.solve(step, H0, {"a": x, "b": x[:3]}, P))(XS)
