"""Static hypernetworks: MIP encoding and output scale, generated parameters with exactly the
target's structure, the RNN hypernetwork's parallel chunk recurrence, the continual-learning
regulariser, and errors for wrong shapes."""

import dataclasses

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from flax import nnx

import pararnn.nn as pnn
from pararnn.hyper import (MIPHyperNetwork, MLPHyperNetwork, OutputRegularizer, RNNHyperNetwork,
                           TargetSpec, mip_encoding)

K = 3  # conditioning features
F64 = jnp.float64


class Target(nnx.Module):
    """A small sequence classifier: ParaGRU → last state → Linear."""

    def __init__(self, hidden=4, rngs=None):
        # the target's own solver is tested elsewhere: the cheap sequential scan here
        self.rnn = pnn.ParaGRU(2, hidden, mode="sequential", param_dtype=F64, rngs=rngs)
        self.out = nnx.Linear(hidden, 2, param_dtype=F64, rngs=rngs)

    def __call__(self, x):
        return self.out(self.rnn(x)[:, -1])


def make(cls, **kw):
    if cls is RNNHyperNetwork:
        kw.setdefault("chunk_size", 16)
    return cls(Target(rngs=nnx.Rngs(0)), K, param_dtype=F64, rngs=nnx.Rngs(1), **kw)


def test_mip_encoding_has_constant_norm():
    gammas = jnp.concatenate([jax.random.uniform(jax.random.key(0), (50, K), F64),
                              1e3 * jax.random.normal(jax.random.key(1), (50, K), F64)])
    enc = mip_encoding(gammas)
    g = np.asarray(gammas)
    np.testing.assert_allclose(enc, np.concatenate([np.cos(np.pi * g / 2), np.sin(np.pi * g / 2)], -1),
                               rtol=0, atol=1e-12)
    # cos² + sin² = 1 per feature: norm √K whatever ‖γ‖ (float64 rounding ~1e-16)
    np.testing.assert_allclose(np.linalg.norm(enc, axis=-1), np.sqrt(K), rtol=1e-13)


def test_mip_output_scale_does_not_grow_with_gamma_norm_but_plain_does():
    mip, plain = make(MIPHyperNetwork), make(MLPHyperNetwork)
    gamma = jax.random.uniform(jax.random.key(2), (K,), F64, 0.1, 1.0)
    scales = jnp.array([1.0, 10.0, 100.0, 1000.0], F64)[:, None]
    # Independent bound for the MIP part h(enc): ReLU is 1-Lipschitz, so
    # ‖h(e)‖ ≤ ‖h(0)‖ + Π‖W_i‖₂ ‖e‖ with ‖e‖ = √K for every γ.
    weights = [l.kernel[...] for l in mip.net.layers] + [mip.net.head.kernel[...]]
    lipschitz = np.prod([np.linalg.norm(np.asarray(w), 2) for w in weights])

    @nnx.jit
    def run(mip, plain, gammas):
        return (mip.net(jnp.zeros(2 * K, F64)), mip.delta(gammas), mip.flat(gammas) - mip.theta0[...],
                plain.flat(gammas))

    h_zero, delta, theta_minus_theta0, plain_out = run(mip, plain, scales * gamma)
    h0 = np.linalg.norm(np.asarray(h_zero))
    norms = np.linalg.norm(np.asarray(delta), axis=-1)
    assert np.all(norms <= h0 + lipschitz * np.sqrt(K) + 1e-12), (norms, h0, lipschitz)
    # and θ₀ is an independent parameter: θ − θ₀ is exactly h(enc)
    np.testing.assert_allclose(theta_minus_theta0, delta, rtol=0, atol=1e-12)
    # the plain ReLU hypernetwork (zero biases at init) is positively homogeneous: ×1000
    out = np.linalg.norm(np.asarray(plain_out), axis=-1)
    np.testing.assert_allclose(out / out[0], scales[:, 0], rtol=1e-10)


@pytest.fixture(scope="module")
def hnets():
    return {cls.__name__: make(cls) for cls in (MLPHyperNetwork, MIPHyperNetwork, RNNHyperNetwork)}


@pytest.mark.parametrize("name", ["MLPHyperNetwork", "MIPHyperNetwork", "RNNHyperNetwork"])
def test_generated_params_have_exactly_the_target_structure(name, hnets):
    hnet, target = hnets[name], Target(rngs=nnx.Rngs(5))
    gamma = jnp.array([0.2, 0.5, 0.9], F64)
    x = jax.random.normal(jax.random.key(3), (2, 7, 2), F64)
    params, flat, y = nnx.jit(lambda h, g, x: (h(g), h.flat(g), h.apply(g, x)))(hnet, gamma, x)
    reference = nnx.state(target, nnx.Param)
    assert jax.tree.structure(params) == jax.tree.structure(reference)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), params) == jax.tree.map(lambda a: (a.shape, a.dtype), reference)
    assert hnet.num_params == sum(a.size for a in jax.tree.leaves(reference)) == 3 * 4 + 2 * 1 * 6 + 3 * 4 + 4 * 2 + 2  # a, B (heads, in/heads, 3H/heads), b; kernel, bias
    # leaves are consecutive slices of the flat vector, in the target's definition order
    leaves = jax.tree.leaves(params)
    np.testing.assert_array_equal(np.concatenate([np.ravel(leaves[i]) for i in hnet.target.order]), flat)
    # the functional run equals the stateful module after nnx.update with those parameters
    nnx.update(target, params)
    np.testing.assert_allclose(y, target(x), rtol=0, atol=1e-14)


