"""pararnn.align on feedforward stacks: the exact equalities of the issue, every rule
against a plain NumPy implementation of its formula, fixed and reproducible FA/DFA
feedback, a wide network that learns with Align-zero, and clear errors.

All in float64: the NumPy references compute the same sums in another order, so they
agree to a few ulps of the largest term; rtol 1e-10 leaves ~10⁵ ulps of headroom."""

import functools

import numpy as np
import pytest
import jax
import jax.numpy as jnp

import pararnn.align as al

# Jitted once per stack: eager random draws compile one small program per op and shape,
# seconds on a loaded CPU.
feedback_weights = jax.jit(al.feedback_weights, static_argnums=(0, 1))
init = jax.jit(lambda stack, key: stack.init(key, jnp.float64), static_argnums=0)
from pararnn.align.config import ConfigError, load_align_config

RTOL = 1e-10  # float64, see the module docstring


# ---- a NumPy reference of the rules for an NTK ReLU MLP ---------------------------------


def relu(z):
    return np.maximum(z, 0)


def np_forward(params, x):
    """Inputs a_l and pre-activations z_l of every layer (NTK: z = a·W/√n + b)."""
    a, inputs, zs = x.reshape(x.shape[0], -1), [], []
    for i, p in enumerate(params):
        if i:
            a = relu(zs[-1])
        inputs.append(a)
        zs.append(a @ p["w"] / np.sqrt(a.shape[1]) + p["b"])
    return inputs, zs


def np_backward(e, weights, zs_for_derivative):
    """δ_L = e, δ_l = (δ_{l+1} W_{l+1}ᵀ/√n) ⊙ relu'(z_l), with the given weights and z."""
    deltas = [e]
    for l in range(len(weights) - 2, -1, -1):
        w = weights[l + 1]
        back = deltas[0] @ w.T / np.sqrt(w.shape[0])
        deltas.insert(0, back * (zs_for_derivative[l] > 0))
    return deltas


def np_local(inputs, deltas):
    return [{"w": a.T @ d / np.sqrt(a.shape[1]), "b": d.sum(0)} for a, d in zip(inputs, deltas)]


def to_np(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


def assert_tree_close(a, b, rtol=RTOL):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol,
                                   atol=rtol * float(np.abs(np.asarray(y)).max()))


def assert_tree_equal(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ---- fixtures ---------------------------------------------------------------------------


# One stack for every feedforward test (each new shape costs a compile): 6×6 images of 5
# classes, two hidden layers (so deltas cross a hidden-to-hidden weight), wide enough (256)
# for the training test.
@pytest.fixture(scope="module")
def setup():
    stack = al.mlp(36, [256, 256], 5)
    p0 = init(stack, jax.random.key(0))
    rng = np.random.default_rng(1)
    p = jax.tree_util.tree_map(lambda a: a + 0.3 * rng.standard_normal(a.shape), p0)  # θ_t ≠ θ₀
    x, labels = al.synthetic_images(7, seed=2, size=6, classes=5, dtype=np.float64)
    y = al.onehot_targets(labels, 5, jnp.float64)
    rules = {r: jax.jit(lambda p_, p0_, b, k, r=r: al.pseudo_grads(
        r, stack, p_, p0_, b, al.mse_loss, key=k)) for r in al.RULES}
    return stack, p0, p, (x, y), rules


def loss_grad(stack, params, batch):
    x, y = batch
    return jax.grad(lambda q: al.mse_loss(stack(q, x), y))(params)


# ---- the exact equalities ---------------------------------------------------------------


def test_backprop_is_jax_grad_and_align_rules_at_init_are_backprop(setup):
    stack, p0, p, batch, rules = setup
    key = jax.random.key(9)
    assert_tree_equal(rules["backprop"](p, p0, batch, key), jax.jit(
        lambda q: loss_grad(stack, q, batch))(p))
    at_init = rules["backprop"](p0, p0, batch, key)
    assert_tree_equal(rules["align_zero"](p0, p0, batch, key), at_init)  # same VJP chain
    # align_ada reaches the same numbers through the layered deltas (different op order)
    assert_tree_close(rules["align_ada"](p0, p0, batch, key), at_init)


def test_align_zero_equals_backprop_for_a_model_linear_in_its_parameters():
    # Random features (fixed, not parameters) and a trainable linear readout: f = φ(xA)·W + b.
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 20))

    def apply_fn(p, x):
        return jnp.tanh(x @ a) @ p["w"] + p["b"]

    p0 = {"w": rng.standard_normal((20, 3)), "b": np.zeros(3)}
    p = {"w": p0["w"] + 1.5, "b": p0["b"] - 0.7}  # far from init
    x, y = rng.standard_normal((9, 4)), rng.standard_normal((9, 3))
    g_zero, g_bp = jax.jit(lambda q, q0: [al.pseudo_grads(r, apply_fn, q, q0, (x, y), al.mse_loss)
                                          for r in ("align_zero", "backprop")])(p, p0)
    assert_tree_equal(g_zero, g_bp)


