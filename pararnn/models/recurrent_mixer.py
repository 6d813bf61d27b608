"""The recurrent mixer: a pararnn recurrent layer (``model.cell``) inside the ParaRNN block.

Linear(d → 2d) → split (x, z) → causal depthwise conv on x → SiLU → recurrent cell →
RMSNorm(cell output) ⊙ SiLU(z) → Linear(d → d). Its cache is ``(conv_history, cell_state)``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

import pararnn.nn as pnn

from .blocks import CausalConv, linear
from .errors import MixerConfigError

CELLS = {"paragru": pnn.ParaGRU, "paralstm": pnn.ParaLSTM, "gru": pnn.GRU, "lstm": pnn.LSTM,
         "mingru": pnn.MinGRU}  # mingru: the linear-recurrence baseline


class RecurrentMixer(nnx.Module):
    """Linear(d → 2d) → split (x, z) → causal conv on x → SiLU → recurrent cell →
    RMSNorm(x) ⊙ SiLU(z) → Linear(d → d)."""

    def __init__(self, d_model: int, *, cell: str, num_heads: int, conv_kernel: int,
                 max_recurrent_norm: float | None, mode: str, solver_method: str | None,
                 std: float, dtype=None, param_dtype=jnp.float32, seq_axis: str | None = None,
                 rngs: nnx.Rngs):
        if cell not in CELLS:
            raise MixerConfigError(f"model.cell must be one of {sorted(CELLS)}, got {cell!r}.")
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.in_proj = linear(d_model, 2 * d_model, std=std, rngs=rngs, **kw)
        self.conv = CausalConv(d_model, conv_kernel, seq_axis=seq_axis, rngs=rngs, **kw)
        cell_kw: dict[str, Any] = dict(mode=mode, sow_info=True, seq_axis=seq_axis, rngs=rngs, **kw)
        if cell in ("paragru", "paralstm"):
            cell_kw.update(num_heads=num_heads, max_recurrent_norm=max_recurrent_norm)
        elif cell == "mingru":
            cell_kw.update(num_heads=num_heads)
        if solver_method is not None:
            cell_kw["method"] = solver_method
        self.cell = CELLS[cell](d_model, d_model, **cell_kw)
        self.norm = nnx.RMSNorm(d_model, rngs=rngs, **kw)
        self.out_proj = linear(d_model, d_model, std=std, rngs=rngs, **kw)

    def init_cache(self, batch_size: int, capacity: int, dtype: Any = None) -> None:
        """No cache to preallocate: None means zero conv history and zero state."""
        return None

    def __call__(self, x_BxTxD, cache=None, mode: str | None = None):
        """``cache``: ``(conv_history, cell_state)`` or None. Returns ``(y, new_cache)``."""
        conv_hist, state = (None, None) if cache is None else cache
        x, z = jnp.split(self.in_proj(x_BxTxD), 2, axis=-1)
        x, conv_hist = self.conv(x, conv_hist)
        x = jax.nn.silu(x)
        x, state = self.cell(x, h0=state, mode=mode, return_state=True)
        y = self.out_proj(self.norm(x) * jax.nn.silu(z))
        return y, (conv_hist, state)