def test_rnn_hypernetwork_parallel_chunk_solve_equals_sequential_with_grads():
    par = make(RNNHyperNetwork, chunk_size=4, layer_options={"mode": "parallel"})  # 46 params → 12 chunks
    seq = make(RNNHyperNetwork, chunk_size=4, layer_options={"mode": "sequential"})
    assert par.num_chunks == 12 and par.rnn.mode == "parallel"
    gammas = jax.random.uniform(jax.random.key(4), (2, K), F64)

    def loss(h):
        return jnp.sum(jnp.sin(h.flat(gammas)))

    grad = nnx.jit(nnx.value_and_grad(loss))
    (lp, gp), (ls, gs) = grad(par), grad(seq)
    # float64, solver residual ≤ 1e-13 on a 12-step contractive recurrence
    np.testing.assert_allclose(lp, ls, rtol=1e-12)
    for (path, a), (_, b) in zip(nnx.to_flat_state(gp), nnx.to_flat_state(gs)):
        np.testing.assert_allclose(a[...], b[...], rtol=0, atol=1e-10, err_msg=str(path))


def test_output_regularizer_matches_hand_computation():
    hnet = make(MIPHyperNetwork)
    e = jax.random.uniform(jax.random.key(6), (2, K), F64)
    reg = OutputRegularizer.empty(K, hnet.num_params, F64).add(hnet, e[0]).add(hnet, e[1])
    assert reg.num_tasks == 2 and float(reg(hnet)) == 0.0
    stored = np.asarray(reg.outputs)
    hnet.theta0[...] = hnet.theta0[...] + 0.01  # move every output by 0.01
    now = np.asarray(hnet.flat(e))
    np.testing.assert_allclose(reg(hnet), np.sum((now - stored) ** 2) / 2, rtol=1e-12)
    np.testing.assert_allclose(reg(hnet), hnet.num_params * 1e-4, rtol=1e-8)
    # preallocated (fixed shapes for a jitted train step): unused rows do not count
    fixed = OutputRegularizer.empty(K, hnet.num_params, F64, capacity=4)
    fixed = dataclasses.replace(fixed, embeddings=fixed.embeddings.at[:2].set(e),
                                outputs=fixed.outputs.at[:2].set(stored), count=reg.count)
    np.testing.assert_allclose(jax.jit(lambda r: r(hnet))(fixed), reg(hnet), rtol=1e-12)
    with pytest.raises(ValueError, match=r"embedding must have shape \(3,\)"):
        reg.add(hnet, jnp.zeros(4, F64))


def test_wrong_shapes_get_clear_errors(hnets):
    hnet = hnets["MIPHyperNetwork"]
    spec = hnet.target
    with pytest.raises(ValueError, match=r"flat parameter vector of shape \(46,\).*got shape \(45,\)"):
        spec.unflatten(jnp.zeros(45))
    other = nnx.state(Target(hidden=6, rngs=nnx.Rngs(0)), nnx.Param)  # wider target
    with pytest.raises(ValueError, match=r"parameter \['out'\]\['bias'\]|parameter \['out'\]\['kernel'\] has shape \(6, 2\), the target expects \(4, 2\)"):
        spec.apply(other, jnp.zeros((1, 3, 2)))
    with pytest.raises(ValueError, match="missing"):
        spec.check({"out": nnx.state(Target(rngs=nnx.Rngs(0)), nnx.Param)["out"]})
    with pytest.raises(ValueError, match=r"gamma must have shape \(\.\.\., cond_features=3\), got \(4,\)"):
        hnet(jnp.zeros(4))
    with pytest.raises(ValueError, match="encoding"):
        MLPHyperNetwork(Target(rngs=nnx.Rngs(0)), K, encoding="fourier", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="cond_features"):
        MIPHyperNetwork(Target(rngs=nnx.Rngs(0)), 0, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="nnx.Module"):
        TargetSpec(lambda x: x)


def test_same_layout_specs_are_equal_so_jit_compiles_once():
    a, b = TargetSpec(Target(rngs=nnx.Rngs(0))), TargetSpec(Target(rngs=nnx.Rngs(9)))
    assert a == b and hash(a) == hash(b)  # values differ, layout is the same
    assert a != TargetSpec(Target(hidden=6, rngs=nnx.Rngs(0)))
    # non-parameter state is baked into compilations: compared by value
    drop = lambda seed: nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.Dropout(0.1, rngs=nnx.Rngs(seed)))
    assert TargetSpec(drop(1)) == TargetSpec(drop(1)) and TargetSpec(drop(1)) != TargetSpec(drop(2))


