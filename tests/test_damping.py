"""Damped Newton, the adaptive iteration budget and stall detection (pararnn.newton_loop).

References are float64 NumPy loops written here; the systems are the hard ones of
benchmarks/hard_systems.py: a tanh RNN whose recurrent matrix has spectral radius 2 (needs
~30 Newton iterations, undamped Newton overflows on some draws) and the chaotic logistic map
(not parallelisable: must stall and fall back quickly)."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp

import pararnn
from pararnn.newton_loop import default_max_iters, default_patience
from cells import GRU_DIAG, LSTM_BLOCK


def tanh_rnn(t, rho, d, seed=0):
    """h' = tanh(W h + U x): W Gaussian scaled to spectral radius ρ (as in
    benchmarks/hard_systems.py, same draws)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(d, d)) / np.sqrt(d)
    w *= rho / np.max(np.abs(np.linalg.eigvals(w)))
    u = rng.normal(size=(d, d)) / np.sqrt(d)
    xs = rng.normal(size=(t, d)) @ u.T
    return jnp.asarray(w), jnp.asarray(xs)


def tanh_step(h, x, w):
    return jnp.tanh(w @ h + x)


def numpy_tanh_loop(w, xs):
    w, h, out = np.asarray(w), np.zeros(w.shape[0]), []
    for x in np.asarray(xs):
        h = np.tanh(w @ h + x)
        out.append(h)
    return np.stack(out)


def _defaults_converge_where_the_old_budget_fell_back(t):
    """ρ = 2, D = 8, seed 0: needs 33 undamped Newton iterations (measured at T = 2000 and
    T = 10 000); the old fixed budget of 32 fell back to the sequential scan."""
    w, xs = tanh_rnn(t, 2.0, 8)
    ref = numpy_tanh_loop(w, xs)
    hs, info = pararnn.solve(tanh_step, jnp.zeros(8), xs, w, jacobian="dense", return_info=True)
    assert bool(info.converged) and not bool(info.fell_back) and not bool(info.stalled)
    assert int(info.iterations) <= 40  # DEER/ELK need 40–55 at T = 10 000; measured 33
    # float64, residual tol 1e-13; the trajectory contracts (Lyapunov exponent −0.27), so the
    # error stays at the residual's level: measured 3.7e-14.
    np.testing.assert_allclose(np.asarray(hs), ref, rtol=0, atol=1e-12)
    _, old = pararnn.solve(tanh_step, jnp.zeros(8), xs, w, jacobian="dense", return_info=True,
                           damping=0.0, max_iters=32)
    assert bool(old.fell_back)  # what the previous defaults did


def test_spectral_radius_two_converges_in_parallel_under_defaults():
    _defaults_converge_where_the_old_budget_fell_back(2000)


@pytest.mark.slow
def test_spectral_radius_two_at_ten_thousand_steps():
    """The exact system of issue 17 (T = 10 000)."""
    _defaults_converge_where_the_old_budget_fell_back(10_000)


def pre_activation_rnn(t):
    """z_t = W tanh(z_{t−1}) + u_t with gain 1.5, float64 (the system of
    test_fallback.test_nan_states_are_never_reported_as_converged)."""
    rng = np.random.default_rng(0)
    w = 1.5 * rng.normal(size=(16, 16)) / np.sqrt(16)
    u = rng.binomial(1, 0.5, size=(t, 1)) * rng.normal(size=(1, 16))
    z, ref = np.zeros(16), []
    for u_t in u:
        z = w @ np.tanh(z) + u_t
        ref.append(z)
    return jnp.asarray(w), jnp.asarray(u), np.stack(ref)


def pre_activation_step(z, u_t, w):
    return w @ jnp.tanh(z) + u_t


def test_adaptive_damping_rescues_a_stalling_solve():
    """T = 1000: undamped Newton stalls (no progress in 16 iterations, measured); adaptive
    damping rejects one blown-up step and converges in 11 (measured)."""
    w, u, ref = pre_activation_rnn(1000)
    _, plain = pararnn.solve(pre_activation_step, jnp.zeros(16), u, w, jacobian="dense",
                             damping=0.0, fallback="none", return_info=True)
    assert not bool(plain.converged)  # the case this test is about does occur
    hs, info = pararnn.solve(pre_activation_step, jnp.zeros(16), u, w, jacobian="dense",
                             return_info=True)
    assert bool(info.converged) and not bool(info.fell_back)
    assert int(info.rejected) >= 1 and float(info.damping) > 0
    # float64: measured max error 2.4e-15 (|z| up to 4.3)
    np.testing.assert_allclose(np.asarray(hs), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("damping", [0.0, 0.5, 3.0, "auto"])
def test_damping_never_moves_the_answer(damping):
    """Damped iterations converge more slowly (linearly: fixed λ = 3 takes ~150 iterations
    here), to the same fixed point."""
    w, xs = tanh_rnn(500, 1.5, 6, seed=3)
    ref = numpy_tanh_loop(w, xs)
    hs, info = pararnn.solve(tanh_step, jnp.zeros(6), xs, w, jacobian="dense", damping=damping,
                             fallback="none", return_info=True, max_iters=500, patience=500)
    assert bool(info.converged)
    if damping not in (0.0, "auto"):
        assert float(info.damping) == damping
    np.testing.assert_allclose(np.asarray(hs), ref, rtol=0, atol=1e-12)


def test_gradients_stay_exact_when_damped():
    """The backward uses the exact Jacobians at the solution whatever the forward's damping:
    gradients equal jax.grad of a plain lax.scan to float64 rounding (measured ≤ 3e-15 rel).
    At T = 300 the adaptive solve rejects one step (measured), the fixed one damps all."""
    w, u, _ = pre_activation_rnn(300)

    def scan_loss(w, u):
        zs = jax.lax.scan(lambda z, u_t: (pre_activation_step(z, u_t, w),) * 2, jnp.zeros(16), u)[1]
        return jnp.sum(jnp.cos(zs))

    def solve_loss(w, u, damping):
        return jnp.sum(jnp.cos(pararnn.solve(pre_activation_step, jnp.zeros(16), u, w,
                                             jacobian="dense", damping=damping, fallback="raise",
                                             max_iters=300)))

    ref = jax.grad(scan_loss, argnums=(0, 1))(w, u)
    _, info = pararnn.solve(pre_activation_step, jnp.zeros(16), u, w, jacobian="dense",
                            return_info=True)
    assert int(info.rejected) >= 1
    for damping in ("auto", 0.5):
        got = jax.grad(solve_loss, argnums=(0, 1))(w, u, damping)
        for g, r in zip(got, ref):
            np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=0,
                                       atol=1e-12 * float(jnp.abs(r).max()))


