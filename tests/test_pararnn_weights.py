"""ParaGRU / ParaLSTM against Apple's ParaRNN: the default init follows its defaults, and its
weights load into the layers — checked on hand-built arrays in ParaRNN's own layout against a
NumPy implementation of its forward equations written here (GRUDiagMH / LSTMCIFGDiagMH
``recurrence_step``: per-head input einsum, LSTM gates stored [f, o, c], state [c, h])."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from flax import nnx

import pararnn.nn as pnn

IN, H, HEADS, B, T = 4, 6, 2, 2, 30


def sigmoid(v):
    return 1 / (1 + np.exp(-v))


def reference_input_projection(x, B_ref, b):
    """ParaRNN: einsum('...hi,hivj->...vhj', x split into heads, B).flatten(-2) + b → (..., 3, H)."""
    heads = B_ref.shape[0]
    xh = x.reshape(x.shape[:-1] + (heads, -1))
    u = np.einsum("...hi,hivj->...vhj", xh, B_ref)
    return u.reshape(u.shape[:-2] + (-1,)) + b


def reference_gru(sd, x):
    """GRUDiagMH: z, r = σ(A[:2] h + Bx[:2] + b[:2]); ĥ = tanh(A[2]·h·r + Bx[2] + b[2]);
    h ← z ĥ + (1 − z) h. x (B, T, in) → (B, T, H)."""
    u = reference_input_projection(x, sd["B"], sd["b"])
    h, out = np.zeros((x.shape[0], sd["A"].shape[1])), []
    for t in range(x.shape[1]):
        z = sigmoid(sd["A"][0] * h + u[:, t, 0])
        r = sigmoid(sd["A"][1] * h + u[:, t, 1])
        h = z * np.tanh(sd["A"][2] * h * r + u[:, t, 2]) + (1 - z) * h
        out.append(h)
    return np.stack(out, 1)


def reference_lstm(sd, x):
    """LSTMCIFGDiagMH, gates stored [f, o, c]: f = σ(A_f h + (Bx)_f + b_f + C_f c);
    c ← f c + (1 − f) tanh(A_c h + (Bx)_c + b_c); o = σ(A_o h + (Bx)_o + b_o + C_o c);
    h ← o tanh(c); state [c, h] concatenated. x (B, T, in) → h (B, T, N)."""
    u = reference_input_projection(x, sd["B"], sd["b"])
    n = sd["A"].shape[1]
    state, out = np.zeros((x.shape[0], 2 * n)), []
    for t in range(x.shape[1]):
        c, h = state[:, :n], state[:, n:]
        pre = sd["A"] * h[:, None, :] + u[:, t]
        f = sigmoid(pre[:, 0] + sd["C"][0] * c)
        c = f * c + (1 - f) * np.tanh(pre[:, 2])
        o = sigmoid(pre[:, 1] + sd["C"][1] * c)
        state = np.concatenate([c, o * np.tanh(c)], axis=1)
        out.append(state[:, n:])
    return np.stack(out, 1)


def hand_built(kind, seed=0, scale=0.4):
    rng = np.random.default_rng(seed)
    sd = {"A": scale * rng.uniform(-1, 1, (3, H)), "B": rng.normal(size=(HEADS, IN // HEADS, 3, H // HEADS)),
          "b": 0.3 * rng.normal(size=(3, H))}
    if kind == "lstm":
        sd["C"] = scale * rng.uniform(-1, 1, (2, H))
    return sd


LAYERS = {"gru": (pnn.ParaGRU, reference_gru), "lstm": (pnn.ParaLSTM, reference_lstm)}


@pytest.mark.parametrize("kind", ["gru", "lstm"])
@pytest.mark.parametrize("max_norm", [0.5, None], ids=["clamped", "unclamped"])
def test_loaded_layer_computes_pararnn_forward(kind, max_norm):
    cls, reference = LAYERS[kind]
    sd = hand_built(kind)
    layer = cls(IN, H, num_heads=HEADS, max_recurrent_norm=max_norm, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    assert pnn.load_pararnn_state_dict(layer, {"blocks.3.rnn_cell." + k: v for k, v in sd.items()},
                                       prefix="blocks.3.rnn_cell.") is layer
    x = np.random.default_rng(1).normal(size=(B, T, IN))
    want = reference(sd, x)
    # the sequential mode (the parallel one equals it: tests/test_layers.py)
    got = nnx.jit(lambda l, x: l(x, mode="sequential"))(layer, jnp.asarray(x))
    # float64; the clamp's artanh/tanh round trip: measured ≤ 3e-16
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    # and back: the same arrays in ParaRNN's layout
    back = pnn.to_pararnn_state_dict(layer)
    assert sorted(back) == sorted(sd)
    for k in sd:
        np.testing.assert_allclose(back[k], sd[k], rtol=0, atol=1e-14, err_msg=k)


def test_lstm_gate_order_matters():
    """The [f, o, c] → [f, c, o] reordering is exercised: loading ParaRNN's arrays as if
    they were stored in pararnn's order computes something else."""
    sd = hand_built("lstm")
    layer = pnn.ParaLSTM(IN, H, num_heads=HEADS, max_recurrent_norm=None, param_dtype=jnp.float64,
                         rngs=nnx.Rngs(0))
    pnn.load_pararnn_state_dict(layer, sd)
    layer.a[...] = jnp.asarray(sd["A"])
    x = np.random.default_rng(1).normal(size=(B, T, IN))
    assert np.abs(np.asarray(layer(jnp.asarray(x), mode="sequential")) - reference_lstm(sd, x)).max() > 1e-3


