"""The recurrent language model.

Embedding → L × [RMSNorm → recurrent mixer → residual; RMSNorm → SwiGLU → residual] →
RMSNorm → logits with the embedding matrix (tied head).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from .blocks import Block

Cache = list  # per block: (conv_history_BxKxD, cell_state_Bx...)


def default_mlp_hidden(d_model: int) -> int:
    """SwiGLU width ≈ 8/3·d (parameter-matched to a 4·d GELU MLP), rounded up to 64."""
    return 64 * math.ceil(8 * d_model / 3 / 64)


class LanguageModel(nnx.Module):
    """Args mirror :class:`pararnn.train.config.ModelConfig`; ``rngs`` initialises it.

    ``model(tokens_BxT)`` → logits ``(B, T, vocab)`` in float32. ``model(tokens, cache=...,
    return_cache=True)`` continues from a cache (prefill / streaming); ``model.step`` decodes
    one token.
    """

    def __init__(self, *, vocab_size: int, d_model: int, n_layers: int, mlp_hidden: int | None = None,
                 cell: str = "paragru", num_heads: int = 2, conv_kernel: int = 4,
                 max_recurrent_norm: float | None = 0.5, mode: str = "parallel",
                 solver_method: str | None = None, dtype: Any = None, param_dtype: Any = jnp.float32,
                 remat: bool = False, init_std: float = 0.02, sow_info: bool = False, rngs: nnx.Rngs):
        self.vocab_size, self.d_model, self.n_layers = vocab_size, d_model, n_layers
        self.dtype, self.remat = dtype, remat
        self.embed = nnx.Embed(vocab_size, d_model, dtype=dtype, param_dtype=param_dtype,
                               embedding_init=nnx.initializers.normal(init_std), rngs=rngs)
        mixer_kw = dict(cell=cell, num_heads=num_heads, conv_kernel=conv_kernel,
                        max_recurrent_norm=max_recurrent_norm, mode=mode, solver_method=solver_method)
        # Output projections scaled by 1/√(2L) (GPT-2 style) keep the residual stream's scale.
        self.blocks = nnx.List([
            Block(d_model, mlp_hidden or default_mlp_hidden(d_model), std=init_std, dtype=dtype,
                  param_dtype=param_dtype, rngs=rngs, **mixer_kw)
            for _ in range(n_layers)
        ])
        for block in self.blocks:
            for lin in (block.mixer.out_proj, block.mlp.down):
                lin.kernel[...] = lin.kernel[...] / math.sqrt(2 * n_layers)
            block.mixer.cell.sow_info = sow_info
        self.final_norm = nnx.RMSNorm(d_model, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, tokens_BxT: jax.Array, cache: Cache | None = None, *, mode: str | None = None,
                 return_cache: bool = False):
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

    def step(self, cache: Cache | None, token_B: jax.Array):
        """Decode one token per sequence: ``(new_cache, logits_BxV)``. O(1) memory per token."""
        logits, cache = self(token_B[:, None], cache, mode="sequential", return_cache=True)
        return cache, logits[:, 0]
