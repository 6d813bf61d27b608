"""``solve(..., algorithm="fused")``: the Pallas kernels run in interpret mode on the CPU,
checked against float64 NumPy loops, the XLA algorithms and ``jax.grad`` of ``lax.scan``.

Interpret-mode compiles take ~5–10 s each on 2 cores, so the default suite runs a spread of
cells and lengths with one compile per case (forward, info and gradients in one jit);
``-m slow`` runs every cell at every length.
"""

import numpy as np
import pytest
import jax
import jax.numpy as jnp

import pararnn
from fused_cases import CASE_NAMES, make_case

# float32 solve against the float64 loop: the fused iteration stops at residual <= tol 1e-5
# (Newton's last step then lands far below it: measured 1e-7 to 5e-6 on these cases,
# rounding ~3 ulps per step); the bound 1e-4 leaves room for contraction factors.
FWD_TOL = 1e-4
# Gradients (float32) against jax.grad of lax.scan: both are float32 computations of the
# same exact gradient, the fused one through the implicit-function adjoint at a solution
# within tol of the sequential one; measured <= 3e-6 relative to max(1, |g|) here.
GRAD_TOL = 1e-4

# default suite: the diagonal path with gradients, the 2×2-block forward (its gradients, and
# every other cell and length, run with -m slow)
DEFAULT = [("paragru", 1000, True), ("paralstm", 7, False)]
EVERYTHING = [(n, t) for n in CASE_NAMES for t in (1, 7, 1000, 4097)]
SLOW = [(n, t, True) for n, t in EVERYTHING if (n, t, True) not in DEFAULT]


def _solve_and_grad(case, algorithm):
    """One jit: the solve, its info and the gradients of a weighted sum of the states with
    respect to h0, xs and params."""
    w = jax.random.normal(jax.random.key(7), (jax.tree_util.tree_leaves(case.xs)[0].shape[0],)
                          + case.h0.shape, jnp.float32)

    def loss(h0, xs, params):
        hs, info = pararnn.solve(case.step, h0, xs, params, jacobian=case.jacobian,
                                 algorithm=algorithm, return_info=True)
        return jnp.sum(w * hs.astype(jnp.float32)), (hs, info)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(
        case.h0, case.xs, case.params)


def _scan_grad(case):
    w = jax.random.normal(jax.random.key(7), (jax.tree_util.tree_leaves(case.xs)[0].shape[0],)
                          + case.h0.shape, jnp.float32)

    def loss(h0, xs, params):
        def body(h, x):
            h = case.step(h, x, params)
            return h, h
        return jnp.sum(w * jax.lax.scan(body, h0, xs)[1])

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(case.h0, case.xs, case.params)


def _check_case(name, t, grads=True):
    case = make_case(name, t)
    if grads:
        (_, (hs, info)), grads = _solve_and_grad(case, "fused")
    else:
        hs, info = jax.jit(lambda h0, xs, p: pararnn.solve(
            case.step, h0, xs, p, jacobian=case.jacobian, algorithm="fused", return_info=True))(
                case.h0, case.xs, case.params)
    assert hs.shape == (t,) + case.h0.shape and hs.dtype == jnp.float32
    assert bool(info.converged) and not bool(info.fell_back), info
    assert float(info.residual) <= pararnn.default_tol(jnp.float32)
    want = case.numpy_loop()
    err = np.abs(np.asarray(hs, np.float64) - want).max()
    assert err <= FWD_TOL, f"{name} T={t}: max error vs float64 loop {err:.3g}"
    xla = pararnn.solve(case.step, case.h0, case.xs, case.params, jacobian=case.jacobian,
                        algorithm="chunked")
    assert np.abs(np.asarray(hs) - np.asarray(xla)).max() <= FWD_TOL
    if not grads:
        return
    for got, ref in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(_scan_grad(case))):
        scale = max(1.0, float(jnp.abs(ref).max()))
        gerr = float(jnp.abs(got - ref).max()) / scale
        assert gerr <= GRAD_TOL, f"{name} T={t}: gradient error {gerr:.3g}"


