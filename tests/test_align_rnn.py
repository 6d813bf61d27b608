"""pararnn.align on the Elman RNN: every rule, with the frozen network's temporal credit
from the parallel adjoint of pararnn.solve, against a sequential NumPy loop (BPTT written
out by hand over the full horizon); parallel and lax.scan modes agree; the cell's
hand-written Jacobian is right.

Tolerance: float64; the parallel solve stops at a residual of 1e-13·max(1, max|z|)
(pararnn's float64 default), and the adjoint scan rounds in another order than the loop;
the errors reach the updates amplified by at most the horizon (T = 12) and the weights'
norms, so rtol 1e-9 is ~10³ above what is needed and ~10⁷ below a real mismatch."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp

import pararnn
import pararnn.align as al

# Jitted once per stack: eager random draws compile one small program per op and shape,
# seconds on a loaded CPU.
feedback_weights = jax.jit(al.feedback_weights, static_argnums=(0, 1))
init = jax.jit(lambda stack, key: stack.init(key, jnp.float64), static_argnums=0)

RTOL = 1e-9
B, T, D, O = 3, 12, 6, 2


def relu(z):
    return np.maximum(z, 0)


def np_forward(p, x):
    """z (B, T, D) of the ReLU RNN (NTK scales) and the readout (B, T, O)."""
    (c, r) = p
    s_i, s_h = 1.0, 1.0 / np.sqrt(D)  # in_features = 1
    z, zs = np.zeros((x.shape[0], D)), []
    for t in range(x.shape[1]):
        z = relu(z) @ c["w_h"] * s_h + x[:, t] @ c["w_i"] * s_i + c["b"]
        zs.append(z)
    zs = np.stack(zs, 1)
    return zs, relu(zs) @ r["w"] / np.sqrt(D) + r["b"]


def np_bptt(e, w_h, w_o, z_deriv):
    """λ_t = (e_t W_oᵀ s + λ_{t+1} W_hᵀ s) ⊙ relu'(z_t), t = T−1 … 0 (the whole horizon)."""
    lam, lams = np.zeros((e.shape[0], D)), [None] * e.shape[1]
    for t in range(e.shape[1] - 1, -1, -1):
        lam = (e[:, t] @ w_o.T + lam @ w_h.T) / np.sqrt(D) * (z_deriv[:, t] > 0)
        lams[t] = lam
    return np.stack(lams, 1)


def np_local(x, z_pre, lam, e):
    """Local updates with presynaptic states from ``z_pre``: h_{t−1} = relu(z_{t−1})."""
    h_prev = relu(np.concatenate([np.zeros_like(z_pre[:, :1]), z_pre[:, :-1]], 1))
    s = 1 / np.sqrt(D)
    sum_bt = lambda a, b: np.einsum("bti,btj->ij", a, b)
    return [{"w_i": sum_bt(x, lam), "b": lam.sum((0, 1)), "w_h": s * sum_bt(h_prev, lam)},
            {"w": s * sum_bt(relu(z_pre), e), "b": e.sum((0, 1))}]


def np_rule(rule, stack, p, p0, x, y, key):
    pn, p0n = jax.tree_util.tree_map(np.asarray, (p, p0))
    z, out = np_forward(pn, x)
    z0, _ = np_forward(p0n, x)
    e = (out - y) / (x.shape[0] * x.shape[1])  # mse_loss: mean over batch and time
    if rule == "backprop":
        return np_local(x, z, np_bptt(e, pn[0]["w_h"], pn[1]["w"], z), e)
    if rule == "align_zero":
        return np_local(x, z0, np_bptt(e, p0n[0]["w_h"], p0n[1]["w"], z0), e)
    if rule == "align_ada":
        return np_local(x, z, np_bptt(e, p0n[0]["w_h"], p0n[1]["w"], z0), e)
    if rule == "fa":
        fb = jax.tree_util.tree_map(np.asarray, feedback_weights("fa", stack, p, x, key=key))
        return np_local(x, z, np_bptt(e, fb[0]["w_h"], fb[1]["w"], z), e)
    if rule == "dfa":
        m = np.asarray(feedback_weights("dfa", stack, p, x, key=key)[0])
        return np_local(x, z, (e @ m) * (z > 0), e)
    return np_local(x, z, np.zeros_like(z), e)  # readout


@pytest.fixture(scope="module")
def setup():
    par = al.rnn(1, D, O, mode="parallel")  # frozen-network credit by pararnn.solve's VJP
    seq = al.rnn(1, D, O, mode="sequential")  # lax.scan + autodiff (BPTT)
    p0 = init(par, jax.random.key(0))
    rng = np.random.default_rng(1)
    p = jax.tree_util.tree_map(lambda a: a + 0.3 * rng.standard_normal(a.shape), p0)
    x, _ = al.add_task(B, T, seed=2, dtype=np.float64)
    y = rng.standard_normal((B, T, O))  # any targets: e must reach every time step
    return par, seq, p0, p, x, y


# Each rule compiles two or three pararnn.solve programs (~5 s each on a loaded 2-core CPU):
# Align-zero, the required check, runs by default, the rest in the slow stage.
SLOW = pytest.mark.slow


@pytest.mark.parametrize("rule", ["align_zero"] + [pytest.param(r, marks=SLOW) for r in
                                                   ("align_ada", "fa", "dfa", "readout", "backprop")])