def test_load_errors_name_the_key():
    layer = pnn.ParaGRU(IN, H, num_heads=HEADS, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    sd = hand_built("gru")
    with pytest.raises(ValueError, match=r"m\.B has shape \(2, 2, 9\), expected \(2, 2, 3, 3\)"):
        pnn.load_pararnn_state_dict(layer, {"m." + k: (v.reshape(2, 2, 9) if k == "B" else v) for k, v in sd.items()},
                                    prefix="m.")
    with pytest.raises(ValueError, match=r"missing \['C'\], unexpected \[\]"):
        pnn.load_pararnn_state_dict(pnn.ParaLSTM(IN, H, num_heads=HEADS, param_dtype=jnp.float64, rngs=nnx.Rngs(0)), sd)
    with pytest.raises(ValueError, match=r"unexpected \['extra'\]"):
        pnn.load_pararnn_state_dict(layer, {**sd, "extra": np.zeros(2)})
    big = dict(sd, A=np.full((3, H), 0.7))
    with pytest.raises(ValueError, match=r"A has entries up to \|0.7\|.*max_recurrent_norm=0.5.*max_recurrent_norm=None"):
        pnn.load_pararnn_state_dict(pnn.ParaGRU(IN, H, num_heads=HEADS, max_recurrent_norm=0.5,
                                                param_dtype=jnp.float64, rngs=nnx.Rngs(0)), big)
    with pytest.raises(TypeError, match="ParaGRU or ParaLSTM, got dict"):
        pnn.load_pararnn_state_dict({"A": 1}, sd)


def test_default_init_follows_pararnn():
    """ParaRNN's defaults (utils/init.py and the cells' reset_parameters): recurrent weights
    N(0, (2/√(5H))²) ('xlstm'); input kernels Xavier-uniform with fan-in in/heads and fan-out
    H (GRUDiagMH) or H/heads (LSTMCIFGDiagMH); biases zero but row 0 = −linspace(0, 1)."""
    n_in, n, heads = 64, 256, 2
    for cls, fan_out, params in [(pnn.ParaGRU, n, ("a",)), (pnn.ParaLSTM, n // heads, ("a", "p"))]:
        layer = cls(n_in, n, num_heads=heads, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
        kernel = np.asarray(layer.B[...])
        bound = np.sqrt(6 / (n_in // heads + fan_out))
        # uniform on ±bound: max |w| within 0.5 % of the bound for 24k draws, std bound/√3
        assert 0.995 * bound < np.abs(kernel).max() <= bound, cls.__name__
        np.testing.assert_allclose(kernel.std(), bound / np.sqrt(3), rtol=0.02)
        for name in params:
            w = np.asarray(getattr(layer, name)[...])
            # N(0, σ²), σ = 2/√(5·256) = 0.056 from 512–768 draws: the sample std within 8 %
            np.testing.assert_allclose(w.std(), 2 / np.sqrt(5 * n), rtol=0.08, err_msg=f"{cls.__name__}.{name}")
        bias = np.asarray(layer.b[...])
        np.testing.assert_array_equal(bias[0], -np.linspace(0, 1, n))
        np.testing.assert_array_equal(bias[1:], 0.0)