@pytest.mark.parametrize("name,t,grads", DEFAULT, ids=[f"{n}-T{t}" for n, t, _ in DEFAULT])
def test_fused_solve_matches_numpy_loop_xla_and_scan_gradients(name, t, grads):
    _check_case(name, t, grads)


@pytest.mark.slow
@pytest.mark.parametrize("name,t,grads", SLOW, ids=[f"{n}-T{t}" for n, t, _ in SLOW])
def test_fused_solve_every_cell_and_length(name, t, grads):
    _check_case(name, t, grads)


def test_damping_rejection_stall_fallback_and_per_program_info():
    """Two programs of 32 channels, an easy tile and an expanding one whose undamped steps
    overshoot (rejected steps, damping). Each program runs the XLA iteration on its own
    channels (the documented granularity), so the info equals the hard tile's XLA info
    exactly — iterations, rejections, damping, stall — also when that tile stalls and the
    solve falls back to the sequential answer (one compile: the weights are an argument)."""
    def step(h, x, p):  # |J| up to ~p·e^p: Newton from step(0, x) overshoots
        return jnp.exp(p * jnp.tanh(h)) + x - 1

    h0 = jnp.zeros(64, jnp.float32)
    xs = jax.random.normal(jax.random.key(4), (200, 64), jnp.float32)
    fused = jax.jit(lambda p: pararnn.solve(step, h0, xs, p, algorithm="fused", return_info=True,
                                            max_iters=60))
    per_tile = jax.jit(lambda x, p: pararnn.solve(step, h0[:32], x, p, algorithm="chunked",
                                                  return_info=True, max_iters=60)[1])
    seq = jax.jit(lambda p: pararnn.solve(step, h0, xs, p, method="sequential"))
    for hard, converges in ((2.0, True), (6.0, False)):
        p = jnp.concatenate([jnp.full((32,), 0.3), jnp.full((32,), hard)]).astype(jnp.float32)
        hs, info = fused(p)
        easy, tough = per_tile(xs[:, :32], p[:32]), per_tile(xs[:, 32:], p[32:])
        assert int(easy.iterations) < int(tough.iterations) and int(tough.rejected) >= 1
        assert bool(tough.converged) == converges == bool(info.converged)
        for field in ("iterations", "rejected", "stalled", "fell_back"):
            assert int(getattr(info, field)) == int(getattr(tough, field)), (hard, field)
        assert float(info.damping) == float(tough.damping)
        want = np.asarray(seq(p))
        if converges:  # the kernel's own answer: within tol·max|h| (|h| up to ~10)
            assert np.abs(np.asarray(hs) - want).max() <= 1e-4 * max(1.0, np.abs(want).max())
        else:  # stalled: the sequential fallback, bit for bit
            np.testing.assert_array_equal(np.asarray(hs), want)


@pytest.mark.slow
def test_long_memory_chunks_are_linked_exactly_like_the_xla_iteration():
    """Slowly decaying channels (Jacobians 0.9–0.995): a chunk's product of Jacobians stays
    large, so each Newton step depends on linking the chunks correctly. One program (32
    channels) must take exactly the XLA iteration's steps (a mislinked chunk costs extra
    iterations while still converging) and land on the sequential answer."""
    def leaky(h, x, p):
        return p * h + (1 - p) * jnp.tanh(x + 0.5 * h)

    h0 = jnp.zeros(32, jnp.float32)
    xs = jax.random.normal(jax.random.key(5), (1000, 32), jnp.float32)
    p = jnp.linspace(0.9, 0.995, 32, dtype=jnp.float32)
    hs, info = pararnn.solve(leaky, h0, xs, p, algorithm="fused", return_info=True)
    _, info_x = pararnn.solve(leaky, h0, xs, p, algorithm="chunked", return_info=True)
    assert bool(info.converged) and not bool(info.fell_back)
    assert int(info.iterations) == int(info_x.iterations)
    seq = pararnn.solve(leaky, h0, xs, p, method="sequential")
    # float32, tol 1e-5 on the residual; measured 8e-7 (the error can grow by 1/(1 − 0.995))
    assert np.abs(np.asarray(hs) - np.asarray(seq)).max() <= 1e-4


