"""pararnn.analysis: interpolation, loss barrier, LLFC, weight / activation matching.

References are independent: plain NumPy forwards written here, closed-form losses, and
permutations drawn here whose inverse the matcher must find exactly."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from flax import nnx

import pararnn.nn as pnn
from pararnn.analysis import (PermutationSpec, activation_matching, commutativity, interpolate, language_model_features,
                              language_model_forward,
                              language_model_spec, llfc, loss_barrier, mlp_features, mlp_spec, permute,
                              recurrent_layer_spec, weak_additivity, weight_matching)
from pararnn.analysis.spec import validate
from pararnn.models import LanguageModel

LAYERS = ["Dense_0", "Dense_1", "Dense_2"]
WIDTHS = [6, 16, 12, 3]


def random_mlp(seed, widths=WIDTHS):
    rng = np.random.default_rng(seed)
    return {name: {"kernel": rng.normal(size=(widths[i], widths[i + 1])) / np.sqrt(widths[i]),
                   "bias": 0.1 * rng.normal(size=(widths[i + 1],))} for i, name in enumerate(LAYERS)}


def numpy_mlp(params, x):
    """Independent forward: ReLU MLP in NumPy float64."""
    for i, name in enumerate(LAYERS):
        x = x @ np.asarray(params[name]["kernel"]) + np.asarray(params[name]["bias"])
        if i < len(LAYERS) - 1:
            x = np.maximum(x, 0.0)
    return x


def random_perms(sizes, groups, seed):
    """A random permutation per name, block-diagonal over its groups."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, n in sorted(sizes.items()):
        g = groups.get(name, 1)
        out[name] = np.concatenate([k * (n // g) + rng.permutation(n // g) for k in range(g)])
    return out


def assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ---- interpolation and barrier ------------------------------------------------------------------


def test_interpolate_endpoints_and_midpoint():
    a = {"w": jnp.arange(6.0, dtype=jnp.float32).reshape(2, 3), "b": jnp.ones(3, jnp.float32)}
    b = {"w": -jnp.ones((2, 3), jnp.float32), "b": jnp.full(3, 5.0, jnp.float32)}
    assert_trees_equal(interpolate(a, b, 1.0), a)  # exact: 1·a + 0·b
    assert_trees_equal(interpolate(a, b, 0.0), b)
    mid = interpolate(a, b, 0.25)
    assert mid["w"].dtype == jnp.float32
    np.testing.assert_allclose(mid["w"], 0.25 * np.arange(6.0).reshape(2, 3) - 0.75, rtol=1e-6)  # float32
    with pytest.raises(ValueError, match="shape"):
        interpolate(a, {"w": jnp.zeros((3, 2), jnp.float32), "b": b["b"]}, 0.5)


def test_barrier_zero_for_identical_and_for_a_linear_model_with_convex_loss():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 5)), rng.normal(size=(32, 2))
    loss = jax.jit(lambda p: jnp.mean((x @ p["w"] + p["b"] - y) ** 2))  # convex in (w, b)
    pa = {"w": jnp.asarray(rng.normal(size=(5, 2))), "b": jnp.asarray(rng.normal(size=2))}
    pb = {"w": jnp.asarray(rng.normal(size=(5, 2))), "b": jnp.asarray(rng.normal(size=2))}
    same = loss_barrier(loss, pa, pa)
    assert same.barrier == 0.0 and np.all(same.losses == same.loss_a)
    res = loss_barrier(loss, pa, pb)
    assert res.barrier == 0.0  # attained at the endpoints, where the gap is exactly 0
    assert np.all((res.losses - res.linear)[1:-1] < 0)  # strictly below the chord inside
    # independent check of one point: alpha = 0.3
    p = {k: 0.3 * np.asarray(pa[k]) + 0.7 * np.asarray(pb[k]) for k in pa}
    np.testing.assert_allclose(res.losses[3], np.mean((x @ p["w"] + p["b"] - y) ** 2), rtol=1e-12)  # float64


def test_barrier_of_a_double_well():
    res = loss_barrier(lambda t: (1.0 - t["t"] ** 2) ** 2, {"t": jnp.array(1.0)}, {"t": jnp.array(-1.0)},
                       alphas=jnp.linspace(0, 1, 5))
    assert res.barrier == pytest.approx(1.0, abs=1e-15)  # L(0) = 1 at alpha = 0.5, endpoints 0
    assert res.alpha_at_max == 0.5


# ---- LLFC --------------------------------------------------------------------------------------


def test_llfc_zero_for_identical_models_and_matches_numpy():
    feats = mlp_features(LAYERS)
    pa, pb = random_mlp(0), random_mlp(1)
    x = np.random.default_rng(2).normal(size=(64, WIDTHS[0]))
    same = llfc(feats, pa, pa, x)
    for layer in LAYERS:
        assert same[layer].distance == 0.0 and same[layer].baseline == 0.0
        assert same[layer].scale == pytest.approx(1.0, rel=1e-12)
    res = llfc(feats, pa, pb, x, alpha=0.3)
    # independent: features of layer 0 (post-ReLU) in NumPy
    f = lambda p: np.maximum(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"], 0)  # noqa: E731
    pm = jax.tree.map(lambda u, v: 0.3 * u + 0.7 * v, pa, pb)
    fa, fb, fm = f(pa), f(pb), f(pm)
    mix = 0.3 * fa + 0.7 * fb
    cos = lambda u, v: np.abs((u * v).sum(1)) / np.linalg.norm(u, axis=1) / np.linalg.norm(v, axis=1)  # noqa: E731
    ok = (np.linalg.norm(fm, axis=1) > 0) & (np.linalg.norm(mix, axis=1) > 0)
    assert ok.all()  # this draw has no all-zero rows, so the plain formula applies
    np.testing.assert_allclose(res["Dense_0"].distance, np.mean(1 - cos(fm, mix)), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(res["Dense_0"].baseline, np.mean(1 - cos(fa, fb)), rtol=1e-10)
    np.testing.assert_allclose(res["Dense_0"].scale, np.mean((fm * mix).sum(1) / (mix * mix).sum(1)), rtol=1e-10)
    # the std convention: population std by default, the reference's N − 1 with std_ddof=1
    d = 1 - cos(fm, mix)
    np.testing.assert_allclose(res["Dense_0"].distance_std, d.std(), rtol=1e-10)
    res1 = llfc(feats, pa, pb, x, alpha=0.3, std_ddof=1)
    np.testing.assert_allclose(res1["Dense_0"].distance_std, d.std(ddof=1), rtol=1e-10)
    # the whole-matrix (global) cosine: one distance between the (N, F) matrices
    res_g = llfc(feats, pa, pb, x, alpha=0.3, cosine="global")
    gcos = lambda u, v: abs((u * v).sum()) / np.linalg.norm(u) / np.linalg.norm(v)  # noqa: E731
    np.testing.assert_allclose(res_g["Dense_0"].distance, 1 - gcos(fm, mix), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(res_g["Dense_0"].baseline, 1 - gcos(fa, fb), rtol=1e-10)
    np.testing.assert_allclose(res_g["Dense_0"].scale, (fm * mix).sum() / (mix * mix).sum(), rtol=1e-10)
    assert np.isnan(res_g["Dense_0"].distance_std)
    assert all(v.distance == 0.0 for v in llfc(feats, pa, pa, x, cosine="global").layers.values())
    with pytest.raises(ValueError, match=r"cosine must be one of \('per_sample', 'global'\), got 'matrix'"):
        llfc(feats, pa, pb, x, cosine="matrix")


def test_weak_additivity_and_commutativity():
    rng = np.random.default_rng(3)
    g = rng.normal(size=(20, 7))
    assert weak_additivity(g, 2.0 * g).distance == 0.0  # ReLU is additive on same-sign inputs
    assert weak_additivity(g, -g, activation=lambda v: v).distance == 0.0  # exact for linear maps
    assert weak_additivity(g, -g).distance > 0.1
    w_a, w_b = rng.normal(size=(7, 4)), rng.normal(size=(7, 4))
    h_a, h_b = rng.normal(size=(20, 7)), rng.normal(size=(20, 7))
    assert commutativity(w_a, w_a, h_a, h_b).ratio == 0.0
    c = commutativity(w_a, w_b, h_a, h_b)
    # the identity behind it: mixed layer = mix of endpoints − α(1−α)(H_a − H_b)(W_a − W_b)
    alpha = 0.5
    mixed = (alpha * h_a + (1 - alpha) * h_b) @ (alpha * w_a + (1 - alpha) * w_b)
    err = np.linalg.norm(mixed - (alpha * h_a @ w_a + (1 - alpha) * h_b @ w_b))
    np.testing.assert_allclose(err / alpha / (1 - alpha) / np.linalg.norm(h_a @ w_a - h_b @ w_b), c.ratio, rtol=1e-12)
    assert 0 < c.normalized <= 1


# ---- weight matching ---------------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, jax.random.key(0)])
def test_weight_matching_recovers_a_permuted_mlp(key):
    spec = mlp_spec(LAYERS)
    pa = random_mlp(0)
    perms = random_perms({"P0": WIDTHS[1], "P1": WIDTHS[2]}, {}, seed=1)
    pb = permute(pa, spec, perms)
    x = np.random.default_rng(2).normal(size=(16, WIDTHS[0]))
    assert not np.allclose(pb["Dense_0"]["kernel"], pa["Dense_0"]["kernel"])
    np.testing.assert_allclose(numpy_mlp(pb, x), numpy_mlp(pa, x), rtol=1e-12, atol=1e-13)  # same function
    aligned, found = weight_matching(pa, pb, spec, key=key, return_permutations=True)
    assert_trees_equal(aligned, pa)  # exact: a permutation of float64 values
    for name, p in perms.items():
        np.testing.assert_array_equal(p[found[name]], np.arange(len(p)))  # found = inverse


def test_activation_matching_recovers_a_permuted_mlp():
    spec = mlp_spec(LAYERS)
    pa = random_mlp(5)
    pb = permute(pa, spec, random_perms({"P0": WIDTHS[1], "P1": WIDTHS[2]}, {}, seed=6))
    x = np.random.default_rng(7).normal(size=(256, WIDTHS[0]))
    aligned = activation_matching(mlp_features(LAYERS), pa, pb, x, spec, {"P0": "Dense_0", "P1": "Dense_1"})
    assert_trees_equal(aligned, pa)


class RNNWithReadout(nnx.Module):
    """A recurrent layer followed by an output projection (through which the hidden
    permutation must also act)."""

    def __init__(self, layer_cls, rngs, **kw):
        self.rnn = layer_cls(4, 8, param_dtype=jnp.float64, mode="sequential", rngs=rngs, **kw)
        self.readout = nnx.Linear(8, 3, param_dtype=jnp.float64, rngs=rngs)

    def __call__(self, x):
        return self.readout(self.rnn(x))


@pytest.mark.parametrize("layer_cls, kw", [(pnn.ParaGRU, {"num_heads": 2}), (pnn.ParaLSTM, {"num_heads": 2}),
                                           (pnn.GRU, {})], ids=["paragru", "paralstm", "gru"])
def test_weight_matching_recovers_a_permuted_recurrent_layer(layer_cls, kw):
    model = RNNWithReadout(layer_cls, nnx.Rngs(0), **kw)
    graphdef, pa = nnx.split(model, nnx.Param)
    spec = recurrent_layer_spec(model.rnn, hidden="H", prefix="rnn") | {"readout/kernel": ("H", None),
                                                                        "readout/bias": (None,)}
    sizes = {"H": 8}
    perms = random_perms(sizes, spec.groups, seed=3)
    assert spec.groups == ({"H": 2} if "num_heads" in kw else {})  # channels stay within heads
    pb = permute(pa, spec, perms)
    x = jax.random.normal(jax.random.key(1), (2, 5, 4), jnp.float64)
    ya, yb = nnx.merge(graphdef, pa)(x), nnx.merge(graphdef, pb)(x)
    # same function up to the readout summing the channels in another order (float64)
    np.testing.assert_allclose(yb, ya, rtol=1e-12, atol=1e-14)
    assert any(not np.array_equal(u, v) for u, v in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)))
    assert_trees_equal(weight_matching(pa, pb, spec), pa)
    if "num_heads" in kw:  # a permutation across heads is not a symmetry of the layer
        with pytest.raises(ValueError, match="moves units between its 2 groups"):
            permute(pa, spec, {"H": np.arange(8)[::-1]})


@pytest.mark.parametrize("layer_cls, kw", [(pnn.LSTM, {}), (pnn.Elman, {}), (pnn.MinGRU, {"num_heads": 2})],
                         ids=["lstm", "elman", "mingru"])
def test_every_recurrent_spec_permutes_to_the_same_function(layer_cls, kw):
    """The specs not exercised by the matching test above: a random hidden permutation (within
    heads) applied through the spec must leave the layer + readout's function unchanged."""
    model = RNNWithReadout(layer_cls, nnx.Rngs(0), **kw)
    graphdef, pa = nnx.split(model, nnx.Param)
    spec = recurrent_layer_spec(model.rnn, hidden="H", prefix="rnn") | {"readout/kernel": ("H", None),
                                                                        "readout/bias": (None,)}
    pb = permute(pa, spec, random_perms({"H": 8}, spec.groups, seed=5))
    assert any(not np.array_equal(u, v) for u, v in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)))
    x = jax.random.normal(jax.random.key(1), (2, 5, 4), jnp.float64)
    forward = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))  # one compilation for both
    ya, yb = forward(pa, x), forward(pb, x)
    # float64, sums reordered: measured ≤ 1e-15; a wrongly permuted axis changes y by O(1)
    np.testing.assert_allclose(yb, ya, rtol=1e-12, atol=1e-14)


