"""pararnn.nn layers: parallel = sequential (outputs and every parameter gradient), Flax's own
GRU/LSTM as independent references, streaming, one-step inference, NNX transforms, errors."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from flax import nnx

import pararnn.nn as pnn

LAYERS = {"ParaGRU": pnn.ParaGRU, "ParaLSTM": pnn.ParaLSTM, "GRU": pnn.GRU, "LSTM": pnn.LSTM,
          "Elman": pnn.Elman, "MinGRU": pnn.MinGRU}
B, T, IN, H = 2, 50, 4, 6


def make(name, dtype=jnp.float64, **kw):
    return LAYERS[name](IN, H, param_dtype=dtype, rngs=nnx.Rngs(0), **kw)


def inputs(dtype=jnp.float64, t=T, seed=1):
    return jax.random.normal(jax.random.key(seed), (B, t, IN), dtype)


def loss_and_grads(layer, x, mode):
    def loss(layer):
        return jnp.sum(jnp.sin(layer(x, mode=mode)))
    return nnx.jit(nnx.value_and_grad(loss))(layer)


# ParaLSTM (16 s) in the slow stage: its block solve and gradients are checked at 1e-12 in
# test_grad.py / test_solve.py
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "ParaLSTM" else n
                                  for n in LAYERS])
def test_parallel_equals_sequential_float64_with_grads(name):
    layer, x = make(name), inputs()
    y_par, y_seq = layer(x, mode="parallel"), layer(x, mode="sequential")
    assert y_par.shape == (B, T, H) and y_par.dtype == jnp.float64
    np.testing.assert_allclose(y_par, y_seq, rtol=0, atol=1e-10)
    (l_par, g_par), (l_seq, g_seq) = loss_and_grads(layer, x, "parallel"), loss_and_grads(layer, x, "sequential")
    np.testing.assert_allclose(l_par, l_seq, rtol=1e-12)
    for (path, gp), gs in zip(nnx.to_flat_state(g_par), [v for _, v in nnx.to_flat_state(g_seq)]):
        gp, gs = np.asarray(gp[...]), np.asarray(gs[...])
        # float64: measured ≤ 3e-15 relative for every layer (solver residual <= 1e-13 and
        # exact Jacobians at the solution); a backward pass with the previous Newton
        # iterate's Jacobian measured 1e-11–6e-9 in test_grad.py
        assert np.abs(gp - gs).max() <= 1e-12 * max(np.abs(gs).max(), 1.0), (path, np.abs(gp - gs).max() / max(np.abs(gs).max(), 1.0))


@pytest.mark.parametrize("name", LAYERS)
def test_parallel_equals_sequential_float32(name):
    layer, x = make(name, jnp.float32), inputs(jnp.float32, t=400)
    y_par, y_seq = layer(x), layer(x, mode="sequential")
    assert y_par.dtype == jnp.float32
    # float32: Newton stops at residual <= 1e-5, contractive cells at init amplify it < 10×
    np.testing.assert_allclose(y_par, y_seq, rtol=0, atol=1e-4)
    np.testing.assert_allclose(layer(x, mode="auto"), y_seq, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name,flax_cell", [("GRU", "GRUCell"), ("LSTM", "OptimizedLSTMCell")])
def test_dense_layers_match_flax_rnn(name, flax_cell):
    layer = make(name)
    cell = getattr(nnx, flax_cell)(IN, H, param_dtype=jnp.float64, rngs=nnx.Rngs(3))
    # copy our weights into Flax's cell (same gate order and bias placement)
    cell.dense_i.kernel[...] = layer.W_i[...]
    cell.dense_h.kernel[...] = layer.W_h[...]
    if name == "GRU":
        cell.dense_i.bias[...] = layer.b[...]
    else:
        cell.dense_h.bias[...] = layer.b[...]
    x = inputs()
    want = nnx.RNN(cell)(x)
    np.testing.assert_allclose(layer(x), want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", LAYERS)
def test_streaming_in_chunks_equals_one_call(name):
    layer, x = make(name), inputs(t=60)
    full, final = layer(x, return_state=True)
    y1, h = layer(x[:, :25], return_state=True)
    y2, h = layer(x[:, 25:], h0=h, return_state=True)
    np.testing.assert_allclose(jnp.concatenate([y1, y2], 1), full, rtol=0, atol=1e-10)
    np.testing.assert_allclose(h, final, rtol=0, atol=1e-10)
    assert final.shape == (B,) + layer.state_shape


@pytest.mark.parametrize("name", LAYERS)
def test_one_step_inference_equals_sequence_call(name):
    layer, x = make(name), inputs(t=20)
    want = layer(x)
    step = nnx.jit(lambda layer, h, x_t: layer.step(h, x_t))
    h = layer.initial_state(B, jnp.float64)
    for t in range(20):
        h, y_t = step(layer, h, x[:, t])
        np.testing.assert_allclose(y_t, want[:, t], rtol=0, atol=1e-10)


def test_nnx_vmap_and_remat():
    layer, x = make("ParaGRU"), inputs()
    per_example = nnx.vmap(lambda layer, xb: layer(xb[None])[0], in_axes=(None, 0))(layer, x)
    np.testing.assert_allclose(per_example, layer(x), rtol=0, atol=1e-12)

    def loss(layer, remat):
        f = nnx.remat(lambda layer, x: layer(x)) if remat else (lambda layer, x: layer(x))
        return jnp.sum(f(layer, x) ** 2)
    g_remat = nnx.grad(lambda l: loss(l, True))(layer)
    g_plain = nnx.grad(lambda l: loss(l, False))(layer)
    for (_, a), (_, b) in zip(nnx.to_flat_state(g_remat), nnx.to_flat_state(g_plain)):
        np.testing.assert_allclose(a[...], b[...], rtol=1e-12)


# Documented in README (measured at init on unit-normal inputs, float32): Newton takes 3
# iterations for every cell, quasi-Newton 11-16 for the dense ones. Bounds leave one spare.
INIT_ITERATION_BOUNDS = [("ParaGRU", "newton", 4), ("ParaLSTM", "newton", 4), ("GRU", "newton", 4),
                         ("GRU", "quasi", 17), ("LSTM", "quasi", 17), ("Elman", "quasi", 17),
                         ("MinGRU", "newton", 1)]  # linear: one Newton step is the exact solve


@pytest.mark.parametrize("name,method,bound", INIT_ITERATION_BOUNDS)
def test_init_converges_in_few_newton_iterations(name, method, bound):
    kw = {} if name.startswith(("Para", "Min")) else {"method": method}
    layer = LAYERS[name](16, 32, param_dtype=jnp.float32, sow_info=True, rngs=nnx.Rngs(0), **kw)
    x = jax.random.normal(jax.random.key(0), (4, 1024, 16), jnp.float32)
    _, intermediates = nnx.capture(layer, nnx.Intermediate)(x)
    info = intermediates["solver_info"][0]
    assert not bool(info["fell_back"])
    assert int(info["iterations"]) <= bound


def test_bad_inputs_are_named():
    layer = make("ParaGRU")
    with pytest.raises(ValueError, match=r"x must have shape \(batch, time, in_features\) with in_features=4, got shape \(50, 4\)"):
        layer(jnp.zeros((T, IN)))
    with pytest.raises(ValueError, match=r"x has 5 features in its last axis, expected in_features=4"):
        layer(jnp.zeros((B, T, 5)))
    with pytest.raises(ValueError, match=r"mode must be one of \('parallel', 'sequential', 'auto'\), got 'fast'"):
        layer(inputs(), mode="fast")
    with pytest.raises(ValueError, match=r"h0 must have shape \(batch, \*state_shape\) = \(2, 6\)"):
        layer(inputs(), h0=jnp.zeros((3, 6)))
    with pytest.raises(ValueError, match=r"x_t must have shape \(batch, in_features\)"):
        layer.step(None, jnp.zeros((B, 1, IN)))
    with pytest.raises(ValueError, match=r"mode must be one of"):
        pnn.GRU(IN, H, mode="parralel", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"method must be 'newton' or 'quasi', got 'sequential'"):
        pnn.GRU(IN, H, method="sequential", rngs=nnx.Rngs(0))
