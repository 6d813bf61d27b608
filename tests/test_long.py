"""Long runs (marked slow; `pytest -m slow`, run by CI when time allows): the default suite's
checks at sizes closer to real use."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from flax import nnx

import pararnn
import pararnn.nn as pnn
from cells import CELLS, numpy_loop

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("cell", CELLS.values(), ids=CELLS.keys())
def test_65536_steps_float32_against_float64_loop(cell):
    t = 2 ** 16
    p, xs, h0 = cell.params(dtype=jnp.float32), cell.inputs(t, dtype=jnp.float32), cell.h0(dtype=jnp.float32)
    hs, info = jax.jit(lambda: pararnn.solve(cell.jax_step, h0, xs, p, jacobian=cell.jacobian,
                                             return_info=True))()
    assert bool(info.converged) and not bool(info.fell_back)
    # float32 with tol 1e-5 over a contractive cell (see test_solve.py)
    assert np.abs(np.asarray(hs, np.float64) - numpy_loop(cell, h0, xs, p)).max() <= 1e-4


@pytest.mark.parametrize("name", ["ParaGRU", "ParaLSTM", "GRU", "LSTM", "Elman"])
def test_layers_at_width_128_and_4096_steps(name):
    layer = getattr(pnn, name)(64, 128, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (4, 4096, 64), jnp.float32)
    loss = lambda layer, mode: jnp.mean(layer(x, mode=mode) ** 2)
    (l_par, g_par) = nnx.jit(nnx.value_and_grad(lambda l: loss(l, "parallel")))(layer)
    (l_seq, g_seq) = nnx.jit(nnx.value_and_grad(lambda l: loss(l, "sequential")))(layer)
    np.testing.assert_allclose(l_par, l_seq, rtol=1e-4)
    for (path, a), (_, b) in zip(nnx.to_flat_state(g_par), nnx.to_flat_state(g_seq)):
        a, b = np.asarray(a[...]), np.asarray(b[...])
        # float32: forward agrees to ~1e-5; gradients sum 16k per-step terms: 1e-3 relative
        assert np.abs(a - b).max() <= 1e-3 * np.abs(b).max(), path
