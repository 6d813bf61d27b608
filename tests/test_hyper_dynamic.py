"""HyperGRU / HyperLSTM: parallel = sequential = a plain lax.scan of Ha et al.'s equations
written here from scratch (outputs and every gradient), streaming, one-step inference, errors."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from flax import nnx

from pararnn.hyper import HyperGRU, HyperLSTM

B, T, IN, H, HH, E = 2, 24, 4, 6, 4, 3
LAYERS = {"gru": HyperGRU, "lstm": HyperLSTM}


def clamp(a):
    return 0.5 * jnp.tanh(a / 0.5)


def proj(x, kernel):
    """Block-diagonal multi-head projection x (in,) → (3, H), head g owns hidden slice g."""
    heads, per_in, per_out = kernel.shape
    return jnp.concatenate([(x[g * per_in:(g + 1) * per_in] @ kernel[g]).reshape(3, per_out // 3)
                            for g in range(heads)], axis=-1)


def gru(h, a, u):
    z = jax.nn.sigmoid(a[0] * h + u[0])
    r = jax.nn.sigmoid(a[1] * h + u[1])
    return z * jnp.tanh(a[2] * (r * h) + u[2]) + (1 - z) * h


def lstm(s, a, u, p):
    c, h = s
    f = jax.nn.sigmoid(a[0] * h + u[0] + p[0] * c)
    c2 = f * c + (1 - f) * jnp.tanh(a[1] * h + u[1])
    o = jax.nn.sigmoid(a[2] * h + u[2] + p[1] * c2)
    return jnp.stack([c2, o * jnp.tanh(c2)])


def reference(kind, coupled, p, x, s0):
    """Ha et al.'s HyperRNN step by step: hyper cell reads x_t (and h_{t−1} when coupled),
    its output h^ gives z = h^ Wz + bz and scalings d = z Wd that scale the main cell's
    recurrence, input projection and bias. x (T, in), s0 = (main state, hyper state)."""

    def body(carry, x_t):
        main, hyp = carry
        h_prev = main if kind == "gru" else main[1]
        v = jnp.concatenate([x_t, h_prev]) if coupled else x_t
        pre = (v @ p["hyper_B"][0]).reshape(3, HH) + p["hyper_b"]
        if kind == "gru":
            hyp = gru(hyp, clamp(p["hyper_a"]), pre)
            ho = hyp
        else:
            hyp = lstm(hyp, clamp(p["hyper_a"]), pre, clamp(p["hyper_p"]))
            ho = hyp[1]
        z = jnp.einsum("j,jke->ke", ho, p["Wz"]) + p["bz"]
        d = jnp.einsum("ke,kegh->kgh", z, p["Wd"])
        a = clamp(d[0] * p["a"])
        u = d[1] * proj(x_t, p["B"]) + p["b"] + d[2]
        main = gru(main, a, u) if kind == "gru" else lstm(main, a, u, clamp(p["p"]))
        out = main if kind == "gru" else main[1]
        return (main, hyp), out

    return jax.lax.scan(body, s0, x)[1]


def perturbed(kind, coupling):
    """float64 layer with every parameter perturbed, so that the hyper path matters."""
    layer = LAYERS[kind](IN, H, hyper_features=HH, embedding_features=E, coupling=coupling,
                         param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    graph, state = nnx.split(layer)
    leaves, tree = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(7), len(leaves))
    leaves = [l + 0.3 * jax.random.normal(k, l.shape, l.dtype) for l, k in zip(leaves, keys)]
    return nnx.merge(graph, jax.tree.unflatten(tree, leaves))


def zero_states(kind):
    if kind == "gru":
        return jnp.zeros(H), jnp.zeros(HH)
    return jnp.zeros((2, H)), jnp.zeros((2, HH))


@pytest.fixture(scope="module")
def x64():
    return jax.random.normal(jax.random.key(1), (B, T, IN), jnp.float64)


SLOW = pytest.mark.slow


@pytest.mark.parametrize("kind,coupling,modes", [
    ("gru", "decoupled", ("parallel",)),
    pytest.param("gru", "decoupled", ("sequential",), marks=SLOW),
    pytest.param("gru", "coupled", ("parallel", "sequential"), marks=SLOW),
    pytest.param("lstm", "decoupled", ("parallel", "sequential"), marks=SLOW),
    pytest.param("lstm", "coupled", ("parallel", "sequential"), marks=SLOW)])
def test_parallel_sequential_and_reference_agree_with_grads(kind, coupling, modes, x64):
    layer = perturbed(kind, coupling)
    params = {k: getattr(layer, k)[...] for k in layer.param_names}

    def ref_loss(params, x):
        ys = jax.vmap(lambda xb: reference(kind, coupling == "coupled", params, xb, zero_states(kind)))(x)
        return jnp.sum(jnp.sin(ys)), ys

    def layer_loss(layer, x, mode):
        ys = layer(x, mode=mode)
        return jnp.sum(jnp.sin(ys)), ys

    grad_layer = nnx.jit(nnx.value_and_grad(layer_loss, argnums=(0, 1), has_aux=True),
                         static_argnums=2)
    (_, y_ref), (g_ref, gx_ref) = jax.jit(jax.value_and_grad(ref_loss, argnums=(0, 1), has_aux=True))(params, x64)
    for mode in modes:
        (_, y), (g, gx) = grad_layer(layer, x64, mode)
        assert y.shape == (B, T, H)
        # float64, solver residual <= 1e-13, contractive cells: outputs agree to ~1e-14
        np.testing.assert_allclose(y, y_ref, rtol=0, atol=1e-11, err_msg=mode)
        # gradients: same fixed point, exact Jacobians in the adjoint → ~1e-12 relative
        np.testing.assert_allclose(gx, gx_ref, rtol=0, atol=1e-9 * max(1.0, np.abs(gx_ref).max()))
        for name in layer.param_names:
            gl, gr = np.asarray(getattr(g, name)[...]), np.asarray(g_ref[name])
            assert np.abs(gl - gr).max() <= 1e-9 * max(1.0, np.abs(gr).max()), (mode, name)
    # the hyper path is live: its gradients are not all zero
    assert np.abs(np.asarray(g_ref["Wz"])).max() > 1e-3 and np.abs(np.asarray(g_ref["hyper_a"])).max() > 1e-4


@pytest.mark.parametrize("kind", ["lstm"])  # the hand-written main Jacobian (GRU's is autodiff)
def test_main_solve_jacobians_are_exact(kind):
    """The default-suite guard for the slow gradient cases above: the Jacobian (and its
    diagonal, for quasi-Newton) that the decoupled layer hands the main cell's solve, against
    autodiff of the main step, at random states and modulations (float64)."""
    import pararnn
    from pararnn.hyper.layers import _MainJacobian, _MainStep, _main_jacobian, _main_jacobian_diagonal

    layer = perturbed(kind, "decoupled")
    cell = layer.cell
    params = {k: getattr(layer, k)[...] for k in layer.param_names}
    rng = np.random.default_rng(3)
    s = jnp.asarray(0.5 * rng.normal(size=cell.main_shape))
    inp = (jnp.asarray(0.4 * rng.normal(size=(3, H))), jnp.asarray(rng.normal(size=(3, H))))  # (a_eff, u)
    jac = _MainJacobian(cell, _main_jacobian if cell.main.solve_with_hand_jacobian else cell.main.structure)
    pararnn.check_jacobian(_MainStep(cell), s, inp, params, jacobian=jac)  # raises if wrong
    full = jax.jacfwd(_MainStep(cell))(s, inp, params).reshape(s.size, s.size)
    diag = _MainJacobian(cell, _main_jacobian_diagonal)(s, inp, params)
    # float64 autodiff vs hand-written formulas: ~1e-16
    np.testing.assert_allclose(np.ravel(diag), np.diagonal(full), rtol=0, atol=1e-13)


@nnx.jit(static_argnums=2)
def float32_runs(layer, x, full):
    """The ways to run the layer, in one compiled function (one compile per case)."""
    r = dict(par=layer(x), seq=layer(x, mode="sequential"))
    s1, _ = layer.step(None, x[:, 0])
    _, r["step"] = layer.step(s1, x[:, 1])
    if full:
        r["auto"] = layer(x, mode="auto")
        _, r["state"] = layer(x[:, :40], return_state=True)
        r["cont"] = layer(x[:, 40:], h0=r["state"])
    return r


@pytest.mark.parametrize("kind,full", [("gru", False), pytest.param("gru", True, marks=SLOW),
                                       pytest.param("lstm", True, marks=SLOW)])
def test_float32_modes_agree_streaming_and_step(kind, full):
    layer = LAYERS[kind](IN, H, hyper_features=HH, rngs=nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(2), (B, 64, IN), jnp.float32)
    r = float32_runs(layer, x, full)
    assert r["par"].dtype == jnp.float32
    # float32: Newton stops at residual <= 1e-5; two chained contractive solves amplify < 10×
    np.testing.assert_allclose(r["par"], r["seq"], rtol=0, atol=1e-4)
    # one step of recurrent inference equals the sequence call at that step
    np.testing.assert_allclose(r["step"], r["seq"][:, 1], rtol=0, atol=1e-6)
    if full:
        np.testing.assert_allclose(r["auto"], r["seq"], rtol=0, atol=1e-4)
        # streaming: continue from the joint [main, hyper] state
        assert r["state"].shape == (B,) + layer.state_shape
        np.testing.assert_allclose(r["cont"], r["seq"][:, 40:], rtol=0, atol=1e-4)


@pytest.mark.slow
def test_coupled_newton_also_agrees_and_iterates_little(x64):
    layer = HyperGRU(IN, H, hyper_features=HH, coupling="coupled", method="newton",
                     param_dtype=jnp.float64, sow_info=True, rngs=nnx.Rngs(0))
    y, inter = nnx.jit(lambda l, x: nnx.capture(l, nnx.Intermediate)(x))(layer, x64)
    y_seq, _ = nnx.jit(lambda l, x: nnx.capture(l, nnx.Intermediate)(x, mode="sequential"))(layer, x64)
    np.testing.assert_allclose(y, y_seq, rtol=0, atol=1e-11)
    info = inter["solver_info"][0]
    assert int(info["iterations"]) <= 6 and not bool(info["fell_back"])


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="coupling"):
        HyperGRU(IN, H, coupling="both", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="hyper_features"):
        HyperLSTM(IN, H, hyper_features=0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="method"):
        HyperGRU(IN, H, method="dense", rngs=nnx.Rngs(0))
    layer = HyperGRU(IN, H, hyper_features=HH, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="in_features=4"):
        layer(jnp.ones((B, 5, IN + 1)))
    with pytest.raises(ValueError, match=r"h0 must have shape \(batch, \*state_shape\) = \(2, 10\)"):
        layer(jnp.ones((B, 5, IN)), h0=jnp.zeros((B, H)))
    with pytest.raises(ValueError, match="mode"):
        layer(jnp.ones((B, 5, IN)), mode="fast")