@pytest.mark.parametrize("cell", [GRU_DIAG, LSTM_BLOCK], ids=lambda c: c.name)
def test_kept_jacobians_are_the_undamped_ones(cell):
    """Diagonal and block solves hand the forward's last Jacobians to the parallel adjoint:
    under fixed damping those must still be the exact (undamped) ones. float64 gradients vs
    jax.grad of lax.scan: measured ≤ 2e-15 relative."""
    p, xs, h0 = cell.params(), cell.inputs(200), cell.h0()

    def scan_loss(p, xs):
        hs = jax.lax.scan(lambda h, x: (cell.jax_step(h, x, p),) * 2, h0, xs)[1]
        return jnp.sum(jnp.sin(hs))

    def solve_loss(p, xs):
        hs = pararnn.solve(cell.jax_step, h0, xs, p, jacobian=cell.jacobian, damping=0.5,
                           backward="parallel", max_iters=200, fallback="raise")
        return jnp.sum(jnp.sin(hs))

    ref = jax.grad(scan_loss, argnums=(0, 1))(p, xs)
    got = jax.grad(solve_loss, argnums=(0, 1))(p, xs)
    for g, r in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=0,
                                   atol=1e-12 * float(jnp.abs(r).max()))


def chaotic_logistic(h, x, r):
    return r * h * (1 - h) * (1 - x) + x


def test_a_chaotic_map_stalls_and_falls_back_quickly():
    """Positive Lyapunov exponent: Newton makes no progress. The solve must stop after
    `patience` iterations without progress — not burn the budget — and return the
    sequential answer."""
    t = 1000
    xs = jnp.asarray(np.random.default_rng(0).uniform(0, 0.05, size=(t, 3)))
    h0, r = jnp.full((3,), 0.3), jnp.asarray(3.9)
    hs, info = pararnn.solve(chaotic_logistic, h0, xs, r, return_info=True)
    patience, budget = default_patience(t), default_max_iters("newton", t)
    assert patience < budget
    assert bool(info.stalled) and bool(info.fell_back) and not bool(info.converged)
    assert int(info.iterations) <= patience + 2  # measured 16 = patience
    seq = pararnn.solve(chaotic_logistic, h0, xs, r, method="sequential")
    np.testing.assert_array_equal(np.asarray(hs), np.asarray(seq))
    with pytest.raises(pararnn.ConvergenceError, match="stalled"):
        pararnn.solve(chaotic_logistic, h0, xs, r, fallback="raise")


def test_easy_solves_run_undamped_and_report_it():
    w, xs = tanh_rnn(300, 0.5, 5)
    hs, info = pararnn.solve(tanh_step, jnp.zeros(5), xs, w, jacobian="dense", return_info=True)
    assert bool(info.converged) and int(info.rejected) == 0 and float(info.damping) == 0.0
    assert not bool(info.stalled) and int(info.iterations) <= 5


def test_budget_adapts_to_length():
    assert default_max_iters("newton", 100) == 32 and default_max_iters("quasi", 100) == 128
    assert default_max_iters("newton", 10_000) == 377  # ⌈T / (2·log2 T)⌉
    assert default_max_iters("quasi", 10_000) == 4 * 377
    assert default_patience(1000) == 16 and default_patience(10_000) == 48
    # an explicit max_iters is honoured: one iteration is not enough for this system
    w, xs = tanh_rnn(200, 2.0, 8)
    _, info = pararnn.solve(tanh_step, jnp.zeros(8), xs, w, jacobian="dense", max_iters=1,
                            fallback="none", return_info=True)
    assert int(info.iterations) == 1 and not bool(info.converged)


@pytest.mark.parametrize("kwargs, match", [
    (dict(damping="lm"), r"damping must be 'auto' or a float λ >= 0, got 'lm'"),
    (dict(damping=-1.0), r"damping must be 'auto' or a finite float λ >= 0, got -1.0"),
    (dict(patience=0), r"patience must be a positive int or None, got 0"),
    (dict(backward="adjoint"), r"backward must be one of .*got 'adjoint'"),
    (dict(backward="autodiff"), r"backward='autodiff' .* needs method='sequential'"),
])
def test_bad_options_are_named(kwargs, match):
    w, xs = tanh_rnn(10, 0.5, 3)
    with pytest.raises(ValueError, match=match):
        pararnn.solve(tanh_step, jnp.zeros(3), xs, w, jacobian="dense", **kwargs)