@pytest.mark.slow  # ~20-30 s on the loaded 2-core CPU, mostly building and tracing the model
def test_language_model_spec_permutes_to_the_same_function_and_is_recovered():
    # the model itself mixes dtypes in float64 (as in tests/test_models.py): standard promotion
    with jax.numpy_dtype_promotion("standard"):
        check_language_model_spec()


def check_language_model_spec():
    model = LanguageModel(vocab_size=12, d_model=8, n_layers=1, mlp_hidden=16, num_heads=2,
                          dtype=jnp.float64, param_dtype=jnp.float64, mode="sequential", rngs=nnx.Rngs(0))
    graphdef, pa, rest = nnx.split(model, nnx.Param, ...)
    spec = language_model_spec(model)
    from pararnn.analysis.matching import _to_numpy
    from pararnn.analysis.paths import flatten
    from pararnn.analysis.spec import split_views
    sizes = validate(spec, split_views(_to_numpy(flatten(pa)[0]), spec, "params"))
    assert set(sizes) == {"R", "blocks/0/X", "blocks/0/H", "blocks/0/M"}
    pb = permute(pa, spec, random_perms(sizes, spec.groups, seed=4))
    tokens = jax.random.randint(jax.random.key(2), (2, 6), 0, 12)
    ya = nnx.merge(graphdef, pa, rest)(tokens)
    yb = nnx.merge(graphdef, pb, rest)(tokens)
    np.testing.assert_allclose(yb, ya, rtol=1e-11, atol=1e-13)  # float64, sums reordered
    feats = language_model_forward(nnx.merge(graphdef, pa, rest), tokens)
    np.testing.assert_array_equal(feats["logits"], np.asarray(ya).reshape(-1, 12))
    assert_trees_equal(weight_matching(pa, pb, spec, key=jax.random.key(0)), pa)
    same = llfc(language_model_features(model, jit=False), pa, pa, tokens)
    assert set(same.layers) >= {"embed", "blocks/0/cell", "blocks/0/mlp_hidden", "logits"}
    assert all(v.distance == 0.0 and v.baseline == 0.0 for v in same.layers.values())


