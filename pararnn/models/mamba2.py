"""The Mamba2 mixer: a selective state-space model with one scalar decay per head (SSD).

Linear(d → [z, x, B, C, dt]) → causal depthwise conv (k = ``conv_kernel``) on [x, B, C] →
SiLU → the SSD recurrence of :mod:`pararnn.models.ssd` per head (``S_t = exp(dt_t A) S_{t−1}
+ dt_t x_t ⊗ B_t``, ``y_t = S_t C_t + D x_t``) → RMSNorm(y ⊙ SiLU(z)) → Linear(d_inner → d),
with ``d_inner = ssm_expand · d_model`` in ``d_inner / head_dim`` heads and one group of B, C
of size ``ssm_state``. Its state is linear in the input — the linear baseline of the
synthetic tasks, whose decay ``exp(dt·A)`` lies in (0, 1).

Inits follow Mamba2: ``A = −U(1, 16)`` (stored as ``log(−A)``), ``dt = softplus(dt_raw +
dt_bias)`` with ``softplus(dt_bias)`` log-uniform in [1e-3, 1e-1], ``D = 1``.

``mode="sequential"`` (decoding, ``model.step``) runs the recurrence step by step; the
parallel forward uses ``ssm_algorithm`` (``"chunked"``: the SSD matrix form, or ``"scan"``:
every state entry through :func:`pararnn.linear_recurrence`); ``"auto"`` picks the chunked
form (benchmarks/RESULTS.md §15). The cache is ``(conv_history, ssm_state)``.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from .blocks import CausalConv, linear
from .errors import MixerConfigError
from .ssd import SSD_ALGORITHMS, ssd_chunked, ssd_scan, ssd_sequential

_DT_MIN, _DT_MAX = 1e-3, 1e-1
_A_MIN, _A_MAX = 1.0, 16.0
MODES = ("parallel", "sequential", "auto")


class Mamba2Mixer(nnx.Module):
    """Args: ``d_model``; ``head_dim`` (P); ``ssm_state`` (N); ``ssm_expand`` (d_inner =
    expand · d_model); ``conv_kernel``; ``ssm_chunk`` (chunk length of the SSD form);
    ``ssm_algorithm`` (``"chunked"`` or ``"scan"``); ``mode`` (default mode of a call)."""

    def __init__(self, d_model: int, *, head_dim: int, ssm_state: int, ssm_expand: int, conv_kernel: int,
                 ssm_chunk: int, ssm_algorithm: str, mode: str, std: float, dtype: Any = None,
                 param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
        d_inner = ssm_expand * d_model
        if ssm_expand < 1:
            raise MixerConfigError(f"model.ssm_expand must be >= 1, got {ssm_expand}.")
        if head_dim < 1 or d_inner % head_dim:
            raise MixerConfigError(f"model.head_dim={head_dim} must divide the Mamba2 inner width "
                                   f"model.ssm_expand·model.d_model = {d_inner}.")
        if ssm_state < 1:
            raise MixerConfigError(f"model.ssm_state must be >= 1, got {ssm_state}.")
        if ssm_chunk < 1:
            raise MixerConfigError(f"model.ssm_chunk must be >= 1, got {ssm_chunk}.")
        if ssm_algorithm not in SSD_ALGORITHMS:
            raise MixerConfigError(f"model.ssm_algorithm must be one of {SSD_ALGORITHMS}, got {ssm_algorithm!r}.")
        if mode not in MODES:
            raise MixerConfigError(f"model.mode must be one of {MODES}, got {mode!r}.")
        if conv_kernel < 1:
            raise MixerConfigError(f"model.conv_kernel must be >= 1, got {conv_kernel}.")
        self.d_model, self.d_inner, self.head_dim = d_model, d_inner, head_dim
        self.num_heads, self.state_size = d_inner // head_dim, ssm_state
        self.chunk, self.algorithm, self.mode, self.dtype = ssm_chunk, ssm_algorithm, mode, dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        h, conv_features = self.num_heads, d_inner + 2 * ssm_state
        self.in_proj = linear(d_model, d_inner + conv_features + h, std=std, rngs=rngs, **kw)
        self.conv = CausalConv(conv_features, conv_kernel, rngs=rngs, **kw)
        k_dt, k_a = jax.random.split(rngs.params())
        dt = jnp.exp(jax.random.uniform(k_dt, (h,), jnp.float32, math.log(_DT_MIN), math.log(_DT_MAX)))
        self.dt_bias = nnx.Param((dt + jnp.log(-jnp.expm1(-dt))).astype(param_dtype))  # softplus⁻¹(dt)
        self.A_log = nnx.Param(jnp.log(jax.random.uniform(k_a, (h,), jnp.float32, _A_MIN, _A_MAX)).astype(param_dtype))
        self.D = nnx.Param(jnp.ones((h,), param_dtype))
        self.norm = nnx.RMSNorm(d_inner, rngs=rngs, **kw)
        self.out_proj = linear(d_inner, d_model, std=std, rngs=rngs, **kw)

    def init_cache(self, batch_size: int, capacity: int, dtype: Any = None) -> None:
        """No cache to preallocate: None means zero conv history and zero state."""
        return None

    def __call__(self, x_BxTxD: jax.Array, cache=None, mode: str | None = None):
        """``cache``: ``(conv_history, ssm_state_BxHxPxN)`` or None. Returns ``(y, new_cache)``."""
        mode = self.mode if mode is None else mode
        if mode not in MODES:
            raise ValueError(f"Mamba2Mixer: mode must be one of {MODES}, got {mode!r}.")
        conv_hist, state = (None, None) if cache is None else cache
        batch, t, _ = x_BxTxD.shape
        n, h, p = self.state_size, self.num_heads, self.head_dim
        z, xbc, dt_raw = jnp.split(self.in_proj(x_BxTxD), [self.d_inner, 2 * self.d_inner + 2 * n], axis=-1)
        xbc, conv_hist = self.conv(xbc, conv_hist)
        xbc = jax.nn.silu(xbc)
        x, b, c = jnp.split(xbc, [self.d_inner, self.d_inner + n], axis=-1)
        x = x.reshape(batch, t, h, p)
        ssm_dtype = jnp.promote_types(dt_raw.dtype, jnp.float32)  # step sizes and decays: float32 or wider
        dt = jax.nn.softplus(dt_raw.astype(ssm_dtype) + self.dt_bias[...].astype(ssm_dtype))
        a = -jnp.exp(self.A_log[...].astype(ssm_dtype))
        if mode == "sequential":
            y, state = ssd_sequential(x, dt, a, b, c, state)
        elif self.algorithm == "scan":
            y, state = ssd_scan(x, dt, a, b, c, state)
        else:  # "chunked"; "auto" resolves to it
            y, state = ssd_chunked(x, dt, a, b, c, state, chunk=self.chunk)
        y = y + self.D[...].astype(y.dtype)[:, None] * x.astype(y.dtype)
        y = y.reshape(batch, t, self.d_inner).astype(z.dtype)
        return self.out_proj(self.norm(y * jax.nn.silu(z))), (conv_hist, state)