@pytest.mark.slow
def test_one_program_runs_exactly_the_xla_iteration():
    """With all channels in one program the fused solve is the XLA iteration: the same
    iterations, rejected steps, damping and answer."""
    def step(h, x, p):
        return jnp.exp(p * jnp.tanh(h)) + x - 1

    h0 = jnp.zeros(16, jnp.float32)
    xs = jax.random.normal(jax.random.key(2), (200, 16), jnp.float32)
    p = jnp.full((16,), 2.0, jnp.float32)
    run = lambda alg: pararnn.solve(step, h0, xs, p, algorithm=alg, return_info=True,
                                    max_iters=60)
    hs_f, info_f = run("fused")
    hs_x, info_x = run("chunked")
    assert int(info_f.rejected) >= 1 and float(info_f.damping) > 0  # the path was exercised
    for field in ("iterations", "rejected", "converged", "fell_back", "stalled"):
        assert int(getattr(info_f, field)) == int(getattr(info_x, field)), field
    assert float(info_f.damping) == float(info_x.damping)
    assert bool(info_f.converged)
    assert np.abs(np.asarray(hs_f) - np.asarray(hs_x)).max() <= 1e-4  # |h| up to ~7: tol·|h|


@pytest.mark.slow
@pytest.mark.parametrize("fallback", ["none", "raise"])
def test_fallback_none_and_raise(fallback):
    def step(h, x, p):
        return jnp.tanh(p * h + x)

    h0 = jnp.zeros(32, jnp.float32)
    xs = jax.random.normal(jax.random.key(3), (300, 32), jnp.float32)
    p = jnp.full((32,), 3.0, jnp.float32)
    if fallback == "raise":
        with pytest.raises(pararnn.ConvergenceError, match="did not converge"):
            pararnn.solve(step, h0, xs, p, algorithm="fused", max_iters=4, fallback="raise")
        return
    hs, info = pararnn.solve(step, h0, xs, p, algorithm="fused", max_iters=4, fallback="none",
                             return_info=True)
    assert not bool(info.converged) and not bool(info.fell_back)
    hprev = jnp.concatenate([h0[None], hs[:-1]])
    resid = float(jnp.abs(step(hprev, xs, p) - hs).max())
    assert resid == pytest.approx(float(info.residual), rel=1e-6)  # info describes hs


def _batched_user_case():
    case = make_case("user", 7)
    xs_b = jax.tree_util.tree_map(lambda l: jnp.stack([l, 0.5 * l, -l]), case.xs)
    f = jax.vmap(lambda xs: pararnn.solve(case.step, case.h0, xs, case.params, algorithm="fused"))
    return case, xs_b, f


def test_vmap_runs_one_kernel_with_the_batch_as_a_grid_axis():
    _, xs_b, f = _batched_user_case()
    jaxpr = jax.make_jaxpr(f)(xs_b).jaxpr
    grids = [e.params["grid_mapping"].grid for e in _all_eqns(jaxpr)
             if e.primitive.name == "pallas_call"]
    # one kernel per platform branch (CUDA, interpret), each with the batch as its first
    # grid axis (then the two 32-channel tiles) — not a loop of kernels
    assert len(grids) == 2 and all(g == (3, 2) for g in grids), grids
    assert not any(e.primitive.name in ("while", "scan") and _contains_pallas(e)
                   for e in _all_eqns(jaxpr))


@pytest.mark.slow
def test_vmapped_fused_solve_matches_the_sequential_solve():
    case, xs_b, f = _batched_user_case()
    hs = jax.jit(f)(xs_b)
    for b in range(3):
        one = jax.tree_util.tree_map(lambda l: l[b], xs_b)
        ref = pararnn.solve(case.step, case.h0, one, case.params, method="sequential")
        assert np.abs(np.asarray(hs[b]) - np.asarray(ref)).max() <= FWD_TOL


def _sub_jaxprs(eqn):
    for v in eqn.params.values():
        for item in (v if isinstance(v, (tuple, list)) else (v,)):
            if hasattr(item, "eqns"):
                yield item
            elif hasattr(item, "jaxpr") and hasattr(item.jaxpr, "eqns"):
                yield item.jaxpr


def _all_eqns(jaxpr):
    for e in jaxpr.eqns:
        yield e
        if e.primitive.name != "pallas_call":
            for sub in _sub_jaxprs(e):
                yield from _all_eqns(sub)


