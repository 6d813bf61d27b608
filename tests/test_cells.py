"""pararnn.cells: hand-written Jacobians agree with autodiff and declare the right structure;
each cell's recurrence matches an independent NumPy float64 loop."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp

import pararnn
from pararnn.cells import ElmanCell, GRUCell, LSTMCell, MinGRUCell, ParaGRUCell, ParaLSTMCell

CELLS = {
    "paragru": ParaGRUCell(6, 8, num_heads=2, max_recurrent_norm=0.5),  # the soft clamp
    "paralstm": ParaLSTMCell(6, 8, num_heads=2),  # the default: no clamp (as ParaRNN)
    "gru": GRUCell(6, 8),
    "lstm": LSTMCell(6, 8),
    "elman": ElmanCell(6, 8),
    "mingru": MinGRUCell(6, 8, num_heads=2),
}


def _sig(v):
    return 1 / (1 + np.exp(-v))


def np_project(name, p, x):
    """Independent NumPy input projections (loops over heads, no reshapes shared with the lib)."""
    if name in ("paragru", "paralstm", "mingru"):
        heads, per_in, per_out = p["B"].shape
        gates, hidden = p["b"].shape
        per_h = hidden // heads
        u = np.zeros((gates, hidden))
        for g in range(heads):
            y = x[g * per_in:(g + 1) * per_in] @ p["B"][g]  # (gates * per_h,)
            for k in range(gates):
                u[k, g * per_h:(g + 1) * per_h] = y[k * per_h:(k + 1) * per_h]
        return u + p["b"]
    return x @ p["W_i"] + p["b"]


def np_clamp(a, bound):
    """The soft clamp |a| < bound (bound None: none)."""
    return a if bound is None else bound * np.tanh(a / bound)


def np_step(name, h, u, p, d=8):
    bound = getattr(CELLS[name], "max_recurrent_norm", None)
    if name == "paragru":
        a = np_clamp(p["a"], bound)
        z, r = _sig(a[0] * h + u[0]), _sig(a[1] * h + u[1])
        return z * np.tanh(a[2] * r * h + u[2]) + (1 - z) * h
    if name == "paralstm":
        a, pp = np_clamp(p["a"], bound), np_clamp(p["p"], bound)
        c, hh = h
        f = _sig(a[0] * hh + u[0] + pp[0] * c)
        c2 = f * c + (1 - f) * np.tanh(a[1] * hh + u[1])
        o = _sig(a[2] * hh + u[2] + pp[1] * c2)
        return np.stack([c2, o * np.tanh(c2)])
    if name == "gru":
        hw = h @ p["W_h"]
        r, z = _sig(u[:d] + hw[:d]), _sig(u[d:2 * d] + hw[d:2 * d])
        n = np.tanh(u[2 * d:] + r * hw[2 * d:])
        return (1 - z) * n + z * h
    if name == "lstm":
        c, hh = h[:d], h[d:]
        y = u + hh @ p["W_h"]
        i, f, g, o = _sig(y[:d]), _sig(y[d:2 * d]), np.tanh(y[2 * d:3 * d]), _sig(y[3 * d:])
        c2 = f * c + i * g
        return np.concatenate([c2, o * np.tanh(c2)])
    if name == "mingru":
        z = _sig(u[0])
        return (1 - z) * h + z * u[1]
    return np.tanh(h @ p["W_h"] + u)  # elman


@pytest.mark.parametrize("name", CELLS)
def test_hand_written_jacobian_matches_autodiff_and_structure(name):
    cell = CELLS[name]
    params = cell.init(jax.random.key(0), jnp.float64)
    x = jax.random.normal(jax.random.key(1), (cell.in_features,), jnp.float64)
    u = cell.project(params, x)
    h0 = 0.5 * jax.random.normal(jax.random.key(2), cell.state_shape, jnp.float64)
    if cell.structure == "dense":  # any Jacobian is dense; a narrower claim must fail
        with pytest.raises(pararnn.JacobianStructureError):
            pararnn.check_jacobian(cell.step, h0, u, params, jacobian="diagonal")
    else:
        assert pararnn.check_jacobian(cell.step, h0, u, params, jacobian=cell.structure) == 0.0
    pararnn.check_jacobian(cell.step, h0, u, params, jacobian=cell.jacobian)
    full = jax.jacfwd(cell.step)(h0, u, params).reshape(h0.size, h0.size)
    np.testing.assert_allclose(cell.jacobian_diagonal(h0, u, params).reshape(-1), np.diag(full),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", CELLS)
def test_recurrence_matches_numpy_loop(name):
    cell, t = CELLS[name], 300
    params = cell.init(jax.random.key(0), jnp.float64)
    x = np.asarray(jax.random.normal(jax.random.key(1), (t, cell.in_features), jnp.float64))
    u = cell.project(params, jnp.asarray(x))
    hs = jax.jit(lambda u: pararnn.solve(cell.step, cell.initial_state(jnp.float64), u, params,
                                         jacobian=cell.jacobian))(u)
    p = {k: np.asarray(v) for k, v in params.items()}
    h, want = np.zeros(cell.state_shape), []
    for i in range(t):
        h = np_step(name, h, np_project(name, p, x[i]), p)
        want.append(h)
    np.testing.assert_allclose(hs, np.stack(want), rtol=0, atol=1e-10)


def test_paragru_init_matches_the_recipe():
    cell = ParaGRUCell(64, 128, num_heads=4)
    p = cell.init(jax.random.key(0), jnp.float64)
    assert p["B"].shape == (4, 16, 96) and p["a"].shape == (3, 128) and p["b"].shape == (3, 128)
    np.testing.assert_allclose(p["b"][0], -np.linspace(0, 1, 128))
    np.testing.assert_array_equal(p["b"][1:], 0)
    assert abs(float(jnp.std(p["a"])) - 2 / np.sqrt(5 * 128)) < 0.02  # std 2/√(5·fan_in)
    limit = np.sqrt(6 / (16 + 128))  # Xavier uniform bound with ParaRNN's fans: in/heads, hidden
    assert float(jnp.max(jnp.abs(p["B"]))) <= limit and float(jnp.max(jnp.abs(p["B"]))) > 0.9 * limit


@pytest.mark.parametrize("cls,kw,pattern", [
    (ParaGRUCell, dict(in_features=7, hidden_features=8), r"in_features=7 must be divisible by num_heads=2"),
    (ParaLSTMCell, dict(in_features=8, hidden_features=9), r"hidden_features=9 must be divisible by num_heads=2"),
    (GRUCell, dict(in_features=0, hidden_features=8), r"in_features must be a positive int, got 0"),
])
def test_bad_cell_sizes(cls, kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        cls(**kw)