def test_generation_order_is_definition_order_and_round_trips():
    """RNN hypernetworks emit chunks in the flat vector's order: it must follow the order the
    target's layers were defined (``nnx.State`` sorts names, which would put ``out`` first)."""
    from pararnn.hyper.target import TargetSpec

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.rnn = pnn.ParaGRU(2, 4, rngs=rngs)
            self.hidden = nnx.List([nnx.Linear(4, 4, rngs=rngs) for _ in range(2)])
            self.out = nnx.Linear(4, 2, rngs=rngs)

    net = Net(nnx.Rngs(0))
    spec = TargetSpec(net)
    layers = [p.split("]")[0] + "]" + (p.split("]")[1] + "]" if "hidden" in p else "")
              for p in spec.generation_paths]
    assert list(dict.fromkeys(layers)) == ["['rnn']", "['hidden'][0]", "['hidden'][1]", "['out']"]
    params = nnx.state(net, nnx.Param)
    flat = spec.flatten(params)
    # the flat vector holds the leaves in generation order (independent concatenation here)
    leaf = {jax.tree_util.keystr(tuple(k for k in p if getattr(k, "name", None) != "value")): l
            for p, l in jax.tree_util.tree_flatten_with_path(params)[0]}
    expected = np.concatenate([np.ravel(np.asarray(leaf[p])) for p in spec.generation_paths])
    np.testing.assert_array_equal(np.asarray(flat), expected)
    back = spec.unflatten(flat)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_float32_gamma_does_not_round_float64_parameters(hnets):
    """γ is data, the parameters set the compute dtype: a float32 γ that is exactly
    representable must generate the same float64 parameters as its float64 copy."""
    gamma = jnp.array([0.25, 0.5, 0.75])  # exact in float32
    for name in ("MIPHyperNetwork", "RNNHyperNetwork"):
        hnet = hnets[name]
        f64 = hnet.flat(gamma.astype(F64))
        f32 = hnet.flat(gamma.astype(jnp.float32))
        assert f32.dtype == F64
        # float64 end to end; cos/sin of the same float64 input: equal to rounding of f64 ops
        np.testing.assert_allclose(f32, f64, rtol=0, atol=1e-14)


def test_theta0_is_the_only_output_constant():
    """θ = θ₀ + h(enc): with θ₀ the head has no bias, which would be a second copy of the same
    constant (identical gradients, so that part would move twice as fast under SGD)."""
    for cls in (MIPHyperNetwork, RNNHyperNetwork):
        hnet = make(cls) if cls is MIPHyperNetwork else make(cls, theta0=True)
        assert hnet.theta0 is not None
        head = hnet.net.head if cls is MIPHyperNetwork else hnet.head
        assert head.bias is None, cls.__name__
    assert make(MLPHyperNetwork).net.head.bias is not None  # without θ₀ the head keeps its bias


def _np_sigmoid(v):
    return 1 / (1 + np.exp(-v))


@pytest.mark.parametrize("encoding,theta0", [("identity", False), ("mip", True)])
def test_rnn_hypernetwork_matches_a_numpy_loop(encoding, theta0):
    """Chunk c: h_c = ParaGRU step (num_heads = 1, soft-clamped recurrence) of
    u_c = [enc(γ), e_c]·B + b; out_c = h_c·W + bias; θ = out_0 ‖ out_1 ‖ … truncated to P
    (+ θ₀) — written here in NumPy, float64."""
    hnet = make(RNNHyperNetwork, chunk_size=5, encoding=encoding, theta0=theta0)  # 46 params, 10 chunks
    gamma = np.array([0.2, 0.7, 0.4])
    rnn = hnet.rnn
    m = rnn.cell.max_recurrent_norm
    a = np.asarray(rnn.a[...])
    a = a if m is None else m * np.tanh(a / m)
    kernel, bias = np.asarray(rnn.B[...])[0], np.asarray(rnn.b[...])
    w, head_b = np.asarray(hnet.head.kernel[...]), (0.0 if hnet.head.bias is None else np.asarray(hnet.head.bias[...]))
    enc = np.concatenate([np.cos(np.pi * gamma / 2), np.sin(np.pi * gamma / 2)]) if encoding == "mip" else gamma
    h, chunks = np.zeros(rnn.hidden_features), []
    for e_c in np.asarray(hnet.chunk_embedding[...]):
        u = (np.concatenate([enc, e_c]) @ kernel).reshape(3, -1) + bias
        z = _np_sigmoid(a[0] * h + u[0])
        r = _np_sigmoid(a[1] * h + u[1])
        h = z * np.tanh(a[2] * (r * h) + u[2]) + (1 - z) * h
        chunks.append(h @ w + head_b)
    want = np.concatenate(chunks)[:hnet.num_params]
    if theta0:
        want = want + np.asarray(hnet.theta0[...])
    got = nnx.jit(lambda h, g: h.flat(g))(hnet, jnp.asarray(gamma, F64))
    # float64; the chunk recurrence is solved in parallel (residual ≤ 1e-13): measured 2e-17
    # (2e-15 with θ₀ ~ 1 added)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
