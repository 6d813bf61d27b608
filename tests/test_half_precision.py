"""Precision of the solver in float32, float16 and bfloat16 against float64 references
computed here: a NumPy loop for the linear scans and the test cells, ``jax.grad`` of a plain
float64 ``lax.scan`` for gradients.

Half precision must accumulate the scans in float32 (``pararnn.scan``): the tests below use
recurrences whose states grow to a few hundred, where one bfloat16 ulp is 2 and a float16
ulp 0.25–0.5, so summing in the half type loses whole units per step. Only the final cast
to the half type may round."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from jax import lax

import pararnn
from cells import CELLS, numpy_loop

# Relative rounding of one cast to the type (half an ulp: 2^-8 for bfloat16's 8 significant
# bits, 2^-11 for float16's 11), plus 2e-5 for float32 accumulation over T = 1000 steps.
# Measured with float32 accumulation: bfloat16 3.1e-3–3.5e-3, float16 2.9e-4–4.8e-4 relative
# to max|h| (every structure and algorithm); accumulating in the half type itself measured
# 1e-2–5e-1 (bfloat16) and 7e-3–6e-2 (float16).
CAST = {jnp.bfloat16: 2.0 ** -8, jnp.float16: 2.0 ** -11}
ACCUMULATION = 2e-5
HALF = [pytest.param(jnp.bfloat16, id="bfloat16"), pytest.param(jnp.float16, id="float16")]
T = 1000


def numpy_linear_loop(structure, a, b):
    """h_t = A_t h_{t−1} + b_t from h_{−1} = 0, float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    h, out = np.zeros(b.shape[1:]), np.empty(b.shape)
    for t in range(b.shape[0]):
        if structure == "diagonal":
            h = a[t] * h + b[t]
        elif structure == "dense":
            h = a[t] @ h + b[t]
        else:  # a[t] (N, K, K) acts on h (K, N) channel by channel
            h = np.einsum("nij,jn->in", a[t], h) + b[t]
        out[t] = h
    return out


def growing_problem(structure, seed=0):
    """Jacobians just below the identity and positive inputs: states grow to ~300–500."""
    rng = np.random.default_rng(seed)
    if structure == "diagonal":
        a = 0.995 + 0.004 * rng.random((T, 4))
        b = 0.5 + rng.random((T, 4))
    elif structure == "block":
        a = 0.997 * np.eye(2) + 0.001 * rng.random((T, 3, 2, 2))
        b = 0.5 + rng.random((T, 2, 3))
    else:
        a = 0.997 * np.eye(3) + 0.001 * rng.random((T, 3, 3))
        b = 0.5 + rng.random((T, 3))
    return a, b


SLOW = pytest.mark.slow  # the default suite keeps one case per dtype (time budget)


@pytest.mark.parametrize("structure,dtype", [
    ("diagonal", jnp.bfloat16), ("block", jnp.float16),
    pytest.param("dense", jnp.bfloat16, marks=SLOW), pytest.param("diagonal", jnp.float16, marks=SLOW),
    pytest.param("block", jnp.bfloat16, marks=SLOW), pytest.param("dense", jnp.float16, marks=SLOW)],
    ids=lambda v: v if isinstance(v, str) else jnp.dtype(v).name)
def test_half_precision_scans_accumulate_in_float32(structure, dtype):
    a, b = growing_problem(structure)
    a, b = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
    h0 = jnp.zeros(b.shape[1:], dtype)
    # the reference sees exactly the rounded inputs the scan sees
    want = numpy_linear_loop(structure, np.asarray(a, np.float64), np.asarray(b, np.float64))
    assert np.abs(want).max() > 250  # where the half type's ulp is ≥ 0.25
    run = jax.jit(lambda a, b: [pararnn.linear_recurrence(a, b, h0, structure=structure, algorithm=alg)
                                for alg in ("tree", "chunked", "sequential")])
    for alg, got in zip(("tree", "chunked", "sequential"), run(a, b)):
        assert got.dtype == dtype
        err = np.abs(np.asarray(got, np.float64) - want)
        bound = (CAST[dtype] + ACCUMULATION) * np.abs(want) + 1e-30
        assert np.all(err <= bound), (alg, float((err / np.abs(want)).max()))


