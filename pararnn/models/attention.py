"""Causal multi-head self-attention with rotary position embeddings (RoPE) and a KV cache.

The Transformer baseline's mixer, behind the same interface as the recurrent one:
``mixer(x_BxTxD, cache=None, mode=None) -> (y_BxTxD, cache)``. The attention itself is
``jax.nn.dot_product_attention`` (XLA on CPU; it can pick cuDNN's fused kernel on GPU).

Two cache forms, both :class:`KVCache`:

- growing (``length is None``): exactly the keys and values seen so far; a call appends to
  them (new shapes, so a jitted caller recompiles per length). What ``model(tokens,
  return_cache=True)`` and ``model.step(None, token)`` start.
- fixed capacity (``length`` an int32 scalar): buffers of ``capacity`` positions of which
  the first ``length`` are filled; a call writes in place, so shapes stay fixed and a
  ``lax.scan`` can decode with it (``model.init_cache(batch, capacity)``, used by
  :func:`pararnn.models.generate`). Writing past the capacity cannot be detected at trace
  time (``length`` is traced), so the outputs of such a call are NaN — never a silently
  wrong answer.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from .blocks import linear
from .errors import MixerConfigError


class KVCache(NamedTuple):
    """``keys``/``values`` ``(batch, S, heads, head_dim)``; ``length``: None (growing, all S
    positions filled) or an int32 scalar (fixed capacity S, first ``length`` filled)."""

    keys: jax.Array
    values: jax.Array
    length: jax.Array | None


def rope_frequencies(head_dim: int, base: float, dtype=jnp.float32) -> jax.Array:
    """``(head_dim/2,)`` angular frequencies ``base^(−2i/head_dim)``."""
    return base ** (-jnp.arange(0, head_dim, 2, dtype=dtype) / head_dim)


def apply_rope(x_BxTxHxK: jax.Array, positions_T: jax.Array, base: float) -> jax.Array:
    """Rotate channel pairs ``(i, i + K/2)`` of every head by ``position · base^(−2i/K)``
    (the "rotate half" layout). Angles and rotation in float32 or wider (x's dtype if
    wider); the result in ``x``'s dtype."""
    k = x_BxTxHxK.shape[-1]
    dtype = jnp.promote_types(x_BxTxHxK.dtype, jnp.float32)
    angles = positions_T.astype(dtype)[:, None] * rope_frequencies(k, base, dtype)[None, :]  # (T, K/2)
    cos, sin = (f(angles)[None, :, None, :] for f in (jnp.cos, jnp.sin))
    x = x_BxTxHxK.astype(dtype)
    first, second = x[..., : k // 2], x[..., k // 2:]
    rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
    return rotated.astype(x_BxTxHxK.dtype)


class AttentionMixer(nnx.Module):
    """Linear(d → 3d) → q, k, v in ``d/head_dim`` heads → RoPE on q, k → causal softmax
    attention → Linear(d → d)."""

    def __init__(self, d_model: int, *, head_dim: int, rope_base: float, std: float, dtype: Any = None,
                 param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
        if head_dim < 2 or head_dim % 2 or d_model % head_dim:
            raise MixerConfigError(f"model.head_dim={head_dim} must be even and divide model.d_model={d_model} "
                                   f"(attention heads = d_model / head_dim).")
        if rope_base <= 1:
            raise MixerConfigError(f"model.rope_base must be > 1, got {rope_base}.")
        self.d_model, self.head_dim, self.num_heads = d_model, head_dim, d_model // head_dim
        self.rope_base, self.dtype = float(rope_base), dtype
        kw = dict(std=std, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.qkv_proj = linear(d_model, 3 * d_model, **kw)
        self.out_proj = linear(d_model, d_model, **kw)

    def init_cache(self, batch_size: int, capacity: int, dtype: Any = None) -> KVCache:
        """An empty fixed-capacity cache for ``capacity`` positions."""
        dtype = dtype or self.dtype or self.qkv_proj.kernel[...].dtype
        shape = (batch_size, capacity, self.num_heads, self.head_dim)
        return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((), jnp.int32))

    def __call__(self, x_BxTxD: jax.Array, cache: KVCache | None = None, mode: str | None = None):
        """``mode`` is accepted for the common interface and ignored. Returns ``(y, cache)``."""
        batch, t, _ = x_BxTxD.shape
        shape = (batch, t, self.num_heads, self.head_dim)
        q, k, v = (a.reshape(shape) for a in jnp.split(self.qkv_proj(x_BxTxD), 3, axis=-1))
        if cache is None:
            offset = 0
        elif cache.length is None:
            offset = cache.keys.shape[1]
        else:
            offset = cache.length
        positions = offset + jnp.arange(t)
        q, k = apply_rope(q, positions, self.rope_base), apply_rope(k, positions, self.rope_base)
        if cache is None:
            y = jax.nn.dot_product_attention(q, k, v, is_causal=True)
            new_cache = KVCache(k, v, None)
        else:
            k_all, v_all, length = self._extend(cache, k, v)
            # query at absolute position p sees keys at positions ≤ p (the causal mask,
            # shifted by the cache offset; empty slots of a fixed cache lie beyond p)
            mask = jnp.arange(k_all.shape[1])[None, :] <= positions[:, None]  # (T, S)
            y = jax.nn.dot_product_attention(q, k_all.astype(q.dtype), v_all.astype(q.dtype),
                                             mask=mask[None, None])
            if length is not None:
                y = jnp.where(length <= k_all.shape[1], y, jnp.nan)  # wrote past the capacity
            new_cache = KVCache(k_all, v_all, length)
        return self.out_proj(y.reshape(batch, t, self.d_model)), new_cache

    @staticmethod
    def _extend(cache: KVCache, k, v):
        """Append (growing) or write at ``length`` (fixed); returns ``(keys, values, new length)``."""
        if cache.keys.shape[0] != k.shape[0] or cache.keys.shape[2:] != k.shape[2:]:
            raise ValueError(f"AttentionMixer: cache keys have shape {cache.keys.shape}, incompatible with "
                             f"(batch, ·, heads, head_dim) = {(k.shape[0], '·') + k.shape[2:]}.")
        if cache.length is None:
            keys = jnp.concatenate([cache.keys, k.astype(cache.keys.dtype)], axis=1)
            values = jnp.concatenate([cache.values, v.astype(cache.values.dtype)], axis=1)
            return keys, values, None
        if k.shape[1] > cache.keys.shape[1]:
            raise ValueError(f"AttentionMixer: {k.shape[1]} new positions do not fit a KV cache of capacity "
                             f"{cache.keys.shape[1]}; make it with model.init_cache(batch, capacity) large enough.")
        zero = jnp.zeros((), cache.length.dtype)  # index dtypes must agree (int64 under x64)
        start = (zero, cache.length, zero, zero)
        keys = jax.lax.dynamic_update_slice(cache.keys, k.astype(cache.keys.dtype), start)
        values = jax.lax.dynamic_update_slice(cache.values, v.astype(cache.values.dtype), start)
        return keys, values, cache.length + k.shape[1]
