"""The language model.

Embedding → L × [RMSNorm → mixer → residual; RMSNorm → SwiGLU → residual] → RMSNorm →
logits with the embedding matrix (tied head). The mixer (``mixer=``) is recurrent (a
pararnn cell), attention or Mamba2 (:mod:`pararnn.models.mixers`); everything else is shared.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from .blocks import Block

Cache = list  # per block: the mixer's cache (recurrent/mamba2: (conv_history, state); attention: KVCache)


def default_mlp_hidden(d_model: int) -> int:
    """SwiGLU width ≈ 8/3·d (parameter-matched to a 4·d GELU MLP), rounded up to 64."""
    return 64 * math.ceil(8 * d_model / 3 / 64)


class LanguageModel(nnx.Module):
    """Args mirror :class:`pararnn.train.config.ModelConfig`; ``rngs`` initialises it.

    ``model(tokens_BxT)`` → logits ``(B, T, vocab)`` in float32. ``model(tokens, cache=...,
    return_cache=True)`` continues from a cache (prefill / streaming); ``model.step`` decodes
    one token; ``model.init_cache(batch, capacity)`` makes a cache of fixed shapes for a
    decoding loop (needed by attention mixers, whose KV cache grows with the sequence).

    Mixer options: ``cell``, ``num_heads``, ``max_recurrent_norm``, ``mode``,
    ``solver_method`` (recurrent); ``head_dim``, ``rope_base`` (attention); ``head_dim``,
    ``ssm_state``, ``ssm_expand``, ``ssm_chunk``, ``ssm_algorithm``, ``mode`` (mamba2);
    ``conv_kernel`` (recurrent and mamba2).

    ``seq_axis``: sequence parallelism — the model is called inside ``jax.shard_map`` with
    ``tokens`` this device's shard of consecutive positions along that mesh axis; the
    recurrences are solved across the devices and the causal convolutions exchange their
    halos (recurrent mixer only; no cache).
    """

    def __init__(self, *, vocab_size: int, d_model: int, n_layers: int, mlp_hidden: int | None = None,
                 mixer: str = "recurrent", cell: str = "paragru", num_heads: int = 2, conv_kernel: int = 4,
                 max_recurrent_norm: float | None = 0.5, mode: str = "parallel",
                 solver_method: str | None = None, head_dim: int = 64, rope_base: float = 10000.0,
                 ssm_state: int = 128, ssm_expand: int = 2, ssm_chunk: int = 64, ssm_algorithm: str = "chunked",
                 dtype: Any = None, param_dtype: Any = jnp.float32,
                 remat: bool = False, init_std: float = 0.02, sow_info: bool = False,
                 seq_axis: str | None = None, rngs: nnx.Rngs):
        self.vocab_size, self.d_model, self.n_layers = vocab_size, d_model, n_layers
        self.dtype, self.remat, self.mixer = dtype, remat, mixer
        self.embed = nnx.Embed(vocab_size, d_model, dtype=dtype, param_dtype=param_dtype,
                               embedding_init=nnx.initializers.normal(init_std), rngs=rngs)
        mixer_kw = dict(cell=cell, num_heads=num_heads, conv_kernel=conv_kernel,
                        max_recurrent_norm=max_recurrent_norm, mode=mode, solver_method=solver_method,
                        head_dim=head_dim, rope_base=rope_base, ssm_state=ssm_state, ssm_expand=ssm_expand,
                        ssm_chunk=ssm_chunk, ssm_algorithm=ssm_algorithm, seq_axis=seq_axis)
        self.seq_axis = seq_axis
        # Output projections scaled by 1/√(2L) (GPT-2 style) keep the residual stream's scale.
        self.blocks = nnx.List([
            Block(d_model, mlp_hidden or default_mlp_hidden(d_model), std=init_std, dtype=dtype,
                  param_dtype=param_dtype, rngs=rngs, mixer=mixer, **mixer_kw)
            for _ in range(n_layers)
        ])
        for block in self.blocks:
            for lin in (block.mixer.out_proj, block.mlp.down):
                lin.kernel[...] = lin.kernel[...] / math.sqrt(2 * n_layers)
            if hasattr(block.mixer, "cell"):
                block.mixer.cell.sow_info = sow_info
        self.final_norm = nnx.RMSNorm(d_model, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, tokens_BxT: jax.Array, cache: Cache | None = None, *, mode: str | None = None,
                 return_cache: bool = False):
        if cache is not None and len(cache) != len(self.blocks):
            raise ValueError(f"LanguageModel: cache has {len(cache)} entries, expected one per block "
                             f"({len(self.blocks)}).")
        x = self.embed(tokens_BxT)
        new_cache = []
        for i, block in enumerate(self.blocks):
            block_cache = None if cache is None else cache[i]
            if self.remat:
                x, c = nnx.remat(lambda blk, x, bc: blk(x, bc, mode))(block, x, block_cache)
            else:
                x, c = block(x, block_cache, mode)
            new_cache.append(c)
        logits = self.embed.attend(self.final_norm(x)).astype(jnp.float32)
        return (logits, new_cache) if return_cache else logits

    def init_cache(self, batch_size: int, capacity: int) -> Cache:
        """A cache to decode ``capacity`` positions in total (prompt included) with fixed
        shapes: attention blocks get empty KV buffers, recurrent and Mamba2 blocks None
        (their state has a fixed size). Pass it to the prefill call."""
        if batch_size < 1 or capacity < 1:
            raise ValueError(f"LanguageModel.init_cache: batch_size and capacity must be >= 1, got "
                             f"{batch_size} and {capacity}.")
        return [block.mixer.init_cache(batch_size, capacity, self.dtype) for block in self.blocks]

    def step(self, cache: Cache | None, token_B: jax.Array):
        """Decode one token per sequence: ``(new_cache, logits_BxV)``. O(1) memory per token
        for recurrent and Mamba2 mixers; attention mixers read and extend their KV cache."""
        logits, cache = self(token_B[:, None], cache, mode="sequential", return_cache=True)
        return cache, logits[:, 0]
