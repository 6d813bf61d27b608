"""Block Jacobians larger than ``structure.BLOCK.unroll_max`` (K > 16) take another code path
(einsum products instead of unrolled elementwise ones): the linear scans and a solve with
its gradients, against a NumPy float64 loop and ``jax.grad`` of a plain ``lax.scan``."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from jax import lax

import pararnn
from pararnn.structure import BLOCK

K, N, T = 17, 2, 40


def numpy_block_loop(a, b, h0, reverse):
    """h_t = A_t h_{t∓1} + b_t, A_t (N, K, K) acting on h (K, N) channel by channel."""
    h, out = np.asarray(h0, np.float64), np.empty(np.shape(b))
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        h = np.stack([a[t, n] @ h[:, n] for n in range(N)], axis=1) + b[t]
        out[t] = h
    return out


def test_this_is_the_einsum_path():
    assert K > BLOCK.unroll_max


def test_large_block_linear_recurrence_matches_numpy_loop():
    rng = np.random.default_rng(0)
    # non-symmetric blocks with spectral radius < 1: a transposed product changes the answer
    a = rng.normal(size=(T, N, K, K)) / (1.5 * np.sqrt(K))
    b, h0 = rng.normal(size=(T, K, N)), rng.normal(size=(K, N))
    cases = [(alg, rev) for alg in ("tree", "chunked", "sequential") for rev in (False, True)]
    run = jax.jit(lambda a, b, h0: [pararnn.linear_recurrence(a, b, h0, structure="block", reverse=rev,
                                                              algorithm=alg) for alg, rev in cases])
    for (alg, rev), got in zip(cases, run(a, b, h0)):
        # float64 over 40 steps of contractive products: measured ≤ 2e-15
        np.testing.assert_allclose(got, numpy_block_loop(a, b, h0, rev), rtol=0, atol=1e-12,
                                   err_msg=f"{alg}, reverse={rev}")


def block_step(s, x, p):
    """A nonlinear step whose Jacobian is one dense K×K block per channel: s (K, N)."""
    pre = jnp.einsum("nij,jn->in", p["w"], s) + p["u"] @ x[:, None] * p["v"]
    return jnp.tanh(pre)


def test_large_block_solve_and_gradients_match_lax_scan():
    rng = np.random.default_rng(1)
    p = {"w": jnp.asarray(rng.normal(size=(N, K, K)) / np.sqrt(K)), "u": jnp.asarray(rng.normal(size=(K, 3))),
         "v": jnp.asarray(rng.normal(size=(1, N)))}
    xs, h0 = jnp.asarray(rng.normal(size=(T, 3))), jnp.asarray(0.5 * rng.normal(size=(K, N)))
    weights = jnp.asarray(rng.normal(size=(T, K, N)))

    def loss(solver):
        return lambda p, xs, h0: jnp.sum(weights * jnp.sin(solver(p, xs, h0)))

    newton = lambda p, xs, h0: pararnn.solve(block_step, h0, xs, p, jacobian="block")
    scan = lambda p, xs, h0: lax.scan(lambda h, x: (block_step(h, x, p),) * 2, h0, xs)[1]
    (hs, g), (want, g_want) = jax.jit(lambda *a: [(newton(*a), jax.grad(loss(newton), (0, 1, 2))(*a)),
                                                  (scan(*a), jax.grad(loss(scan), (0, 1, 2))(*a))])(p, xs, h0)
    info = jax.jit(lambda *a: pararnn.solve(block_step, a[2], a[1], a[0], jacobian="block", return_info=True)[1])(p, xs, h0)
    assert not info.fell_back  # the answer comes from Newton on K×K blocks (6 iterations)
    # float64: the solve stops at residual ≤ 1e-13; measured state error 4e-16
    np.testing.assert_allclose(hs, want, rtol=0, atol=1e-12)
    for got, ref in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_want)):
        # exact Jacobians at the solution in the adjoint scan: measured ≤ 7e-16 relative
        assert np.abs(got - ref).max() <= 1e-12 * np.abs(ref).max()
