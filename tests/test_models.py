"""The language model: one-token decoding equals the parallel forward; generation; remat."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from flax import nnx

from pararnn.models import LanguageModel, generate


@pytest.fixture(autouse=True, scope="module")
def standard_promotion():
    with jax.numpy_dtype_promotion("standard"):
        yield


# paragru in the default suite; the other cells (same code path, ~10 s each) in the slow stage
@pytest.mark.parametrize("cell", ["paragru"] + [pytest.param(c, marks=pytest.mark.slow) for c in ("paralstm", "gru", "lstm")])
def test_step_by_step_decoding_equals_the_parallel_forward(cell):
    model = LanguageModel(vocab_size=40, d_model=16, n_layers=2, cell=cell, param_dtype=jnp.float64,
                          rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 24), 0, 40)
    full = model(tokens)
    cache, stepped = None, []
    step = nnx.jit(lambda m, c, t: m.step(c, t))
    for t in range(24):
        cache, logits = step(model, cache, tokens[:, t])
        stepped.append(logits)
    # float64 (param_dtype): both paths agree to the solver tolerance
    np.testing.assert_allclose(jnp.stack(stepped, 1), full, rtol=0, atol=1e-9)


@pytest.mark.slow  # 36 s; the mixers' prefill tests (test_mixers.py) cover the cache hand-over
def test_prefill_then_continue_equals_one_call():
    model = LanguageModel(vocab_size=40, d_model=16, n_layers=2, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 30), 0, 40)
    full = model(tokens)
    _, cache = model(tokens[:, :17], return_cache=True)
    rest = model(tokens[:, 17:], cache)
    np.testing.assert_allclose(rest, full[:, 17:], rtol=0, atol=1e-9)


@pytest.mark.slow  # 22 s; test_train and test_mixers check generation against the parallel forward
def test_greedy_generation_follows_the_parallel_argmax():
    model = LanguageModel(vocab_size=40, d_model=16, n_layers=2, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    prompt = jax.random.randint(jax.random.key(1), (2, 5), 0, 40)
    out = generate(model, prompt, 8, key=jax.random.key(0), temperature=0.0)
    assert out.shape == (2, 13)
    np.testing.assert_array_equal(out[:, :5], prompt)
    # each generated token is the argmax of the parallel forward over what precedes it
    logits = model(out[:, :-1])
    np.testing.assert_array_equal(out[:, 5:], jnp.argmax(logits[:, 4:], axis=-1))


@pytest.mark.slow  # ~20 s of compiles; layer-level remat is covered by test_layers' default run
def test_remat_gives_the_same_gradients():
    kw = dict(vocab_size=40, d_model=16, n_layers=2, param_dtype=jnp.float64)
    plain, remat = (LanguageModel(remat=r, rngs=nnx.Rngs(0), **kw) for r in (False, True))
    tokens = jax.random.randint(jax.random.key(1), (2, 20), 0, 40)
    loss = lambda m: jnp.mean(m(tokens) ** 2)
    for (_, a), (_, b) in zip(nnx.to_flat_state(nnx.grad(loss)(plain)), nnx.to_flat_state(nnx.grad(loss)(remat))):
        np.testing.assert_allclose(a[...], b[...], rtol=1e-10, atol=1e-14)


def test_generate_rejects_bad_arguments():
    model = LanguageModel(vocab_size=40, d_model=16, n_layers=1, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"prompt must have shape \(batch, time>=1\)"):
        generate(model, jnp.zeros((5,), jnp.int32), 3, key=jax.random.key(0))
    with pytest.raises(ValueError, match="top_k must be in"):
        generate(model, jnp.zeros((1, 2), jnp.int32), 3, key=jax.random.key(0), top_k=0)


def test_lm_loss_matches_a_numpy_reference():
    """Masked mean cross-entropy, z-loss = z·mean(logsumexp²), accuracy — float64 NumPy."""
    from pararnn.train.optim import lm_loss
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 7)) * 3
    targets = rng.integers(0, 7, size=(2, 5))
    mask = (rng.random((2, 5)) < 0.7).astype(np.float64)
    total, m = lm_loss(jnp.asarray(logits, jnp.float32), jnp.asarray(targets), jnp.asarray(mask), 1e-2)
    lse = np.log(np.exp(logits).sum(-1))
    ce = ((lse - np.take_along_axis(logits, targets[..., None], -1)[..., 0]) * mask).sum() / mask.sum()
    zl = 1e-2 * (lse ** 2 * mask).sum() / mask.sum()
    acc = ((logits.argmax(-1) == targets) * mask).sum() / mask.sum()
    np.testing.assert_allclose([float(m["loss"]), float(m["z_loss"]), float(total)], [ce, zl, ce + zl],
                               rtol=1e-5)  # float32 logits
    assert float(m["accuracy"]) == pytest.approx(acc) and float(m["tokens"]) == mask.sum()
