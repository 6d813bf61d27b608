"""Building blocks of the language model: causal depthwise conv, recurrent mixer, SwiGLU.

Shapes: ``x_BxTxD`` is (batch, time, d_model). Every block also has a one-token ``step``
with an explicit cache, so generation runs in O(1) memory per token and equals the
full-sequence forward.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

import pararnn.nn as pnn

CELLS = {"paragru": pnn.ParaGRU, "paralstm": pnn.ParaLSTM, "gru": pnn.GRU, "lstm": pnn.LSTM,
         "mingru": pnn.MinGRU}  # mingru: the linear-recurrence baseline


def _linear(d_in: int, d_out: int, *, std: float, dtype, param_dtype, rngs) -> nnx.Linear:
    return nnx.Linear(d_in, d_out, use_bias=False, dtype=dtype, param_dtype=param_dtype,
                      kernel_init=nnx.initializers.normal(std), rngs=rngs)


class CausalConv(nnx.Module):
    """Depthwise causal convolution over time: ``y_t = Σ_j w_j ⊙ x_{t−j} + b``, j < kernel."""

    def __init__(self, features: int, kernel: int, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.kernel_size = kernel
        bound = 1.0 / kernel ** 0.5
        self.weight = nnx.Param(jax.random.uniform(rngs.params(), (kernel, features), param_dtype, -bound, bound))
        self.bias = nnx.Param(jnp.zeros((features,), param_dtype))
        self.dtype = dtype

    def __call__(self, x_BxTxD: jax.Array, history_BxKxD: jax.Array | None = None):
        """Returns ``(y_BxTxD, history)``: ``history`` holds the last kernel−1 inputs, to continue
        from (zeros before the sequence start when ``history_BxKxD`` is None)."""
        k = self.kernel_size
        w, b = self.weight[...].astype(x_BxTxD.dtype), self.bias[...].astype(x_BxTxD.dtype)
        if history_BxKxD is None:
            history_BxKxD = jnp.zeros(x_BxTxD.shape[:1] + (k - 1,) + x_BxTxD.shape[2:], x_BxTxD.dtype)
        padded = jnp.concatenate([history_BxKxD.astype(x_BxTxD.dtype), x_BxTxD], axis=1)
        t = x_BxTxD.shape[1]
        # w[0] multiplies the current input, w[j] the input j steps back
        y = sum(w[j] * padded[:, k - 1 - j:k - 1 - j + t] for j in range(k)) + b
        return y, padded[:, -(k - 1):] if k > 1 else padded[:, :0]


class SwiGLU(nnx.Module):
    """``W_out (silu(W_gate x) ⊙ W_up x)``."""

    def __init__(self, d_model: int, hidden: int, *, std: float, dtype=None, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self.gate_up = _linear(d_model, 2 * hidden, std=std, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.down = _linear(hidden, d_model, std=std, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x):
        gate, up = jnp.split(self.gate_up(x), 2, axis=-1)
        return self.down(jax.nn.silu(gate) * up)


class RecurrentMixer(nnx.Module):
    """Linear(d → 2d) → split (x, z) → causal conv on x → SiLU → recurrent cell →
    RMSNorm(x) ⊙ SiLU(z) → Linear(d → d)."""

    def __init__(self, d_model: int, *, cell: str, num_heads: int, conv_kernel: int,
                 max_recurrent_norm: float | None, mode: str, solver_method: str | None,
                 std: float, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.in_proj = _linear(d_model, 2 * d_model, std=std, rngs=rngs, **kw)
        self.conv = CausalConv(d_model, conv_kernel, rngs=rngs, **kw)
        cell_kw: dict[str, Any] = dict(mode=mode, sow_info=True, rngs=rngs, **kw)
        if cell in ("paragru", "paralstm"):
            cell_kw.update(num_heads=num_heads, max_recurrent_norm=max_recurrent_norm)
        elif cell == "mingru":
            cell_kw.update(num_heads=num_heads)
        if solver_method is not None:
            cell_kw["method"] = solver_method
        self.cell = CELLS[cell](d_model, d_model, **cell_kw)
        self.norm = nnx.RMSNorm(d_model, rngs=rngs, **kw)
        self.out_proj = _linear(d_model, d_model, std=std, rngs=rngs, **kw)

    def __call__(self, x_BxTxD, cache=None, mode: str | None = None):
        """``cache``: ``(conv_history, cell_state)`` or None. Returns ``(y, new_cache)``."""
        conv_hist, state = (None, None) if cache is None else cache
        x, z = jnp.split(self.in_proj(x_BxTxD), 2, axis=-1)
        x, conv_hist = self.conv(x, conv_hist)
        x = jax.nn.silu(x)
        x, state = self.cell(x, h0=state, mode=mode, return_state=True)
        y = self.out_proj(self.norm(x) * jax.nn.silu(z))
        return y, (conv_hist, state)


class Block(nnx.Module):
    """Pre-norm residual block: x + mixer(norm(x)); x + mlp(norm(x))."""

    def __init__(self, d_model: int, mlp_hidden: int, *, std: float, dtype=None, param_dtype=jnp.float32,
                 rngs: nnx.Rngs, **mixer_kw):
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.mixer_norm = nnx.RMSNorm(d_model, rngs=rngs, **kw)
        self.mixer = RecurrentMixer(d_model, std=std, rngs=rngs, **kw, **mixer_kw)
        self.mlp_norm = nnx.RMSNorm(d_model, rngs=rngs, **kw)
        self.mlp = SwiGLU(d_model, mlp_hidden, std=std, rngs=rngs, **kw)

    def __call__(self, x, cache=None, mode: str | None = None):
        y, cache = self.mixer(self.mixer_norm(x), cache, mode)
        x = x + y
        return x + self.mlp(self.mlp_norm(x)), cache