# ---- every rule against its formula -----------------------------------------------------


def np_rule(rule, stack, p, p0, x, y, key):
    """The rule's update by its formula, in NumPy (feedback matrices from ``key``)."""
    pn, p0n, xn, yn = to_np(p), to_np(p0), np.asarray(x), np.asarray(y)
    inputs, zs = np_forward(pn, xn)
    inputs0, zs0 = np_forward(p0n, xn)
    e = (zs[-1] - yn) / xn.shape[0]  # ∂(½·mean_b Σ_o (f − y)²)/∂f
    w, w0 = [q["w"] for q in pn], [q["w"] for q in p0n]
    if rule == "backprop":
        return np_local(inputs, np_backward(e, w, zs))
    if rule == "align_zero":  # frozen deltas, frozen inputs
        return np_local(inputs0, np_backward(e, w0, zs0))
    if rule == "align_ada":  # frozen deltas, current inputs
        return np_local(inputs, np_backward(e, w0, zs0))
    if rule == "fa":
        b = [q["w"] for q in to_np(feedback_weights("fa", stack, p, x, key=key))]
        return np_local(inputs, np_backward(e, b, zs))
    if rule == "dfa":
        mats = to_np(feedback_weights("dfa", stack, p, x, key=key))
        return np_local(inputs, [(e @ m) * (z > 0) for m, z in zip(mats[:-1], zs[:-1])] + [e])
    return np_local(inputs, [np.zeros_like(z) for z in zs[:-1]] + [e])  # readout


@pytest.mark.parametrize("rule", ["backprop", "align_zero", "align_ada", "fa", "dfa", "readout"])
def test_rule_matches_numpy_formula(setup, rule):
    stack, p0, p, (x, y), rules = setup
    key = jax.random.key(4)
    assert_tree_close(rules[rule](p, p0, (x, y), key), np_rule(rule, stack, p, p0, x, y, key))


@pytest.mark.slow  # a conv program of its own: ~5 s of compilation
def test_conv_stack_layered_deltas_reproduce_backprop():
    # The machinery behind the structured rules (deltas at zero perturbations, local VJPs,
    # the feedback swap) on a conv net: with the network's own weights as "feedback" FA is
    # backprop, and Align-ada at θ = θ₀ is backprop.
    stack = al.conv_net((5, 5, 2), [3], 4)
    p = stack.init(jax.random.key(0), jnp.float64)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((3, 5, 5, 2)), rng.standard_normal((3, 4))

    @jax.jit
    def all_three(p):
        out, _, records = stack.forward(p, x)
        e = al.output_error(al.mse_loss, out, y)
        fa_own = stack.local_grads(p, records, stack.deltas(p, x, e, feedback=p))
        ada = al.pseudo_grads("align_ada", stack, p, p, (x, y), al.mse_loss)
        return loss_grad(stack, p, (x, y)), fa_own, ada

    want, fa_own, ada = all_three(p)
    assert_tree_close(fa_own, want)
    assert_tree_close(ada, want)


# ---- FA / DFA feedback ------------------------------------------------------------------


