"""Sampling: a parallel prefill, then one-token steps (O(1) memory per token for recurrent and
Mamba2 mixers, a fixed-capacity KV cache for attention)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from .lm import LanguageModel


def _without_sown_info(model: LanguageModel) -> LanguageModel:
    """A copy whose recurrent layers do not sow solver info (a training-time metric that
    cannot be written from inside the decoding scan)."""
    from ..nn import RecurrentLayer
    layers = [m for _, m in nnx.iter_modules(model) if isinstance(m, RecurrentLayer) and m.sow_info]
    if not layers:
        return model
    model = nnx.clone(model)
    for _, m in nnx.iter_modules(model):
        if isinstance(m, RecurrentLayer):
            m.sow_info = False
    return model


def generate(model: LanguageModel, prompt_BxT: jax.Array, max_new_tokens: int, *, key: jax.Array,
             temperature: float = 1.0, top_k: int | None = None) -> jax.Array:
    """Continue ``prompt_BxT`` by ``max_new_tokens`` sampled tokens: ``(B, T + max_new_tokens)``.

    The prompt is read with the parallel forward (prefill), then each token costs one
    recurrent step whose logits equal the parallel forward's at that position.
    ``temperature=0`` is greedy decoding.
    """
    prompt_BxT = jnp.asarray(prompt_BxT)
    if prompt_BxT.ndim != 2 or prompt_BxT.shape[1] < 1:
        raise ValueError(f"generate: prompt must have shape (batch, time>=1), got {prompt_BxT.shape}.")
    if max_new_tokens < 0:
        raise ValueError(f"generate: max_new_tokens must be >= 0, got {max_new_tokens}.")
    if temperature < 0:
        raise ValueError(f"generate: temperature must be >= 0, got {temperature}.")
    if top_k is not None and not 1 <= top_k <= model.vocab_size:
        raise ValueError(f"generate: top_k must be in [1, vocab_size={model.vocab_size}], got {top_k}.")
    if max_new_tokens == 0:
        return prompt_BxT
    model = _without_sown_info(model)

    @nnx.jit
    def prefill(model, prompt, cache):
        logits, cache = model(prompt, cache, return_cache=True)
        return logits[:, -1], cache

    def sample(logits, key):
        if temperature == 0:
            return jnp.argmax(logits, axis=-1)
        logits = logits / temperature
        if top_k is not None:
            kth = jnp.sort(logits, axis=-1)[:, -top_k][:, None]
            logits = jnp.where(logits < kth, -jnp.inf, logits)
        return jax.random.categorical(key, logits, axis=-1)

    @nnx.jit
    def decode(model, logits, cache, keys):
        def body(carry, key):
            logits, cache = carry
            token = sample(logits, key).astype(prompt_BxT.dtype)
            cache, logits = model.step(cache, token)
            return (logits, cache), token
        _, tokens = jax.lax.scan(body, (logits, cache), keys)
        return tokens.T

    # fixed shapes for the decoding scan: attention KV caches sized for the whole output
    cache = model.init_cache(prompt_BxT.shape[0], prompt_BxT.shape[1] + max_new_tokens)
    logits, cache = prefill(model, prompt_BxT, cache)
    new = decode(model, logits, cache, jax.random.split(key, max_new_tokens))
    return jnp.concatenate([prompt_BxT, new], axis=1)