# ---- bad specs ----------------------------------------------------------------------------------


def test_bad_spec_errors_name_the_path():
    pa = random_mlp(0)
    good = mlp_spec(LAYERS)
    with pytest.raises(ValueError, match=r"'Dense_9/kernel'.*Did you mean"):
        weight_matching(pa, pa, {**good, "Dense_9/kernel": (None, "P0")})
    with pytest.raises(ValueError, match=r"does not cover parameter\(s\) \['Dense_2/bias'\]"):
        weight_matching(pa, pa, {k: v for k, v in good.items() if k != "Dense_2/bias"})
    with pytest.raises(ValueError, match=r"permutation 'P0': axis 1 of 'Dense_1/kernel' .* has size 12.*"
                                         r"'Dense_0/kernel' has size 16"):
        weight_matching(pa, pa, {**good, "Dense_1/kernel": ("P0", "P0")})
    with pytest.raises(ValueError, match=r"spec\['Dense_0/bias'\] = \('P0', None\) names 2 axes.*shape \(16,\)"):
        weight_matching(pa, pa, {**good, "Dense_0/bias": ("P0", None)})
    with pytest.raises(ValueError, match=r"groups\['P0'\] = 5 must be a positive divisor of .* size 16"):
        weight_matching(pa, pa, PermutationSpec(good, {"P0": 5}))
    with pytest.raises(ValueError, match="max_iter"):
        weight_matching(pa, pa, good, max_iter=0)


def test_interpolate_integer_leaf_under_jit_names_the_parameter():
    a = {"w": jnp.ones(2), "count": jnp.asarray(3, jnp.int32)}
    b = {"w": jnp.zeros(2), "count": jnp.asarray(3, jnp.int32)}
    with pytest.raises(TypeError, match="parameter 'count' has non-float dtype int32: under jit"):
        jax.jit(lambda a, b: interpolate(a, b, 0.5))(a, b)