def test_rnn_rule_matches_sequential_numpy_loop(setup, rule):
    par, _, p0, p, x, y = setup
    key = jax.random.key(3)
    got = jax.jit(lambda q, q0: al.pseudo_grads(rule, par, q, q0, (x, y), al.mse_loss, key=key))(p, p0)
    want = np_rule(rule, par, p, p0, x, y, key)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(np.asarray(a), b, rtol=RTOL, atol=RTOL * np.abs(b).max())


def test_rnn_presynaptic_record_is_the_previous_step(setup):
    """The local rules (align_ada, fa, dfa, readout) read the layer's record (x_t, h_{t−1}):
    recomputing z from it must give the forward pass's z, and h_{t−1} must be φ(z_{t−1})."""
    _, seq, _, p, x, _ = setup  # the record is built the same way in both modes
    _, zs, records = jax.jit(seq.forward)(p, x)
    z_np, _ = np_forward(jax.tree_util.tree_map(np.asarray, p), x)
    np.testing.assert_allclose(records[0][1][:, 1:], relu(z_np[:, :-1]), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(records[0][1][:, 0], 0.0)  # h_{−1} = φ(z_{−1} = 0) = 0
    # float64, the same products in another order: measured ≤ 1e-15
    np.testing.assert_allclose(seq.layers[0].pre(p[0], records[0]), zs[0], rtol=0, atol=1e-12)


def test_align_ada_lax_scan_mode_matches_numpy_loop(setup):
    """Align-ada's presynaptic factor in the default suite (the parallel-mode version of all
    local rules runs in the slow stage): the lax.scan stack, no solver compilation."""
    _, seq, p0, p, x, y = setup
    got = jax.jit(lambda q, q0: al.pseudo_grads("align_ada", seq, q, q0, (x, y), al.mse_loss))(p, p0)
    want = np_rule("align_ada", seq, p, p0, x, y, None)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(np.asarray(a), b, rtol=RTOL, atol=RTOL * np.abs(b).max())


@SLOW
def test_parallel_adjoint_equals_bptt_through_lax_scan(setup):
    par, seq, p0, p, x, y = setup
    f = lambda stack: jax.jit(lambda q, q0: al.pseudo_grads("align_zero", stack, q, q0, (x, y),
                                                            al.mse_loss))(p, p0)
    for a, b in zip(jax.tree_util.tree_leaves(f(par)), jax.tree_util.tree_leaves(f(seq))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=RTOL,
                                   atol=RTOL * float(np.abs(np.asarray(b)).max()))


@SLOW
@pytest.mark.parametrize("recurrence,activation", [("dense", "tanh"), ("diagonal", "relu")])
def test_cell_jacobian_is_exact(recurrence, activation):
    cell = al.AlignElmanCell(3, 5, activation=activation, recurrence=recurrence)
    params = cell.init(jax.random.key(0), jnp.float64)
    z = jnp.asarray(np.random.default_rng(0).standard_normal(5))
    u = jnp.asarray(np.random.default_rng(1).standard_normal(5))
    pararnn.check_jacobian(cell.step, z, u, params, jacobian=cell.jacobian)  # raises if wrong


def test_rnn_input_errors(setup):
    par, _, p0, p, x, y = setup
    with pytest.raises(ValueError, match=r"expected \(batch, time, 1\)"):
        par(p, np.zeros((B, T)))
    with pytest.raises(ValueError, match="recurrence must be one of"):
        al.rnn(1, 4, 1, recurrence="block")
    with pytest.raises(ValueError, match="mode must be one of"):
        al.rnn(1, 4, 1, mode="auto")


@SLOW
def test_align_zero_on_a_paragru_model_any_apply_fn():
    # Align-zero needs no layer structure: a ParaGRU cell solved by pararnn.solve plus a
    # linear readout, written as a plain function. At θ = θ₀ it is backprop; away from θ₀
    # it is the frozen network's VJP (checked against jax.vjp at θ₀ written out here).
    from pararnn.cells import ParaGRUCell
    cell = ParaGRUCell(2, 4, num_heads=2)

    def apply_fn(p, x):  # x (B, T, 2) -> (B, T, 1)
        u = cell.project(p["cell"], x)
        hs = jax.vmap(lambda u1: pararnn.solve(cell.step, jnp.zeros(4, x.dtype), u1, p["cell"]))(u)
        return hs @ p["w"]

    rng = np.random.default_rng(0)
    p0 = {"cell": init_cell(cell), "w": rng.standard_normal((4, 1))}
    p = jax.tree_util.tree_map(lambda a: a + 0.2 * rng.standard_normal(a.shape), p0)
    x, y = rng.standard_normal((2, 9, 2)), rng.standard_normal((2, 9, 1))
    rules = jax.jit(lambda q, q0: [al.pseudo_grads(r, apply_fn, q, q0, (x, y), al.mse_loss)
                                   for r in ("align_zero", "backprop")])
    zero_at_init, bp_at_init = rules(p0, p0)
    for a, b in zip(jax.tree_util.tree_leaves(zero_at_init), jax.tree_util.tree_leaves(bp_at_init)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    zero, _ = rules(p, p0)
    e = (apply_fn(p, x) - y) / (x.shape[0] * x.shape[1])  # ∂ mse_loss / ∂ output
    want = jax.vjp(lambda q: apply_fn(q, x), p0)[1](e)[0]
    for a, b in zip(jax.tree_util.tree_leaves(zero), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=RTOL,
                                   atol=RTOL * float(np.abs(np.asarray(b)).max()))
    with pytest.raises(ValueError, match="needs the layer structure"):
        al.pseudo_grads("align_ada", apply_fn, p, p0, (x, y), al.mse_loss)


def init_cell(cell):
    return cell.init(jax.random.key(0), jnp.float64)