@pytest.mark.parametrize("dtype", HALF)
def test_half_precision_adjoint_accumulates_in_float32(dtype):
    """The backward pass's reverse scan: for h_t = a ⊙ h_{t−1} + x_t and L = Σ_t Σ h_t,
    ∂L/∂x_t = λ_t = Σ_{s ≥ t} a^{s−t}: T − t for a = 1 (up to 1000), (1 − a^{T−t}) / (1 − a)
    otherwise. Both a values are exact in bfloat16 and float16."""
    a = jnp.asarray([1.0, 1.0, 1 - 2.0 ** -8, 1 - 2.0 ** -7], dtype)
    xs = jnp.asarray(0.5 + np.random.default_rng(1).random((T, 4)), dtype)
    h0 = jnp.zeros(4, dtype)
    step = lambda h, x, a: a * h + x
    grad = jax.jit(jax.grad(lambda xs: jnp.sum(pararnn.solve(step, h0, xs, a).astype(jnp.float32))))(xs)
    a64, steps = np.asarray(a, np.float64)[None, :], (T - np.arange(T))[:, None].astype(np.float64)
    geometric = (1 - a64 ** steps) / np.where(a64 == 1, 1.0, 1 - a64)
    want = np.where(a64 == 1, steps, geometric)
    assert grad.dtype == dtype and want.max() > 500
    err = np.abs(np.asarray(grad, np.float64) - want)
    # measured: bfloat16 3.9e-3, float16 4.7e-4 relative (the final cast); accumulating in the
    # half type stalls λ where its ulp exceeds the increment (bfloat16 at 256)
    assert np.all(err <= (CAST[dtype] + ACCUMULATION) * want), float((err / want).max())


def scan_solve(step, h0, xs, params):
    return lax.scan(lambda h, x: (step(h, x, params),) * 2, h0, xs)[1]


# (forward atol on states of magnitude ≤ 1, gradient tolerance relative to max|grad|), from
# measurements at T = 200 on the three test cells (diagonal, block, dense):
# float32: states 1.4e-7–1.6e-7, gradients 4.3e-7–6.0e-7 (the solver's tol 1e-5 bounds the
#   residual; Newton reached the rounding floor in 3 iterations);
# float16: states 8.9e-4–9.4e-4 (rounding of every step in float16; default tol 3e-3),
#   gradients 1.8e-3–3.9e-3.
PRECISION = {jnp.float32: (1e-5, 1e-5), jnp.float16: (3e-3, 1e-2)}


@pytest.mark.parametrize("cell,dtype", [
    (CELLS["gru_diag"], jnp.float32), (CELLS["lstm_block"], jnp.float16),
    pytest.param(CELLS["lstm_block"], jnp.float32, marks=SLOW), pytest.param(CELLS["gru_dense"], jnp.float32, marks=SLOW),
    pytest.param(CELLS["gru_diag"], jnp.float16, marks=SLOW), pytest.param(CELLS["gru_dense"], jnp.float16, marks=SLOW)],
    ids=lambda v: jnp.dtype(v).name if not hasattr(v, "name") or isinstance(v, type) else v.name)
def test_forward_and_grads_in_float32_and_float16(cell, dtype):
    t = 200
    p, xs, h0 = cell.params(dtype=dtype), cell.inputs(t, dtype=dtype), cell.h0(dtype=dtype)
    up = lambda tree: jax.tree_util.tree_map(lambda v: v.astype(jnp.float64), tree)
    weights = np.random.default_rng(5).normal(size=(t,) + cell.state_shape)

    def loss(solver, out_dtype):
        def f(p, xs, h0):
            hs = solver(cell.jax_step, h0, xs, p)
            return jnp.sum(jnp.asarray(weights, out_dtype) * hs.astype(out_dtype)), hs
        return f

    def newton(step, h0, xs, p):
        return pararnn.solve(step, h0, xs, p, jacobian=cell.jacobian)

    (_, hs), grads = jax.jit(jax.value_and_grad(loss(newton, jnp.float32), (0, 1, 2), has_aux=True))(p, xs, h0)
    want_grads = jax.jit(jax.grad(lambda *a: loss(scan_solve, jnp.float64)(*a)[0], (0, 1, 2)))(up(p), up(xs), up(h0))
    want = numpy_loop(cell, up(h0), up(xs), up(p))
    atol, grad_rtol = PRECISION[dtype]
    assert hs.dtype == dtype
    np.testing.assert_allclose(np.asarray(hs, np.float64), want, rtol=0, atol=atol)
    for path, g, w in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree_util.tree_leaves(grads),
                          jax.tree_util.tree_leaves(want_grads)):
        assert g.dtype == dtype
        g, w = np.asarray(g, np.float64), np.asarray(w)
        assert np.abs(g - w).max() <= grad_rtol * np.abs(w).max(), (jax.tree_util.keystr(path[0]),
                                                                     np.abs(g - w).max() / np.abs(w).max())