def test_feedback_fixed_across_steps_and_reproducible_by_key(setup):
    stack, p0, p, (x, y), rules = setup
    k = jax.random.key(5)
    for rule in ("fa", "dfa"):
        b1 = feedback_weights(rule, stack, p0, x, key=k)
        b2 = feedback_weights(rule, stack, p, x, key=k)  # a later step: other params
        assert_tree_equal(b1, b2)
        other = feedback_weights(rule, stack, p0, x, key=jax.random.key(6))
        assert not np.allclose(np.asarray(b1[0]["w"] if rule == "fa" else b1[0]),
                               np.asarray(other[0]["w"] if rule == "fa" else other[0]))
    # Two training steps (parameters p0, then p) with the same key: both updates follow the
    # formula with the feedback drawn from that key, so the feedback did not change.
    for rule in ("fa", "dfa"):
        for params in (p0, p):
            assert_tree_close(rules[rule](params, p0, (x, y), k),
                              np_rule(rule, stack, params, p0, x, y, k))


# ---- training ---------------------------------------------------------------------------


def test_wide_network_trained_with_align_zero_reduces_the_loss(setup):
    stack, p0, *_ = setup
    x, labels = al.synthetic_images(128, seed=3, size=6, classes=5, dtype=np.float64)
    y = al.onehot_targets(labels, 5, jnp.float64)

    @jax.jit
    def step(p):
        g = al.pseudo_grads("align_zero", stack, p, p0, (x, y), al.mse_loss)
        return jax.tree_util.tree_map(lambda a, b: a - 0.5 * b, p, g)

    p = p0
    for _ in range(30):
        p = step(p)
    before, after = float(al.mse_loss(stack(p0, x), y)), float(al.mse_loss(stack(p, x), y))
    assert after < 0.5 * before, (before, after)


# ---- errors -----------------------------------------------------------------------------


def test_mse_loss_conventions_and_the_update_scale(setup):
    """"half_sum" = ½·Σ_classes, mean over samples (pararnn); "mean" = mean over every entry
    (the reference code). Every rule's update is linear in e = ∂L/∂out, so the two differ
    by exactly C/2 (C = 5 classes here)."""
    stack, p0, p, (x, y), _ = setup
    out = np.asarray(stack(p, x))
    d = out - np.asarray(y)
    np.testing.assert_allclose(al.mse_loss(jnp.asarray(out), y), 0.5 * (d ** 2).sum(1).mean(), rtol=1e-13)
    np.testing.assert_allclose(al.mse_loss(jnp.asarray(out), y, convention="mean"), (d ** 2).mean(), rtol=1e-13)
    reference_loss = functools.partial(al.mse_loss, convention="mean")
    c = y.shape[-1]
    both = jax.jit(lambda q, q0: [[al.pseudo_grads(r, stack, q, q0, (x, y), loss) for loss in (al.mse_loss, reference_loss)]
                                  for r in ("backprop", "align_zero", "align_ada")])
    for ours, theirs in both(p, p0):
        assert_tree_close(ours, jax.tree_util.tree_map(lambda g: g * (c / 2), theirs))
    with pytest.raises(ValueError, match=r"convention must be one of \('half_sum', 'mean'\), got 'sum'"):
        al.mse_loss(jnp.asarray(out), y, convention="sum")
    assert load_align_config("align_images", {"loss": "mean"}).loss == "mean"


def test_clear_errors(setup):
    stack, p0, p, batch, _ = setup
    plain = lambda q, x: stack(q, x)
    with pytest.raises(ValueError, match="needs the layer structure.*LayerStack"):
        al.pseudo_grads("align_ada", plain, p, p0, batch, al.mse_loss)
    with pytest.raises(ValueError, match="rule must be one of"):
        al.pseudo_grads("align-zero", stack, p, p0, batch, al.mse_loss)
    with pytest.raises(ValueError, match="needs key="):
        al.pseudo_grads("fa", stack, p, p0, batch, al.mse_loss)
    with pytest.raises(ValueError, match="batch must be a pair"):
        al.pseudo_grads("backprop", stack, p, p0, (batch[0],), al.mse_loss)
    with pytest.raises(ValueError, match="params_init must have the structure"):
        al.pseudo_grads("align_zero", stack, p, p0[:2], batch, al.mse_loss)
    with pytest.raises(ValueError, match="last axis 10, expected in_features=36"):
        stack(p, jnp.zeros((2, 10), jnp.float64))
    with pytest.raises(ValueError, match="activation must be one of"):
        al.mlp(4, [8], 2, activation="gelu")
    with pytest.raises(ConfigError, match="Did you mean 'widths'"):
        load_align_config("align_images", {"width": [8]})
    assert load_align_config("align_add").task == "add"
