"""The attention and Mamba2 mixers against independent references (float64 NumPy loops, the
gradients of a plain lax.scan), their decoding against their parallel forward, and the
matched 125M configs."""

import math

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from flax import nnx

from pararnn.models import AttentionMixer, KVCache, LanguageModel, Mamba2Mixer, generate
from pararnn.models.ssd import ssd_chunked, ssd_scan, ssd_sequential


@pytest.fixture(autouse=True, scope="module")
def standard_promotion():
    with jax.numpy_dtype_promotion("standard"):
        yield


def _np(a):
    return np.asarray(a, np.float64)


# ---- attention ----------------------------------------------------------------------------

def numpy_rope(x, positions, base):
    """RoPE as complex rotation: channel pair (i, i + K/2) is the complex number
    x_i + i·x_{i+K/2}, multiplied by exp(i · position · base^(−2i/K))."""
    k = x.shape[-1]
    theta = base ** (-np.arange(k // 2) * 2.0 / k)
    z = x[..., : k // 2] + 1j * x[..., k // 2:]
    z = z * np.exp(1j * positions[:, None, None] * theta)  # x: (T, H, K)
    return np.concatenate([z.real, z.imag], axis=-1)


def numpy_attention_mixer(mixer: AttentionMixer, x, offset=0):
    """One sequence ``x (T, D)`` at absolute positions offset…offset+T−1, a softmax loop."""
    w_qkv, w_out = _np(mixer.qkv_proj.kernel[...]), _np(mixer.out_proj.kernel[...])
    t, d = x.shape
    h, k = mixer.num_heads, mixer.head_dim
    q, kk, v = np.split(x @ w_qkv, 3, axis=-1)
    q, kk, v = (a.reshape(t, h, k) for a in (q, kk, v))
    pos = offset + np.arange(t, dtype=np.float64)
    q, kk = numpy_rope(q, pos, mixer.rope_base), numpy_rope(kk, pos, mixer.rope_base)
    out = np.zeros((t, h, k))
    for head in range(h):
        for i in range(t):
            scores = np.array([q[i, head] @ kk[j, head] / math.sqrt(k) for j in range(i + 1)])
            p = np.exp(scores - scores.max())
            p /= p.sum()
            out[i, head] = sum(p[j] * v[j, head] for j in range(i + 1))
    return out.reshape(t, d) @ w_out


@pytest.fixture(scope="module")
def attention():
    return AttentionMixer(16, head_dim=4, rope_base=100.0, std=0.5, param_dtype=jnp.float64, rngs=nnx.Rngs(0))


def test_attention_matches_a_numpy_softmax_loop(attention):
    x = jax.random.normal(jax.random.key(1), (2, 9, 16), jnp.float64)
    y, cache = attention(x)
    for b in range(2):
        # float64 parameters and inputs, but jax.nn.dot_product_attention does its softmax in
        # float32 whatever the input dtype (its source: "always carried out in fp32"): measured
        # max error 1.4e-6 on outputs up to ~9 (without RoPE or with a wrong offset: O(1))
        np.testing.assert_allclose(y[b], numpy_attention_mixer(attention, _np(x[b])), rtol=0, atol=1e-5)
    assert cache.keys.shape == (2, 9, 4, 4) and cache.length is None


def test_attention_decoding_equals_the_parallel_forward(attention):
    x = jax.random.normal(jax.random.key(2), (2, 6, 16), jnp.float64)
    full, _ = attention(x)
    # Both paths run the same float32 softmax over the same keys (masked ones weigh exactly 0):
    # measured difference 0. A wrong RoPE offset for the later positions would show as O(1).
    # growing cache: a prefill of 3 from nothing, then 3 more
    y1, cache = attention(x[:, :3])
    y2, cache = attention(x[:, 3:], cache)
    np.testing.assert_allclose(jnp.concatenate([y1, y2], 1), full, rtol=0, atol=1e-12)
    assert cache.keys.shape[1] == 6 and cache.length is None
    # fixed capacity: a prefill of 3, then one token at a time (one compile: fixed shapes)
    call = nnx.jit(lambda m, x, c: m(x, c, mode="sequential"))
    y, cache = call(attention, x[:, :3], attention.init_cache(2, 6))
    parts = [y]
    for t in range(3, 6):
        y, cache = call(attention, x[:, t:t + 1], cache)
        parts.append(y)
    np.testing.assert_allclose(jnp.concatenate(parts, 1), full, rtol=0, atol=1e-12)
    assert int(cache.length) == 6


def test_attention_cache_overflow_is_nan_not_wrong(attention):
    x = jax.random.normal(jax.random.key(3), (1, 6, 16), jnp.float64)
    cache = attention.init_cache(1, 4)
    y, cache = attention(x[:, :4], cache)
    assert np.all(np.isfinite(y))
    y, _ = jax.jit(lambda c, x: attention(x, c))(cache, x[:, 4:5])  # length traced: no trace-time check
    assert np.all(np.isnan(y))
    with pytest.raises(ValueError, match="6 new positions do not fit a KV cache of capacity 4"):
        attention(x, attention.init_cache(1, 4))


def test_attention_rejects_a_head_dim_that_does_not_divide():
    from pararnn.models import MixerConfigError
    with pytest.raises(MixerConfigError, match=r"model.head_dim=6 must be even and divide model.d_model=16"):
        AttentionMixer(16, head_dim=6, rope_base=1e4, std=0.02, rngs=nnx.Rngs(0))


# ---- the SSD recurrence ------------------------------------------------------------------

def numpy_ssd(x, dt, a, b, c, h0):
    """float64 loop over batch, time and heads: S = exp(dt·A) S + dt x ⊗ B; y = S C."""
    bsz, t, h, p = x.shape
    y, final = np.zeros_like(x), np.array(h0, np.float64)
    for i in range(bsz):
        for head in range(h):
            s = final[i, head].copy()
            for step in range(t):
                s = np.exp(dt[i, step, head] * a[head]) * s + dt[i, step, head] * np.outer(x[i, step, head], b[i, step])
                y[i, step, head] = s @ c[i, step]
            final[i, head] = s
    return y, final


@pytest.fixture(scope="module")
def ssd_problem():
    rng = np.random.default_rng(0)
    bsz, t, h, p, n = 2, 13, 3, 2, 4
    x = rng.normal(size=(bsz, t, h, p))
    dt = np.log1p(np.exp(rng.normal(size=(bsz, t, h)) - 1))  # softplus: (0, ~3)
    a = -rng.uniform(1.0, 16.0, size=h)
    b, c = rng.normal(size=(bsz, t, n)), rng.normal(size=(bsz, t, n))
    h0 = rng.normal(size=(bsz, h, p, n))
    return x, dt, a, b, c, h0


@pytest.mark.parametrize("algorithm", ["sequential", "scan", "chunked-4", "chunked-5", "chunked-64"])
def test_ssd_matches_a_float64_numpy_recurrence(ssd_problem, algorithm):
    x, dt, a, b, c, h0 = ssd_problem
    fn = {"sequential": ssd_sequential, "scan": ssd_scan}.get(algorithm)
    if fn is None:
        fn = lambda *args, q=int(algorithm.split("-")[1]): ssd_chunked(*args, chunk=q)
    y, final = fn(*(jnp.asarray(v) for v in ssd_problem))
    y_ref, final_ref = numpy_ssd(x, dt, a, b, c, h0)
    # float64: measured ≤ 1e-14 (chunked: decays as exp of cumulative-sum differences)
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(final, final_ref, rtol=0, atol=1e-12)


def test_ssd_gradients_equal_those_of_the_plain_scan(ssd_problem):
    args = tuple(jnp.asarray(v) for v in ssd_problem)
    w = jax.random.normal(jax.random.key(0), args[0].shape, jnp.float64)

    def loss(f):
        def value(*a):
            y, final = f(*a)
            return jnp.sum(y * w) + jnp.sum(final ** 2)
        return jax.jit(jax.grad(value, argnums=range(6)))

    want = loss(ssd_sequential)(*args)
    for fn in (ssd_scan, lambda *a: ssd_chunked(*a, chunk=4)):
        for g, r in zip(loss(fn)(*args), want):
            np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-11)  # float64, measured ~1e-13


# ---- the Mamba2 mixer ----------------------------------------------------------------------

def numpy_mamba2_mixer(m: Mamba2Mixer, x):
    """One sequence ``x (T, D)`` through the mixer, written out in float64 NumPy."""
    t = x.shape[0]
    n, h, p, di = m.state_size, m.num_heads, m.head_dim, m.d_inner
    proj = x @ _np(m.in_proj.kernel[...])
    z, xbc, dt_raw = proj[:, :di], proj[:, di:2 * di + 2 * n], proj[:, 2 * di + 2 * n:]
    w, bias, k = _np(m.conv.weight[...]), _np(m.conv.bias[...]), m.conv.kernel_size
    conv = np.array([sum(w[j] * xbc[s - j] for j in range(k) if s - j >= 0) + bias for s in range(t)])
    conv = conv / (1 + np.exp(-conv))  # SiLU
    xs, b, c = conv[:, :di].reshape(t, h, p), conv[:, di:di + n], conv[:, di + n:]
    dt = np.log1p(np.exp(dt_raw + _np(m.dt_bias[...])))
    a = -np.exp(_np(m.A_log[...]))
    y, _ = numpy_ssd(xs[None], dt[None], a, b[None], c[None], np.zeros((1, h, p, n)))
    y = (y[0] + _np(m.D[...])[:, None] * xs).reshape(t, di)
    gated = y * z / (1 + np.exp(-z))
    normed = gated / np.sqrt(np.mean(gated ** 2, axis=-1, keepdims=True) + m.norm.epsilon) * _np(m.norm.scale[...])
    return normed @ _np(m.out_proj.kernel[...])


@pytest.fixture(scope="module")
def mamba2():
    return Mamba2Mixer(8, head_dim=4, ssm_state=3, ssm_expand=2, conv_kernel=3, ssm_chunk=4,
                       ssm_algorithm="chunked", mode="parallel", std=0.5, param_dtype=jnp.float64, rngs=nnx.Rngs(0))


def test_mamba2_mixer_matches_numpy(mamba2):
    x = jax.random.normal(jax.random.key(4), (2, 11, 8), jnp.float64)
    y, _ = mamba2(x)
    for b in range(2):
        np.testing.assert_allclose(y[b], numpy_mamba2_mixer(mamba2, _np(x[b])), rtol=0, atol=1e-12)  # float64


def test_mamba2_decoding_and_prefill_equal_the_parallel_forward(mamba2):
    x = jax.random.normal(jax.random.key(5), (2, 7, 8), jnp.float64)
    full, (_, final) = mamba2(x)
    step = nnx.jit(lambda m, x, c: m(x, c, mode="sequential"))
    # the zero cache (what None means), so every step has the same structure: one compile
    cache = (jnp.zeros((2, 2, mamba2.conv.weight.shape[1]), jnp.float64),
             jnp.zeros((2, mamba2.num_heads, mamba2.head_dim, mamba2.state_size), jnp.float64))
    steps = []
    for t in range(7):
        y, cache = step(mamba2, x[:, t:t + 1], cache)
        steps.append(y[:, 0])
    # float64: the sequential recurrence vs the chunked SSD form, measured ≤ 1e-15
    np.testing.assert_allclose(jnp.stack(steps, 1), full, rtol=0, atol=1e-12)
    np.testing.assert_allclose(cache[1], final, rtol=0, atol=1e-12)
    y1, cache = mamba2(x[:, :4])
    y2, _ = mamba2(x[:, 4:], cache)
    np.testing.assert_allclose(jnp.concatenate([y1, y2], 1), full, rtol=0, atol=1e-12)


# ---- the language model with each mixer ------------------------------------------------------

@pytest.mark.parametrize("mixer", ["attention", "mamba2"])
def test_lm_step_decoding_and_greedy_generation_follow_the_parallel_forward(mixer):
    model = LanguageModel(vocab_size=30, d_model=16, n_layers=2, mixer=mixer, head_dim=8, ssm_state=4,
                          ssm_chunk=4, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 6), 0, 30)
    full = model(tokens)
    step = nnx.jit(lambda m, c, t: m.step(c, t))
    cache = model.init_cache(2, 6)  # fixed shapes: one compile for all steps
    stepped = []
    for t in range(6):
        cache, logits = step(model, cache, tokens[:, t])
        stepped.append(logits)
    # float64 parameters (attention's softmax in float32, damped by the small init): measured ≤ 1e-15
    np.testing.assert_allclose(jnp.stack(stepped, 1), full, rtol=0, atol=1e-9)
    out = generate(model, tokens[:, :3], 3, key=jax.random.key(0), temperature=0.0)
    np.testing.assert_array_equal(out[:, 3:], jnp.argmax(model(out[:, :-1])[:, 2:], axis=-1))


def test_analysis_specs_refuse_non_recurrent_mixers():
    from pararnn.analysis import language_model_spec
    from pararnn.analysis.features import language_model_forward
    model = LanguageModel(vocab_size=10, d_model=8, n_layers=1, mixer="attention", head_dim=4, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="block 0 has the 'attention' mixer"):
        language_model_spec(model)
    with pytest.raises(TypeError, match="block 0 has the 'attention' mixer"):
        language_model_forward(model, jnp.zeros((1, 3), jnp.int32))


# ---- matched configs --------------------------------------------------------------------

def test_baseline_125m_configs_match_gru125m_within_10_percent():
    from pararnn.train.config import load_config
    from pararnn.train.memory import count_params
    from pararnn.train.trainer import abstract_params
    counts = {}
    for name in ("gru125m", "transformer125m", "mamba2_125m"):
        cfg = load_config(name)
        counts[name] = count_params(abstract_params(cfg, cfg.model.vocab_size)[1])
    for name in ("transformer125m", "mamba2_125m"):
        assert abs(counts[name] / counts["gru125m"] - 1) <= 0.10, counts
    # the Transformer's count by hand: embedding, final norm, and per block two norms, qkv + out
    # projections (4d²) and the SwiGLU (3·d·h with h = 2048 for d = 768)
    d, layers, h, vocab = 768, 18, 2048, 256
    assert counts["transformer125m"] == vocab * d + d + layers * (2 * d + 4 * d * d + 3 * d * h)
    # Mamba2 by hand: in_proj d × (2·di + 2N + H), conv (k+1)·(di + 2N), dt_bias/A_log/D (3H),
    # norm di, out_proj di·d; di = 2d, H = di/64, N = 128, k = 4
    di, n, heads = 2 * d, 128, 2 * d // 64
    mixer = d * (2 * di + 2 * n + heads) + 5 * (di + 2 * n) + 3 * heads + di + di * d
    assert counts["mamba2_125m"] == vocab * d + d + 15 * (2 * d + mixer + 3 * d * h)


@pytest.mark.slow  # two short training runs through the CLI (~1 min)
@pytest.mark.parametrize("config", ["transformer_tiny", "mamba2_tiny"])
def test_baseline_tiny_configs_train_and_the_loss_falls(config, tmp_path):
    from train_helpers import losses, overrides, run_cli
    run_cli(["--config", config, "--workdir", str(tmp_path), "--steps", "30"]
            + overrides("model.d_model=32", "model.head_dim=16"))
    curve = losses(tmp_path)
    assert curve[30] < curve[1] - 1.0, curve  # from ~5.5 (uniform over bytes)