def _contains_pallas(eqn):
    return any(e.primitive.name == "pallas_call" for sub in _sub_jaxprs(eqn) for e in _all_eqns(sub))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["paragru", "paralstm"])
def test_bfloat16_inputs_accumulate_in_float32(name):
    """bfloat16 states and inputs: converged within the bfloat16 tolerance and as close to
    the float64 loop as the XLA path (both round every step to bfloat16)."""
    case = make_case(name, 1000, dtype=jnp.bfloat16)
    hs, info = pararnn.solve(case.step, case.h0, case.xs, case.params, jacobian=case.jacobian,
                             algorithm="fused", return_info=True)
    assert hs.dtype == jnp.bfloat16 and bool(info.converged) and not bool(info.fell_back)
    want = case.numpy_loop()
    xla = pararnn.solve(case.step, case.h0, case.xs, case.params, jacobian=case.jacobian,
                        algorithm="chunked")
    err_f = np.abs(np.asarray(hs, np.float64) - want).max()
    err_x = np.abs(np.asarray(xla, np.float64) - want).max()
    # bfloat16 keeps 8 bits: ~4e-3 relative per rounding; states ~1 and contractive cells
    # keep the error to a few roundings (measured err_f ~ err_x ~ 2e-2)
    assert err_f <= max(2 * err_x, 3e-2), (err_f, err_x)


@pytest.mark.slow
def test_init_quasi_newton_and_hand_written_jacobians():
    """The first iterate ``init`` is used (the exact answer: no iteration); quasi-Newton on
    2×2 blocks (diagonal of each block) reaches the same fixed point; a hand-written block
    Jacobian only declares the structure (the kernel differentiates the step itself)."""
    from pararnn.cells import ParaLSTMCell

    case = make_case("paralstm", 300)
    seq = pararnn.solve(case.step, case.h0, case.xs, case.params, jacobian="block",
                        method="sequential")
    hs, info = pararnn.solve(case.step, case.h0, case.xs, case.params, jacobian="block",
                             algorithm="fused", init=seq, return_info=True)
    assert int(info.iterations) == 0 and bool(info.converged)
    np.testing.assert_array_equal(np.asarray(hs), np.asarray(seq))
    hs_q, info_q = pararnn.solve(case.step, case.h0, case.xs, case.params, jacobian="block",
                                 method="quasi", algorithm="fused", return_info=True)
    _, info_n = pararnn.solve(case.step, case.h0, case.xs, case.params, jacobian="block",
                              algorithm="fused", return_info=True)
    assert bool(info_q.converged) and int(info_q.iterations) >= int(info_n.iterations)
    assert np.abs(np.asarray(hs_q) - np.asarray(seq)).max() <= FWD_TOL
    cell = ParaLSTMCell(8, 64)
    hs_j = pararnn.solve(case.step, case.h0, case.xs, case.params, jacobian=cell.jacobian,
                         algorithm="fused")
    assert np.abs(np.asarray(hs_j) - np.asarray(seq)).max() <= FWD_TOL


@pytest.mark.slow
def test_layers_run_the_fused_path():
    """A ParaGRU layer with algorithm='fused' (what 'auto' picks on CUDA) matches its
    sequential mode, forward and gradients."""
    from flax import nnx
    from pararnn.nn import ParaGRU

    layer = ParaGRU(8, 32, rngs=nnx.Rngs(0), algorithm="fused")
    x = jax.random.normal(jax.random.key(1), (2, 50, 8), jnp.float32)

    def loss(layer, mode):
        return jnp.sum(jnp.sin(layer(x, mode=mode)))

    (lp, gp) = nnx.value_and_grad(lambda m: loss(m, "parallel"))(layer)
    (ls, gs) = nnx.value_and_grad(lambda m: loss(m, "sequential"))(layer)
    assert abs(float(lp) - float(ls)) <= 1e-3
    for a, b in zip(jax.tree_util.tree_leaves(nnx.state(gp)), jax.tree_util.tree_leaves(nnx.state(gs))):
        assert float(jnp.abs(a - b).max()) <= 1e-4 * max(1.0, float(jnp.abs(b).max()))
