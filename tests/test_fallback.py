"""Non-convergence is never silent: a chaotic map on which undamped Newton overflows must
still give the sequential answer (default), raise, or report converged=False, as asked."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp

import pararnn
import pararnn.solve_core
from cells import GRU_DIAG, numpy_loop

T = 1000


def logistic(h, x, r):
    """A perturbed logistic map: chaotic for r = 3.9 (|∂h'/∂h| up to 3.9), so products of
    Jacobians grow like e^{λt} and Newton's linear solve overflows. Contracting for r = 0.8
    (|∂h'/∂h| <= 0.8 on [0, 1])."""
    return r * h * (1 - h) * (1 - x) + x


def numpy_logistic(h0, xs, r):
    h, out = np.asarray(h0, np.float64), []
    for x in np.asarray(xs, np.float64):
        h = r * h * (1 - h) * (1 - x) + x
        out.append(h)
    return np.stack(out)


@pytest.fixture(scope="module")
def chaotic():
    xs = jnp.asarray(np.random.default_rng(0).uniform(0, 0.05, size=(T, 3)))
    h0 = jnp.full((3,), 0.3)
    return h0, xs, jnp.asarray(3.9)


def test_default_fallback_returns_the_sequential_answer(chaotic):
    h0, xs, r = chaotic
    hs, info = jax.jit(lambda: pararnn.solve(logistic, h0, xs, r, return_info=True))()
    assert not bool(info.converged) and bool(info.fell_back)
    # Chaos amplifies rounding differences (~1e-16) by e^{λt}; compare the start, where the
    # amplification is still small, and the whole run against the same lax.scan.
    np.testing.assert_allclose(hs[:20], numpy_logistic(h0, xs, 3.9)[:20], rtol=0, atol=1e-9)
    seq = jax.jit(lambda: pararnn.solve(logistic, h0, xs, r, method="sequential"))()
    np.testing.assert_array_equal(hs, seq)
    assert float(info.residual) <= pararnn.default_tol(jnp.float64)


def test_fallback_none_reports_non_convergence(chaotic):
    h0, xs, r = chaotic
    hs, info = jax.jit(lambda: pararnn.solve(logistic, h0, xs, r, fallback="none", return_info=True))()
    assert not bool(info.converged) and not bool(info.fell_back)


def test_fallback_raise_eager_and_under_jit(chaotic):
    h0, xs, r = chaotic
    with pytest.raises(pararnn.ConvergenceError, match="did not converge"):
        pararnn.solve(logistic, h0, xs, r, fallback="raise")
    with pytest.raises(Exception, match="did not converge"):
        jax.block_until_ready(jax.jit(lambda: pararnn.solve(logistic, h0, xs, r, fallback="raise"))())
    # converged solves do not raise
    ok = jax.jit(lambda: pararnn.solve(logistic, h0, xs, jnp.asarray(0.8), fallback="raise"))()
    np.testing.assert_allclose(ok, numpy_logistic(h0, xs, 0.8), rtol=0, atol=1e-10)


def test_fallback_raise_when_the_step_closes_over_a_vmapped_value(chaotic):
    # The operands are concrete but the step captures a batched value: still traced.
    h0, xs, _ = chaotic
    solve = lambda r: pararnn.solve(lambda h, x, _: logistic(h, x, r), h0, xs, None, fallback="raise")
    hs = jax.vmap(solve)(jnp.asarray([0.8, 0.7]))  # converging members: no error
    np.testing.assert_allclose(hs[0], numpy_logistic(h0, xs, 0.8), rtol=0, atol=1e-10)
    with pytest.raises(Exception, match="did not converge"):
        jax.block_until_ready(jax.vmap(solve)(jnp.asarray([0.8, 3.9])))


def test_vmap_mixing_converging_and_diverging_members(chaotic):
    h0, xs, _ = chaotic
    rs = jnp.asarray([0.8, 3.9, 0.8])
    hs, info = jax.jit(jax.vmap(lambda r: pararnn.solve(logistic, h0, xs, r, return_info=True)))(rs)
    np.testing.assert_array_equal(info.fell_back, [False, True, False])
    for i, r in enumerate([0.8, 3.9, 0.8]):
        want = numpy_logistic(h0, xs, r)
        n = T if r == 0.8 else 20  # chaos: compare only the predictable start
        np.testing.assert_allclose(hs[i, :n], want[:n], rtol=0, atol=1e-9)


def test_gradient_after_fallback_is_the_sequential_gradient(chaotic):
    h0, xs, r = chaotic
    xs, r = xs[:30], jnp.asarray(3.9)  # short: the chaotic gradient is still finite
    _, info = pararnn.solve(logistic, h0, xs, r, max_iters=2, return_info=True)
    assert bool(info.fell_back)
    g = jax.jit(jax.grad(lambda r: jnp.sum(pararnn.solve(logistic, h0, xs, r, max_iters=2))))(r)
    want = jax.grad(lambda r: jnp.sum(pararnn.solve(logistic, h0, xs, r, method="sequential")))(r)
    np.testing.assert_allclose(g, want, rtol=1e-8)


def _count_fallback_runs(monkeypatch):
    """Count, at run time, how often the sequential fallback executes."""
    calls = []
    original = pararnn.solve_core.sequential_fallback

    def counted(*args, **kwargs):
        jax.debug.callback(lambda: calls.append(1))
        return original(*args, **kwargs)

    monkeypatch.setattr(pararnn.solve_core, "sequential_fallback", counted)
    return calls


def test_fallback_costs_nothing_when_every_vmapped_member_converges(monkeypatch, chaotic):
    calls = _count_fallback_runs(monkeypatch)
    cell = GRU_DIAG
    p, h0 = cell.params(), cell.h0()
    xs = jnp.stack([cell.inputs(200, seed=s) for s in range(4)])
    # A plain lax.cond under vmap would run the fallback branch for every batch member.
    hs = jax.jit(jax.vmap(lambda x: pararnn.solve(cell.jax_step, h0, x, p)))(xs)
    jax.block_until_ready(hs)
    assert calls == []
    np.testing.assert_allclose(hs[1], numpy_loop(cell, h0, xs[1], p), rtol=0, atol=1e-10)
    # ... and it does run when one member diverges.
    h0c, xsc, _ = chaotic
    jax.block_until_ready(jax.jit(jax.vmap(lambda r: pararnn.solve(logistic, h0c, xsc, r)))(jnp.asarray([0.8, 3.9])))
    assert len(calls) >= 1


def _top_level_loops(fn, *args) -> int:
    hlo = jax.jit(fn).lower(*args).compile().as_text()
    entry = hlo[hlo.index("ENTRY"):]
    entry = entry[:entry.index("\n}")]
    return entry.count(" while(")


def test_xla_does_not_hoist_the_fallback_out_of_its_branch():
    # XLA moves loop-invariant work out of loops; a fallback computed only from values
    # outside its branch was hoisted whole and ran on every call (measured: +40% time).
    cell = GRU_DIAG
    p, h0 = cell.params(), cell.h0()
    xs = jnp.stack([cell.inputs(64, seed=s) for s in range(4)])
    solve = lambda fb: jax.vmap(lambda x: pararnn.solve(cell.jax_step, h0, x, p, fallback=fb))
    newton_only = _top_level_loops(solve("none"), xs)
    with_fallback = _top_level_loops(solve("sequential"), xs)
    assert with_fallback == newton_only + 1  # the branch's own loop, nothing hoisted from it


def test_nan_states_are_never_reported_as_converged():
    """A float32 dense tanh recurrence on pre-activations, z_t = W tanh(z_{t−1}) + u_t and gain
    1.5: undamped Newton's linear solve overflows to NaN in part of the sequence. XLA:CPU's
    max reduction drops NaNs (an all-NaN block reduces to −inf), so a plain max residual read as
    converged; the undamped solver must fall back and return the (finite) sequential answer."""
    rng = np.random.default_rng(0)
    d, t = 16, 1000
    w = jnp.asarray(1.5 * rng.normal(size=(d, d)) / np.sqrt(d), jnp.float32)
    u = jnp.asarray(rng.binomial(1, 0.5, size=(t, 1)) * rng.normal(size=(1, d)), jnp.float32)

    def step(z, u_t, w):
        return w @ jnp.tanh(z) + u_t

    z0 = jnp.zeros(d, jnp.float32)
    ref, refs = np.zeros(d), []
    for u_t in np.asarray(u, np.float64):  # float64 loop reference
        ref = np.asarray(w, np.float64) @ np.tanh(ref) + u_t
        refs.append(ref)
    refs = np.stack(refs)
    seq = np.asarray(pararnn.solve(step, z0, u, w, method="sequential"), np.float64)

    hs_none, info_none = pararnn.solve(step, z0, u, w, jacobian="dense", fallback="none",
                                       damping=0.0, return_info=True)
    assert not bool(jnp.isfinite(hs_none).all())  # the case this test is about does occur
    assert not bool(info_none.converged) and float(info_none.residual) == np.inf
    hs, info = pararnn.solve(step, z0, u, w, jacobian="dense", damping=0.0, return_info=True)
    assert bool(info.fell_back) and not bool(info.converged)
    np.testing.assert_array_equal(np.asarray(hs, np.float64), seq)  # the sequential answer
    assert bool(jnp.isfinite(hs).all())
    # ... every step of it: the float32 loop stays within 1.1e-6 of the float64 one over all
    # 1000 steps (measured; |z| ≤ 4.3 — the map contracts on average even though undamped
    # Newton's linear solve overflows).
    np.testing.assert_allclose(np.asarray(hs, np.float64), refs, rtol=0, atol=1e-5)

    # Adaptive damping (the default) rejects the overflowing step and converges in parallel:
    # measured 9 iterations, 1 rejected step, max error 8.2e-6 against the float64 loop
    # (the float32 sequential scan itself is off by 1.1e-6; residual tol 1e-5·max|z| ≈ 4e-5).
    hs, info = pararnn.solve(step, z0, u, w, jacobian="dense", return_info=True)
    assert bool(info.converged) and not bool(info.fell_back)
    assert int(info.rejected) >= 1 and float(info.damping) > 0
    assert np.abs(np.asarray(hs, np.float64) - refs).max() < 3e-5
